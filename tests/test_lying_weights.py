"""Weights that cannot be what they claim are refused, and features that carry nothing are never
stored: integer tensors where a model has floats, and layers whose every row is the same or
overflowing (a finite but absurd scale) stop the extraction naming the layer."""

import numpy as np
import pytest
import torch

from bench import api
from bench.errors import BenchError
from bench.store_writer import degenerate
from tests.conftest import assert_user_error


def _resnet_state(tmp_path, change):
    import timm
    from safetensors.torch import save_file

    state = {k: change(k, v) for k, v in timm.create_model("resnet18", in_chans=1).state_dict().items()}
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_integer_weights_where_floats_are_expected_are_refused(bench, tmp_path):
    path = _resnet_state(tmp_path, lambda k, v: (v * 100).to(torch.int64) if v.is_floating_point() else v)
    r = bench("run", "-b", "resnet18", "--weights", path, "-t", "linear-probe", "-d", "digits", "--limit", "60",
              "--results", tmp_path / "res")
    assert_user_error(r, "stores", "int64", "floating-point weights")
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").glob("*.json"))


def test_a_transformers_folder_with_integer_weights_is_refused(tmp_path):
    pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    from tests.test_igpt import _save_reference

    _save_reference(tmp_path, 16, 4, 4, 24, 2, 3)
    weights = load_file(str(tmp_path / "model.safetensors"))
    save_file({k: v.to(torch.int32) if v.is_floating_point() else v for k, v in weights.items()},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(BenchError, match="as int32 .and 23 more. where 'igpt' has floating-point weights"):
        api.extract("igpt", "digits", "test", weights=tmp_path, limit=20)


def test_degenerate_layers_stop_the_extraction_naming_the_layer(bench, tmp_path):
    """All weights zero: every image gives the same features."""
    path = _resnet_state(tmp_path, lambda k, v: torch.zeros_like(v) if k.endswith("weight") else v)
    out = tmp_path / "a.h5"
    r = bench("extract", "-b", "resnet18", "--weights", path, "-d", "digits", "--split", "test", "--limit", "60",
              "--layers", "layer1", "--out", out)
    assert_user_error(r, "degenerate activations in layer layer1", "nothing was kept")
    assert not out.exists() and not list(tmp_path.glob("a.h5*"))


def test_the_degenerate_rule_against_simple_cases():
    ok = np.array([[0.0, 1.0], [1.0, 1.0]], np.float32)
    assert degenerate(ok.min(0), ok.max(0), 2) == ""
    zeros = np.zeros((3, 4), np.float32)
    assert "all zero" in degenerate(zeros.min(0), zeros.max(0), 3)
    same = np.ones((3, 4), np.float32)
    assert "constant" in degenerate(same.min(0), same.max(0), 3)
    assert degenerate(same.min(0), same.max(0), 1) == ""  # one row says nothing about variation
    big = np.array([[1e31, 0.0], [0.0, 1.0]], np.float32)
    assert "overflowing" in degenerate(big.min(0), big.max(0), 2)


@pytest.mark.parametrize("change, fragment", [
    ({"n_embd": 16384, "n_layer": 512, "n_head": 16}, "more than half of this machine's"),
    ({"n_head": 0}, "n_head = 0 must be a whole number"),
    ({"n_inner": "wide"}, "n_inner = 'wide' must be a whole number"),
    ({"n_positions": "16"}, "n_positions = '16' must be a whole number"),
    ({"layer_norm_epsilon": "tiny"}, "layer_norm_epsilon"),
], ids=["huge", "no-heads", "text-width", "text-positions", "text-eps"])
def test_a_lying_transformers_config_is_refused_before_any_allocation(tmp_path, change, fragment):
    pytest.importorskip("transformers")
    import json

    from tests.test_igpt import _save_reference

    _save_reference(tmp_path, 16, 4, 4, 24, 2, 3)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, **change)))
    with pytest.raises(BenchError, match=fragment):
        api.extract("igpt", "digits", "test", weights=tmp_path, limit=20)


def test_ragged_clusters_and_a_text_image_size_are_one_line(tmp_path, bench):
    pytest.importorskip("transformers")
    import json

    from tests.test_igpt import _save_reference

    _save_reference(tmp_path, 16, 4, 4, 24, 2, 3)
    proc = json.loads((tmp_path / "preprocessor_config.json").read_text())
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(dict(proc, size={"height": "a", "width": 4})))
    r = bench("extract", "-b", "igpt", "--weights", tmp_path, "-d", "digits", "--split", "test", "--limit", "20",
              "--out", tmp_path / "a.h5")
    assert r.code == 0, r  # a square of 16 positions is still 4x4
    clusters = proc["clusters"]
    clusters[3] = clusters[3][:2]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(dict(proc, clusters=clusters)))
    assert_user_error(bench("extract", "-b", "igpt", "--weights", tmp_path, "-d", "digits", "--split", "test",
                            "--limit", "20", "--out", tmp_path / "b.h5"), "rows differ in length")
