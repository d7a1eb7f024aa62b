"""Identity of weights is the harness's job: a backbone declares whether it loads --weights and
--pretrained (else they are refused, before any work), the --weights file's digest enters the
fingerprint when the backbone gives none, and a plugin may set ``self.module``."""

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backbones.base import Backbone, BackboneOptions, DataSpec, create_backbone, path_digest
from bench import api
from bench.errors import BenchError
from bench.registry import BACKBONES
from tests.conftest import assert_user_error

DIGITS = DataSpec(1, 8, 8)
KNN = ["-q", "run", "-t", "knn", "-d", "digits", "--limit", "300"]


class TinyNet(Backbone):
    """A seeded random linear map of the flattened image; its create() ignores options.weights."""

    layers = ["out"]

    def __init__(self, spec, seed):
        torch.manual_seed(seed)
        self.spec = spec
        self.module = torch.nn.Linear(spec.channels * spec.height * spec.width, 16)  # settable by a plugin

    @classmethod
    def create(cls, name, spec, options):
        return cls(spec, options.seed)

    def layer_widths(self):
        return {"out": 16}

    def preprocess(self, images):
        return torch.from_numpy(np.asarray(images, dtype=np.float32).reshape(len(images), -1) / 255.0)

    def features(self, x, layers):
        return {"out": self.module(x)}

    def config(self):
        return {"backbone": "tiny-net", "version": 1, "input": [self.spec.height, self.spec.width, self.spec.channels]}


class TinyNetWithWeights(TinyNet):
    """The same net, declaring and loading --weights (a state-dict file); no weights_digest() of its own."""

    accepts_weights = True

    @classmethod
    def create(cls, name, spec, options):
        from backbones.weights import apply_state_dict, load_state_dict

        net = cls(spec, options.seed)
        if options.weights:
            apply_state_dict(net.module, load_state_dict(options.weights), name, options.weights)
        return net


@pytest.fixture
def plugins():
    BACKBONES.register("tiny-net-ignores-weights")(TinyNet)
    BACKBONES.register("tiny-net")(TinyNetWithWeights)


def _weights(path, value):
    """A tiny-net state dict of constant ``value``, saved as safetensors."""
    save_file({"weight": torch.full((16, 64), value), "bias": torch.zeros(16)}, str(path))
    return path


def _files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


# -- the built-ins: fingerprints (and so every existing result id) as they were ----------------------

BUILTINS = [("pixels", DataSpec(1, 8, 8), {}), ("pixels", DataSpec(3, 32, 32), {}),
            ("resnet18", DataSpec(1, 8, 8), {}), ("resnet18", DataSpec(3, 32, 32), {"seed": 1}),
            ("igpt-tiny", DataSpec(1, 8, 8), {}), ("igpt-tiny", DataSpec(3, 32, 32), {"seed": 1, "image_size": 16})]


def _own_rule(backbone) -> str:
    """The fingerprint rule before the harness digested --weights: config and the backbone's own digest."""
    blob = json.dumps({"config": backbone.config(), "weights": backbone.weights_digest()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@pytest.mark.parametrize("name, spec, options", BUILTINS, ids=[f"{n}-{s.channels}x{s.height}-{o}" for n, s, o in BUILTINS])
def test_builtin_fingerprints_follow_the_rule_they_always_did(name, spec, options):
    """So every existing result id stays valid (checked as a rule, not as hashes: a random init's
    bytes and timm's version in the config differ between the versions the project allows)."""
    backbone = create_backbone(name, spec, BackboneOptions(**options))
    assert backbone.fingerprint == _own_rule(backbone)


def test_a_builtin_keeps_its_own_weights_digest_for_a_weights_file(tmp_path):
    """resnet18 digests the loaded state dict itself: the file's bytes do not enter."""
    state = create_backbone("resnet18", DIGITS).module.state_dict()
    fixed = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in state.items()}
    save_file(fixed, str(tmp_path / "fixed.safetensors"))
    backbone = create_backbone("resnet18", DIGITS, BackboneOptions(weights=str(tmp_path / "fixed.safetensors")))
    assert backbone.fingerprint == _own_rule(backbone) and backbone.weights_digest() != ""
    assert backbone._weights_file_digest == ""


def test_what_the_builtins_declare():
    from backbones.igpt import IGPTBackbone
    from backbones.pixels import PixelsBackbone
    from backbones.timm_models import TimmBackbone

    assert (PixelsBackbone.accepts_weights, PixelsBackbone.accepts_pretrained) == (False, False)
    assert (TimmBackbone.accepts_weights, TimmBackbone.accepts_pretrained) == (True, True)
    assert (IGPTBackbone.accepts_weights, IGPTBackbone.accepts_pretrained) == (True, False)
    assert (Backbone.accepts_weights, Backbone.accepts_pretrained) == (False, False)  # a plugin that says nothing


@pytest.mark.parametrize("args, fragments", [
    (["backbones", "show", "pixels", "--pretrained"], ["'pixels'", "--pretrained", "drop --pretrained"]),
    (["backbones", "show", "igpt-tiny", "--pretrained"], ["'igpt-tiny'", "--pretrained", "pass --weights instead"]),
    (["run", "-b", "igpt-tiny", "-t", "knn", "-d", "digits", "--pretrained"], ["'igpt-tiny'", "accepts_pretrained"]),
])
def test_a_builtin_refuses_what_it_does_not_load(bench, tmp_path, args, fragments):
    assert_user_error(bench(*args), *fragments)
    assert _files(tmp_path) == []


# -- the digest of a weights path ---------------------------------------------------------------------

def test_path_digest_of_a_file_is_its_sha256(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"some weights")
    assert path_digest(tmp_path / "w.bin") == hashlib.sha256(b"some weights").hexdigest()


def test_path_digest_of_a_folder_follows_its_files_names_and_bytes_not_its_place(tmp_path):
    def folder(name, files):
        root = tmp_path / name
        for rel, data in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        return path_digest(root)

    files = {"config.json": b"{}", "sub/model.safetensors": b"abc"}
    reference = hashlib.sha256("".join(f"{rel}\0{hashlib.sha256(data).hexdigest()}\n"
                                       for rel, data in sorted(files.items())).encode()).hexdigest()
    assert folder("a", files) == folder("b", files) == reference
    assert folder("c", {**files, "sub/model.safetensors": b"abd"}) != reference
    assert folder("d", {"config.json": b"{}", "sub/other.safetensors": b"abc"}) != reference


@pytest.mark.parametrize("make, fragment", [(lambda p: p / "missing", "do not exist"),
                                            (lambda p: p.joinpath("empty").mkdir() or p / "empty", "empty folder")])
def test_path_digest_refuses_what_holds_no_weights(tmp_path, make, fragment):
    with pytest.raises(BenchError, match=fragment):
        path_digest(make(tmp_path))


# -- a plugin that ignores --weights: refused, one line, before any work ------------------------------

@pytest.mark.parametrize("args", [
    [*KNN, "-b", "tiny-net-ignores-weights"],
    [*KNN, "-b", "tiny-net", "-b", "tiny-net-ignores-weights"],  # a sweep refuses in planning: nothing runs
    ["extract", "-b", "tiny-net-ignores-weights", "-d", "digits", "--split", "test", "--out", "a.h5"],
    ["backbones", "show", "tiny-net-ignores-weights", "--dataset", "digits"],
], ids=["run", "sweep", "extract", "show"])
def test_a_plugin_that_does_not_declare_weights_is_refused_them(bench, tmp_path, plugins, args):
    weights = _weights(tmp_path / "finetuned.safetensors", 0.1)
    r = bench(*args, "--weights", weights)
    assert_user_error(r, "backbone 'tiny-net-ignores-weights' takes no --weights", "accepts_weights = True")
    assert _files(tmp_path) == [weights]


def test_a_plugin_that_does_not_declare_pretrained_is_refused_it(bench, tmp_path, plugins):
    assert_user_error(bench(*KNN, "-b", "tiny-net-ignores-weights", "--pretrained"),
                      "backbone 'tiny-net-ignores-weights' takes no --pretrained", "drop --pretrained")
    assert_user_error(bench(*KNN, "-b", "tiny-net", "--pretrained"),
                      "backbone 'tiny-net' takes no --pretrained", "pass --weights instead")
    assert _files(tmp_path) == []


def test_the_api_refuses_weights_a_plugin_does_not_declare(tmp_path, plugins):
    weights = _weights(tmp_path / "w.safetensors", 0.1)
    with pytest.raises(BenchError, match="'tiny-net-ignores-weights' takes no --weights"):
        api.run("tiny-net-ignores-weights", "knn", "digits", weights=weights, limit=300, results=tmp_path / "res")
    with pytest.raises(BenchError, match="'tiny-net-ignores-weights' takes no --weights"):
        api.extract("tiny-net-ignores-weights", "digits", "test", weights=weights, out=tmp_path / "a.h5")
    assert _files(tmp_path) == [weights]


# -- a plugin that loads --weights: the harness's digest makes one identity per weights ------------------

def test_two_weights_files_give_a_plugin_two_identities(bench, tmp_path, plugins):
    a, b = _weights(tmp_path / "a.safetensors", 0.1), _weights(tmp_path / "b.safetensors", -0.2)
    r = bench(*KNN, "-b", "tiny-net", "--results", tmp_path / "res")
    assert r.code == 0, r
    r = bench(*KNN, "-b", "tiny-net", "--weights", a, "--weights", b, "--results", tmp_path / "res")
    assert r.code == 0, r
    runs = {p.name.split("__")[0]: json.loads(p.read_text())["run"] for p in (tmp_path / "res").glob("*.json")}
    assert set(runs) == {"tiny-net", "tiny-net@a", "tiny-net@b"}
    assert len({run["fingerprint"] for run in runs.values()}) == 3
    assert len({run["identity"]["fingerprint"] for run in runs.values()}) == 3
    # The same bytes under another name are the same weights: the same identity, reused from the cache.
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(a.read_bytes())
    again = create_backbone("tiny-net", DIGITS, BackboneOptions(weights=str(copy)))
    assert again.fingerprint == runs["tiny-net@a"]["fingerprint"]


def test_two_weights_files_give_a_plugin_two_identities_through_the_api(tmp_path, plugins):
    a, b = _weights(tmp_path / "a.safetensors", 0.1), _weights(tmp_path / "b.safetensors", -0.2)
    df = api.run("tiny-net", "knn", "digits", weights=[a, b], limit=300, results=tmp_path / "res")
    per_weights = df.groupby("weights").fingerprint.unique()
    assert sorted(w.rsplit("/", 1)[-1] for w in per_weights.index) == ["a.safetensors", "b.safetensors"]
    assert [len(f) for f in per_weights] == [1, 1]
    assert df.fingerprint.nunique() == 2 and len(list((tmp_path / "res").glob("*.json"))) == 2


# -- a plugin that sets self.module ------------------------------------------------------------------

def test_a_plugin_that_sets_module_fine_tunes_and_its_weights_are_a_new_identity(bench, tmp_path, plugins):
    """The reported case: fine-tune a plugin, probe the fine-tuned weights; they are not its random init."""
    r = bench("-q", "run", "-b", "tiny-net", "-t", "finetune", "-d", "digits", "--limit", "300", "-o", "epochs=1",
              "--results", tmp_path / "res")
    assert r.code == 0, r
    (finetuned,) = (tmp_path / "res").glob("tiny-net__*/finetuned.safetensors")
    backbone = create_backbone("tiny-net", DIGITS)
    assert backbone.module is not None and sum(p.numel() for p in backbone.module.parameters()) == 64 * 16 + 16
    tuned = create_backbone("tiny-net", DIGITS, BackboneOptions(weights=str(finetuned)))
    assert tuned.fingerprint != backbone.fingerprint
    assert not torch.equal(tuned.module.weight, backbone.module.weight)
    r = bench("backbones", "show", "tiny-net", "--dataset", "digits")
    assert r.code == 0 and "parameters: 1,040;" in r.out, r  # counted from the module the plugin set
