"""Fair baselines: a random-init ResNet is built with every residual branch on (timm's
zero_init_last=False), so its deep stages carry what a random network carries, and its fingerprint
says so (such results never mix with those of the switched-off init)."""

import hashlib
import json

from backbones.base import BackboneOptions, DataSpec, create_backbone
from bench import api


def test_random_init_resnet_has_its_branches_on_and_a_new_fingerprint():
    backbone = create_backbone("resnet18", DataSpec(1, 8, 8), BackboneOptions())
    assert backbone.branches_on and backbone.config()["init"] == "zero_init_last=False"
    last_norms = [m.bn2.weight for m in backbone.module.modules() if type(m).__name__ == "BasicBlock"]
    assert last_norms and all(float(w.detach().abs().sum()) > 0 for w in last_norms)  # timm's default starts them at 0
    old = {k: v for k, v in backbone.config().items() if k != "init"}  # the config the old init gave
    blob = json.dumps({"config": old, "weights": backbone.weights_digest()}, sort_keys=True)
    assert backbone.fingerprint != hashlib.sha256(blob.encode()).hexdigest()
    other = create_backbone("convnext_atto", DataSpec(1, 8, 8), BackboneOptions())
    assert not other.branches_on and "init" not in other.config()  # no such argument: built as timm builds it


def test_random_init_resnet18_layer4_probes_far_above_the_collapsed_baseline(tmp_path):
    """With timm's zero_init_last the pooled layer4 of a random ResNet-18 probed to 17.6-26% on
    digits; with every branch on it carries the digits."""
    df = api.run("resnet18", "linear-probe", "digits", layers="layer4", results=tmp_path / "res",
                 options={"l2_grid": "1e-4,1e-2,1"})
    test = df[(df.split == "test") & (df.metric == "top1")].value.iloc[0]
    assert test > 80, test


def test_pixels_at_the_models_view(tiny_run, bench, tmp_path):
    """pixels-view: the image resized to the iGPT's resolution and quantized to its palette, so that
    'beats pixels' compares like with like; every checkpoint of one run shares the view."""
    import numpy as np

    from bench.datasets import load_split
    from tests.conftest import assert_user_error

    data = load_split("digits", "test", limit=50)
    first, last = sorted((tiny_run / "checkpoints").glob("step-*"))[::2]
    view = create_backbone("pixels-view", DataSpec.of(data.images), BackboneOptions(weights=str(first)))
    model = create_backbone("igpt", DataSpec.of(data.images), BackboneOptions(weights=str(first)))
    x = view.features(view.preprocess(data.images[:5]), ["pixels"])["pixels"].numpy()
    np.testing.assert_allclose(x, model.model_view(data.images[:5]).reshape(5, -1) / 255.0)
    assert view.layer_widths() == {"pixels": model.height * model.width * model.palette.channels}
    again = create_backbone("pixels-view", DataSpec.of(data.images), BackboneOptions(weights=str(last)))
    assert again.fingerprint == view.fingerprint
    r = bench("-q", "run", "-b", "pixels-view", "--weights", first, "-t", "linear-probe", "-d", "digits", "--limit",
              "100", "-o", "l2_grid=1e-2", "--results", tmp_path / "res")
    assert r.code == 0 and "pixels-view" in r.out, r
    assert_user_error(bench("run", "-b", "pixels-view", "-t", "linear-probe", "-d", "digits"), "needs --weights")
