"""Bad input a user can give: one line on stderr, exit code 2, no traceback, nothing half-written."""

import pytest
import torch

from tests.conftest import assert_user_error, write_code_carrying_pickle

RUN = ("run", "-t", "linear-probe", "-d", "digits")


def _nothing_written(tmp_path):
    return not any(tmp_path.rglob("*.json")) and not any(tmp_path.rglob("*.h5*"))


@pytest.mark.parametrize("args, fragments", [
    (("run", "-b", "resnet81", "-t", "linear-probe", "-d", "digits"), ["unknown backbone", "did you mean", "resnet18"]),
    (("run", "-b", "pixel", "-t", "linear-probe", "-d", "digits"), ["did you mean", "'pixels'"]),
    (("run", "-b", "pixels", "-t", "linear-prob", "-d", "digits"), ["unknown task", "did you mean", "linear-probe"]),
    (("run", "-b", "pixels", "-t", "linear-probe", "-d", "fashion-mnst"), ["unknown dataset", "fashion-mnist"]),
    (("run", "-b", "resnet18", "-t", "linear-probe", "-d", "digits", "--layers", "layer9"),
     ["unknown layer 'layer9'", "act1, layer1, layer2, layer3, layer4"]),
    (("run", "-b", "pixels", "-t", "linear-probe", "-d", "digits", "--limit", "0"), ["--limit", "0"]),
    (("run", "-b", "pixels", "-t", "linear-probe", "-d", "digits", "--limit", "-5"), ["--limit"]),
    (("run", "-b", "pixels", "-t", "linear-probe", "-d", "digits", "--limit", "ten"), ["--limit", "ten"]),
    (("run", "-b", "pixels", "-t", "linear-probe", "-d", "digits", "-o", "l2_grid=-1"), ["l2_grid"]),
    (("run", "-b", "pixels", "-t", "linear-probe", "-d", "digits", "-o", "max_itr=3"), ["did you mean", "max_iter"]),
    (("run", "-b", "timm", "-t", "linear-probe", "-d", "digits"), ["family", "resnet18"]),
    (("extract", "-b", "pixels", "-d", "digits", "--split", "test", "--image-size", "32"), ["pixels"]),
])
def test_bad_names_and_values(bench, tmp_path, args, fragments):
    r = bench(*args)
    assert_user_error(r, *fragments)
    assert _nothing_written(tmp_path)


def test_unwritable_output_paths(bench, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    r = bench("extract", "-b", "pixels", "-d", "digits", "--split", "test", "--out", blocker / "sub" / "x.h5")
    assert_user_error(r, "cannot write", "--out")
    r = bench(*RUN, "-b", "pixels", "--results", blocker / "res")
    assert_user_error(r, "cannot write")
    r = bench("extract", "-b", "pixels", "-d", "digits", "--split", "test", "--out", "/proc/acts.h5")
    assert_user_error(r, "cannot write")
    assert not any(tmp_path.rglob("*.h5*")) and not any(tmp_path.rglob("*.json"))


def _weights(tmp_path, name, payload):
    p = tmp_path / name
    if isinstance(payload, bytes):
        p.write_bytes(payload)
    else:
        torch.save(payload, p)
    return p


def test_corrupt_weights_files(bench, tmp_path):
    for name in ("bad.pth", "bad.safetensors"):
        w = _weights(tmp_path, name, b"\x00\x01 this is not a weights file" * 10)
        r = bench(*RUN, "-b", "resnet18", "--weights", w, "--results", tmp_path / "res")
        assert_user_error(r, str(w))
    r = bench(*RUN, "-b", "resnet18", "--weights", tmp_path / "missing.pth")
    assert_user_error(r, "do not exist")
    assert _nothing_written(tmp_path)


def test_weights_of_the_wrong_architecture(bench, tmp_path):
    import timm

    other = timm.create_model("resnet34", in_chans=1).state_dict()
    w = _weights(tmp_path, "resnet34.pth", other)
    r = bench(*RUN, "-b", "resnet18", "--weights", w, "--results", tmp_path / "res")
    assert_user_error(r, "does not fit backbone 'resnet18'")
    rgb = timm.create_model("resnet18", in_chans=3).state_dict()
    w = _weights(tmp_path, "rgb.pth", rgb)
    r = bench(*RUN, "-b", "resnet18", "--weights", w, "--results", tmp_path / "res")
    assert_user_error(r, "wrong shape", "conv1.weight")
    assert _nothing_written(tmp_path)


def test_pickled_weights_carrying_code_are_refused_unrun(bench, tmp_path):
    marker = tmp_path / "pwned"
    w = tmp_path / "evil.pth"
    write_code_carrying_pickle(w, "conv1.weight", marker)
    r = bench(*RUN, "-b", "resnet18", "--weights", w, "--results", tmp_path / "res")
    assert_user_error(r, "refused", "not run")
    assert not marker.exists()
    assert _nothing_written(tmp_path)


def test_good_weights_file_round_trips(bench, tmp_path):
    """A state dict saved from the same architecture loads and changes the fingerprint."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    sd = timm.create_model("resnet18", in_chans=1).state_dict()
    w = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, w)
    a = bench("-q", "extract", "-b", "resnet18", "-d", "digits", "--split", "test", "--limit", "10",
              "--layers", "layer1", "--weights", w, "--image-size", "32", "--out", tmp_path / "a.h5")
    b = bench("-q", "extract", "-b", "resnet18", "-d", "digits", "--split", "test", "--limit", "10",
              "--layers", "layer1", "--out", tmp_path / "b.h5")
    assert a.code == b.code == 0, (a, b)
    from bench.store import open_activations

    assert open_activations(tmp_path / "a.h5").identity["fingerprint"] != open_activations(tmp_path / "b.h5").identity["fingerprint"]


def test_pretrained_weights_absent_offline_say_what_to_do(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    r = bench(*RUN, "-b", "resnet18", "--pretrained", "--results", tmp_path / "res")
    assert_user_error(r, "pretrained weights", "--weights FILE")


def test_debug_shows_the_traceback(bench):
    with pytest.raises(Exception, match="unknown backbone"):
        bench("--debug", *RUN, "-b", "nope")
