"""Concatenated layers: groups in --layers and the paper's best-5 window (-o concat=best5)."""

import json

import numpy as np
import pytest

from bench import api
from bench.errors import BenchError
from bench.layers import members, parse
from tasks.linear_probe import window_around
from tests.conftest import assert_user_error

LAYERS = ["h0", "h1", "h2", "h3", "h4", "final"]
PROBE = {"l2_grid": "1e-3,1e-1"}


def test_a_selection_keeps_singles_in_depth_order_then_groups_each_in_depth_order():
    assert parse("h3,h1+h0,h1,h4+h2+h3", LAYERS, "x") == ["h1", "h3", "h0+h1", "h2+h3+h4"]
    assert members(["h1", "h0+h4"], LAYERS) == ["h0", "h1", "h4"]
    assert parse("all", LAYERS, "x") == LAYERS


def test_the_window_is_centred_on_the_best_layer_and_stays_inside():
    assert window_around(LAYERS, "h2", 5) == ["h0", "h1", "h2", "h3", "h4"]
    assert window_around(LAYERS, "h0", 5) == ["h0", "h1", "h2", "h3", "h4"]
    assert window_around(LAYERS, "final", 3) == ["h3", "h4", "final"]
    assert window_around(["h1", "h2"], "h2", 5) == ["h1", "h2"]


def test_a_group_is_probed_on_its_members_features_side_by_side(tmp_path):
    df = api.run("resnet18", "linear-probe", "digits", layers="layer1+layer2,layer1", limit=200, results=tmp_path,
                 options=PROBE)
    assert list(dict.fromkeys(df.layer)) == ["layer1", "layer1+layer2"]
    (path,) = tmp_path.glob("*.json")
    run = json.loads(path.read_text())["run"]
    acts = api.extract("resnet18", "digits", "train", layers="layer1,layer2", limit=200)
    group = acts.read("layer1+layer2")
    np.testing.assert_array_equal(group, np.concatenate([acts.read("layer1"), acts.read("layer2")], axis=1))
    assert group.shape[1] == 64 + 128
    # Extraction computed the members (each once), not the group.
    assert run["identity"]["layers"] == ["layer1", "layer1+layer2"]


def test_concat_best_n_adds_a_row_for_the_window_around_the_best_layer(tmp_path):
    df = api.run("igpt-tiny", "linear-probe", "digits", limit=200, results=tmp_path,
                 options={**PROBE, "concat": "best3"})
    val = df[(df.split == "val") & (df.metric == "top1")]
    singles = val[~val.layer.str.contains("+", regex=False)]
    best = singles.loc[singles.value.astype(float).idxmax(), "layer"]
    (group,) = [layer for layer in val.layer if "+" in layer]
    assert group == "+".join(window_around(LAYERS, best, 3))
    assert val.layer.iloc[-1] == group  # last in the table, after the single layers
    assert (df[df.layer == group].concat == "best3").all()


@pytest.mark.parametrize("layers, fragments", [
    ("h1+", ["empty member"]),
    ("h1++h2", ["empty member"]),
    ("h1+h9", ["unknown layer 'h9'", "'+'"]),
    ("h2+h2", ["twice"]),
    (",", ["names no layer"]),
])
def test_bad_layer_groups_are_one_line_errors_before_any_work(bench, tmp_path, layers, fragments):
    r = bench("run", "-b", "igpt-tiny", "-t", "linear-probe", "-d", "digits", "--layers", layers,
              "--results", tmp_path / "res")
    assert_user_error(r, *fragments)
    assert not (tmp_path / "res").exists() and not (tmp_path / "cache").exists()


def test_bad_concat_values(bench, tmp_path):
    for value in ("best1", "best", "top5"):
        r = bench("run", "-b", "pixels", "-t", "linear-probe", "-d", "digits", "-o", f"concat={value}",
                  "--results", tmp_path)
        assert_user_error(r, "concat", "bestN")
    with pytest.raises(BenchError, match="needs single layers"):
        api.run("igpt-tiny", "linear-probe", "digits", layers="h1+h2", limit=100, results=tmp_path,
                options={**PROBE, "concat": "best2"})
