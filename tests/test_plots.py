"""The probe-depth plot shows what a reader compares: single-layer baselines as reference lines,
error bars from the records' standard errors (or the spread over seeds), layer names when one run
is plotted. Checked on the figure objects, from real runs on digits and from constructed records."""

import pytest

from bench import api
from bench.plots import probe_depth
from bench.runs import frame

PROBE = {"l2_grid": "1e-3,1e-1"}


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    """Linear probes on digits: igpt-tiny (every layer) and pixels (one layer)."""
    res = tmp_path_factory.mktemp("res")
    cache = tmp_path_factory.mktemp("cache")
    for backbone in ("igpt-tiny", "pixels"):
        api.run(backbone, "linear-probe", "digits", limit=200, results=res, options=PROBE, cache=cache)
    return res


def _bars(ax):
    """{x: half-length} of the error bars of the axes' one errorbar line."""
    (container,) = ax.containers
    return {float(seg[0][0]): (seg[1][1] - seg[0][1]) / 2 for seg in container.lines[2][0].get_segments()}


def test_one_run_by_layer_name_with_standard_errors_and_pixels_as_a_reference_line(bench, probes, tmp_path):
    df = api.report(probes)
    fig = probe_depth(df)
    (ax,) = fig.axes
    test = df[(df.split == "test") & (df.metric == "top1")]
    igpt = test[test.backbone == "igpt-tiny"].sort_values("layer_index")
    assert [t.get_text() for t in ax.get_xticklabels()] == list(igpt.layer)  # h0 … final
    assert ax.get_xlabel() == "layer"
    bars = _bars(ax)
    assert [bars[i] for i in range(len(igpt))] == pytest.approx(igpt.stderr.astype(float).tolist())
    pixels = float(test[test.backbone == "pixels"].value.iloc[0])
    flat = [line for line in ax.get_lines() if len(set(line.get_ydata())) == 1 and len(line.get_ydata()) == 2]
    assert [float(line.get_ydata()[0]) for line in flat] == [pytest.approx(pixels)]
    assert any(t.get_text().startswith("pixels · digits: ") for t in ax.get_legend().get_texts())

    r = bench("report", probes, "--plot", tmp_path / "plots")
    assert r.code == 0 and (tmp_path / "plots" / "probe-depth.png").stat().st_size > 10_000, r


def _records(file, backbone, layers, top1, **extra):
    return [{"file": file, "run": file, "backbone": backbone, "dataset": "digits", "task": "linear-probe", "layer": layer,
             "layer_index": i, "split": split, "metric": "top1", "value": top1 + i, "stderr": 0.5, **extra}
            for i, layer in enumerate(layers) for split in ("val", "test")]


def test_several_runs_by_relative_depth_and_means_over_seeds_with_their_spread():
    records = (_records("a.json", "resnet18", ["layer1", "layer2", "layer3"], 80.0, std=2.0, seeds=3)
               + _records("b.json", "igpt", ["h0", "h1", "h2", "h3", "h4"], 70.0)
               + _records("c.json", "pixels", ["pixels"], 75.0, std=1.5, seeds=3))
    fig = probe_depth(frame(records))
    (ax,) = fig.axes
    assert ax.get_xlabel().startswith("relative depth")
    assert sorted(float(c.lines[0].get_xdata()[-1]) for c in ax.containers) == [1.0, 1.0]  # both end at depth 1
    halves = sorted({round((s[1][1] - s[0][1]) / 2, 6) for c in ax.containers for s in c.lines[2][0].get_segments()})
    assert halves == [0.5, 2.0]  # igpt's standard error; resnet18's spread over seeds
    band = [p for p in ax.patches if p.get_alpha() == pytest.approx(0.12)]
    assert len(band) == 1 and band[0].get_height() == pytest.approx(3.0)  # pixels ± its spread over seeds


def test_runs_that_differ_only_in_their_seed_are_one_line_of_their_mean_with_the_std_as_bars():
    layers = ["h0", "h1", "h2"]
    records = [dict(r, seed=seed, value=r["value"] + 2 * seed) for seed in (0, 1, 2)
               for r in _records(f"s{seed}.json", "igpt", layers, 70.0)]
    fig = probe_depth(frame(records))
    (ax,) = fig.axes
    (container,) = ax.containers
    assert list(container.lines[0].get_ydata()) == pytest.approx([72.0, 73.0, 74.0])  # the mean over seeds 0-2
    assert list(_bars(ax).values()) == pytest.approx([2.0] * 3)  # their std, not a run's standard error
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["igpt · seeds 0–2 (n=3) · digits"]


def test_nothing_to_draw_without_a_run_of_several_layers():
    assert probe_depth(frame(_records("c.json", "pixels", ["pixels"], 75.0))) is None


def test_a_legend_of_many_runs_sits_beside_the_curves_not_over_them():
    records = [r for k in range(12) for r in _records(f"r{k}.json", "igpt", ["h0", "h1", "h2"], 70.0 + k,
                                                      weights=f"w{k}")]
    fig = probe_depth(frame(records))
    (ax,) = fig.axes
    fig.canvas.draw()
    legend, plot = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert len(ax.get_legend().get_texts()) == 12 and legend.x0 >= plot.x1  # wholly right of the axes
