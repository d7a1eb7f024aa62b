"""The correlation study: its statistics against scipy and direct computations (pooled, partial
given step, matched steps), constructed studies that read the right way (direction, agreement with
the paper, cautions, step confounded with quality), one command with default options end to end on
a tiny run's checkpoints (tables, the four plots, nothing recomputed the second time, the same from
Python), and the mixes and sizes it must refuse."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench import api
from bench.render import render
from bench.report import study_tables
from bench.runs import frame
from tasks.correlation import Correlation, correlate, matched_correlate, partial_correlate
from tests.conftest import assert_user_error

STUDY = ("-t", "correlation", "-d", "digits", "--limit", "200")  # the study's own options at their defaults


def _checkpoint(size, step, bpd, top1, *, val_n=5000, shape=(-5.0, 0.0, -3.0), precision=None):
    """A checkpoint as ``combine`` gets it: a probe of three layers (h1 best by val unless ``shape``
    says otherwise) and its bits/dim (and precision, when given)."""
    records = [{"task": "linear-probe", "metric": "top1", "layer": f"h{i}", "layer_index": i, "split": split,
                "value": top1 + d, "n": val_n if split == "val" else 5000}
               for i, d in enumerate(shape) for split in ("val", "test")]
    records.append({"task": "sample-quality", "metric": "bits_per_dim", "layer": "model", "split": "val", "value": bpd})
    if precision is not None:
        records.append({"task": "sample-quality", "metric": "precision", "layer": "model", "split": "val",
                        "value": precision})
    return {"label": f"{size}@step{step}", "size": size, "backbone": "igpt", "weights": None, "step": step,
            "records": records}


def _combine(points, bootstrap=2000):
    task = Correlation()
    records = task.combine(points, task.parse_options({"bootstrap": bootstrap}), seed=0)
    return [dict(r, file="study.json", run="study0000000", task="correlation", dataset="digits", layer_index=i)
            for i, r in enumerate(records)]


def _stat(records, scope="all checkpoints", metric="spearman", quality="bits_per_dim"):
    (hit,) = [r for r in records if r["kind"] == "stat" and r["scope"] == scope and r["metric"] == metric
              and r["quality"] == quality]
    return hit


def _confounded_study(rng, offset=0.0, quality_drives_accuracy=False):
    """Three sizes saved at eight steps. Step lowers bits/dim and raises accuracy; sizes differ in
    bits/dim by ``offset`` at equal steps; accuracy follows step, or bits/dim when asked."""
    points = []
    for s, size in enumerate(("igpt 4x64", "igpt 8x128", "igpt 4x256")):
        for step in range(500, 4500, 500):
            bpd = 2.0 - 0.1 * np.log(step) - offset * s + 0.002 * rng.normal()
            top1 = (90 - 100 * (bpd - 1.1) if quality_drives_accuracy else 50 + 5 * np.log(step)) + 0.7 * rng.normal()
            points.append(_checkpoint(size, step, bpd, top1))
    return points


def test_point_estimates_are_scipys_and_the_bootstrap_interval_matches_scipys_percentile_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = -0.7 * x + 0.5 * rng.normal(size=40)
    for method, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
        got = correlate(x, y, method, 4000, seed=0)
        assert got["value"] == pytest.approx(float(fn(x, y)[0]), abs=1e-12)
        ref = stats.bootstrap((x, y), lambda a, b, fn=fn: fn(a, b)[0], paired=True, vectorized=False, n_resamples=4000,
                              method="percentile", random_state=1).confidence_interval
        assert got["lo"] == pytest.approx(ref.low, abs=0.04) and got["hi"] == pytest.approx(ref.high, abs=0.04)
        assert got["lo"] < got["value"] < got["hi"] < 0 and got["n"] == 40 and got["resamples"] == 4000


def test_few_points_drop_degenerate_resamples_and_constant_data_has_no_coefficient():
    got = correlate([1.0, 2.0, 3.0, 4.0], [10.0, 8.0, 7.0, 1.0], "spearman", 1000, seed=0)
    assert got["value"] == -1.0 and got["hi"] == -1.0
    assert 0 < got["resamples"] < 1000  # resamples of one repeated point were dropped, and counted
    flat = correlate([1.0, 2.0, 3.0], [5.0, 5.0, 5.0], "pearson", 100, seed=0)
    assert flat["value"] is None and flat["lo"] is None and flat["n"] == 3


def test_partial_spearman_is_the_correlation_of_rank_residuals_and_the_textbook_formula():
    rng = np.random.default_rng(3)
    z = np.repeat(np.arange(10.0), 3)  # steps shared by three checkpoints: tied ranks
    x = -z + 2 * rng.normal(size=30)
    y = z + rng.normal(size=30) - x
    got = partial_correlate(x, y, z, 3000, seed=0)
    rx, ry, rz = (stats.rankdata(a) for a in (x, y, z))
    design = np.column_stack([np.ones(30), rz])
    res_x = rx - design @ np.linalg.lstsq(design, rx, rcond=None)[0]
    res_y = ry - design @ np.linalg.lstsq(design, ry, rcond=None)[0]
    assert got["value"] == pytest.approx(stats.pearsonr(res_x, res_y)[0], abs=1e-12)
    rxy, rxz, ryz = (stats.spearmanr(a, b)[0] for a, b in ((x, y), (x, z), (y, z)))
    assert got["value"] == pytest.approx((rxy - rxz * ryz) / np.sqrt((1 - rxz**2) * (1 - ryz**2)), abs=1e-12)
    assert got["lo"] < got["value"] < got["hi"] < 0 and got["n"] == 30 and got["resamples"] > 2900
    assert partial_correlate(x[:3], y[:3], z[:3], 100, seed=0)["value"] is None  # 3 points: no residual left


def test_matched_step_correlation_is_pearson_of_deviations_from_each_steps_mean():
    rng = np.random.default_rng(4)
    steps = np.array([100, 100, 100, 200, 200, 300, 300, 300, 400], float)  # step 400: one checkpoint, unmatched
    x, y = rng.normal(size=9), rng.normal(size=9)
    got = matched_correlate(x, y, steps, 2000, seed=0)
    df = pd.DataFrame({"x": x, "y": y, "step": steps})
    df = df[df.groupby("step").step.transform("size") > 1]
    dev = df[["x", "y"]] - df.groupby("step")[["x", "y"]].transform("mean")
    assert got["value"] == pytest.approx(stats.pearsonr(dev.x, dev.y)[0], abs=1e-12)
    assert got["n"] == 8 and got["groups"] == 3 and got["lo"] <= got["hi"]
    one = matched_correlate(x[:3], y[:3], steps[:3], 100, seed=0)  # one step: a value, no interval
    assert one["value"] is not None and one["lo"] is None


def test_when_training_step_drives_both_the_pooled_correlation_is_strong_and_the_partial_near_zero():
    records = _combine(_confounded_study(np.random.default_rng(0)))
    pooled = _stat(records)
    assert pooled["value"] < -0.8 and pooled["hi"] < 0 and pooled["agrees"] is True and pooled["n"] == 24
    partial = _stat(records, "partial given step")
    assert abs(partial["value"]) < 0.3 and partial["lo"] < 0 < partial["hi"], partial
    assert "interval spans 0" in partial["caution"]
    matched = _stat(records, "matched steps", "pearson")
    assert matched["groups"] == 8 and matched["lo"] < 0 < matched["hi"], matched
    (sep,) = [r for r in records if r["kind"] == "separation" and r["quality"] == "bits_per_dim"]
    assert sep["separable"] is False and sep["value"] < -0.9 and sep["gap_share"] < 0.1 and sep["shared_steps"] == 8
    assert "step and quality confounded" in pooled["caution"] and "confounded" not in partial["caution"]
    per_size = [r for r in records if r["kind"] == "stat" and r["scope"] == "within size"]
    assert {r["size"] for r in per_size} == {"igpt 4x64", "igpt 8x128", "igpt 4x256"}
    assert all(r["n"] == 8 and "step and quality confounded" in r["caution"] for r in per_size)
    table = {title.split(": ")[1]: t for title, t in study_tables(frame(records))}
    (verdict,) = [t for title, t in table.items() if title.startswith("can the checkpoints separate")]
    assert verdict.separable.tolist() == ["no"]
    (warning,) = Correlation().warnings(records)
    assert "cannot separate training step from bits_per_dim" in warning

    # Quality that drives accuracy beyond the step, sizes apart at equal steps: the partial keeps it.
    records = _combine(_confounded_study(np.random.default_rng(0), offset=0.05, quality_drives_accuracy=True))
    partial = _stat(records, "partial given step")
    assert partial["value"] < -0.5 and partial["hi"] < 0 and partial["agrees"] is True, partial
    assert _stat(records, "matched steps", "pearson")["hi"] < 0
    assert [r["separable"] for r in records if r["kind"] == "separation"] == [True]
    assert _stat(records)["caution"] is None and Correlation().warnings(records) == []


def test_lower_bits_per_dim_with_higher_accuracy_reads_as_agreeing_with_the_paper_and_few_points_are_flagged():
    saves = ((100, 1.4, 70.0, 0.5), (200, 1.3, 74.0, 0.6), (300, 1.25, 73.0, 0.62), (400, 1.2, 79.0, 0.7))
    records = _combine([_checkpoint("igpt 4x64", step, bpd, top1, precision=p) for step, bpd, top1, p in saves])
    assert _stat(records)["agrees"] is True and _stat(records)["better"] == "lower"
    assert _stat(records, quality="precision")["agrees"] is True and _stat(records, quality="precision")["better"] \
        == "higher"
    tables = study_tables(frame(records))
    (checkpoints, title), (statistics, stats_title) = [(t, title) for title, t in tables[:2]]
    assert "bits/dim ↓" in checkpoints.columns and "precision ↑" in checkpoints.columns
    assert "↓ lower is better" in title and "the paper: better quality, higher accuracy" in stats_title
    row = statistics[(statistics.quality == "bits/dim") & (statistics.statistic == "Spearman ρ, all checkpoints")]
    assert row.better.item() == "lower" and row["agrees with paper"].item() == "yes" and row.n.item() == 4
    assert "n < 6" in row.caution.item() and row["value"].item() == pytest.approx(-0.8)
    assert "| bits/dim | lower | Spearman ρ, all checkpoints | -0.80 |" in render(statistics, "md")
    flipped = _combine([_checkpoint("igpt 4x64", step, 3 - bpd, top1) for step, bpd, top1, _ in saves])
    assert _stat(flipped)["value"] == pytest.approx(0.8)  # higher bits/dim with higher accuracy: against the paper
    assert _stat(flipped)["agrees"] is False


def test_a_study_file_from_before_directions_and_cautions_reads_the_right_way_too():
    saves = ((100, 1.4, 70.0), (200, 1.3, 74.0), (300, 1.25, 73.0), (400, 1.2, 79.0))
    new = ("better", "agrees", "caution", "scope", "groups", "val_n", "val_stderr", "runner_up", "gap")
    old = [{k: v for k, v in r.items() if k not in new} for r in _combine([_checkpoint("s", *save) for save in saves])
           if r["kind"] != "separation" and r.get("scope") in (None, "all checkpoints")]
    (_, statistics), = [(t, s) for t, s in study_tables(frame(old)) if "against best-layer" in t]
    assert statistics.statistic.tolist() == ["Pearson r, all checkpoints", "Spearman ρ, all checkpoints"]
    assert statistics.better.tolist() == ["lower"] * 2 and statistics["agrees with paper"].tolist() == ["yes"] * 2
    assert all("n < 6" in note for note in statistics.caution)


def test_a_best_layer_chosen_on_a_small_val_split_or_by_a_hair_is_flagged_with_its_standard_error():
    small = _combine([_checkpoint("s", step, 1.0 + step, 80.0) for step in (1, 2, 3)])
    best = [r for r in small if r["kind"] == "best" and r["split"] == "val"]
    assert all(r["val_n"] == 5000 and r["caution"] is None for r in best)  # 5000 images, 3 points clear
    small = _combine([_checkpoint("s", step, 1.0 + step, 80.0, val_n=144, shape=(-5.0, 0.0, -8.0))
                      for step in (1, 2, 3)])
    best = [r for r in small if r["kind"] == "best" and r["split"] == "val"]
    se = 100 * np.sqrt(0.8 * 0.2 / 144)
    assert all(r["val_stderr"] == pytest.approx(se) and r["layer"] == "h1" for r in best)
    assert best[0]["caution"] == f"val split of 144 images (SE {se:.1f} points)"
    close = _combine([_checkpoint("s", step, 1.0 + step, 80.0, shape=(-0.5, 0.0, -3.0)) for step in (1, 2, 3)])
    best = [r for r in close if r["kind"] == "best" and r["split"] == "val"]
    assert best[0]["runner_up"] == "h0" and best[0]["gap"] == pytest.approx(0.5)
    assert best[0]["caution"] == "runner-up h0 within 1 SE (0.5 points)"  # SE of 80% of 5000 images: 0.57
    (checkpoints,) = [t for title, t in study_tables(frame(close)) if "checkpoints (best layer" in title]
    assert checkpoints.caution.tolist() == [best[0]["caution"]] * 3 and "val SE" in checkpoints.columns


def test_the_study_plots_read_the_right_way():
    records = _combine(_confounded_study(np.random.default_rng(0)))
    from bench.study_plots import checkpoint_layers, correlation_scatter, training_step

    fig = correlation_scatter(frame(records))
    (ax,) = [a for a in fig.axes if a.get_title()]
    assert ax.xaxis_inverted() and "better →" in ax.get_xlabel()  # lower bits/dim is better: it runs rightwards
    assert "agrees with the paper" in ax.get_title() and "partial ρ given step" in ax.get_title()
    assert {t.get_text() for t in ax.texts} >= {"500", "4000"}  # points labelled by step
    assert len(ax.get_lines()) == 3  # a line per size
    fig = checkpoint_layers(frame(records))
    panels = [a for a in fig.axes if a.get_images()]
    assert sorted(a.get_ylabel() for a in panels) == ["igpt 4x256", "igpt 4x64", "igpt 8x128"]  # a panel per size
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["h0", "h1", "h2"]
    assert all(len(a.patches) == 8 for a in panels)  # the layer chosen on val boxed, once per checkpoint
    fig = training_step(frame(records))
    left, right = fig.axes
    assert "bits/dim" in left.get_ylabel() and "top-1" in right.get_ylabel()
    assert len(left.get_lines()) == 3 and len(right.get_lines()) == 3


def _nudge_weights(run):
    """Every checkpoint of ``run`` with other weights (its first tensor shifted), as another run's."""
    from safetensors.torch import load_file, save_file

    for weights in run.glob("checkpoints/*/model.safetensors"):
        state = load_file(weights)
        first = sorted(state)[0]
        state[first] = state[first] + 1e-3
        save_file(state, weights)


def test_correlation_with_default_options_end_to_end_on_a_tiny_run_then_nothing_is_recomputed(bench, tiny_run,
                                                                                               tmp_path):
    res = tmp_path / "res"
    args = ("run", "-b", "igpt", "--weights", f"{tiny_run}/checkpoints/*", *STUDY, "--results", res)
    r = bench(*args)
    assert r.code == 0, r
    assert "against best-layer test top-1" in r.out and "Spearman ρ" in r.out and "best layer" in r.out
    assert "agrees with paper" in r.out and "n < 6" in r.out and "separate training step from quality" in r.out
    assert "warning: correlation: these checkpoints cannot separate training step from bits_per_dim" in r.err, r
    (study,) = res.glob("study__digits__correlation__*.json")
    assert {p.name for p in study.with_suffix("").iterdir()} == {
        "correlation-scatter.png", "checkpoint-depth.png", "checkpoint-layers.png", "training-step.png"}
    doc = json.loads(study.read_text())
    assert doc["run"]["identity"]["options"]["n"] == 1000  # the default reads as before: default runs keep ids
    recs = doc["records"]
    points = {r["point"] for r in recs if r["kind"] == "best"}
    assert points == {"tiny@step4", "tiny@step8", "tiny@step12"}  # <run folder>@step<N>
    layers = [r for r in recs if r["kind"] == "layer" and r["point"] == "tiny@step12" and r["split"] == "test"]
    assert [r["layer"] for r in layers] == ["h0", "h1", "h2", "h3", "h4", "final"]
    assert [r["depth"] for r in layers] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    rho = [r for r in recs if r["kind"] == "stat" and r["quality"] == "bits_per_dim" and r["metric"] == "spearman"]
    assert [r["scope"] for r in rho] == ["all checkpoints", "partial given step"]  # one size, no shared step
    assert rho[0]["n"] == 3 and "n < 6" in rho[0]["caution"] and rho[1]["value"] is None
    (sep,) = [r for r in recs if r["kind"] == "separation" and r["quality"] == "bits_per_dim"]
    assert sep["separable"] is False and "step and quality confounded" in rho[0]["caution"]  # one run: step is all
    best = [r for r in recs if r["kind"] == "best" and r["split"] == "val"]
    assert all(r["val_n"] == 144 and r["caution"].startswith("val split of 144 images (SE ") for r in best)
    # The study's numbers are its members' numbers: best layer by val, its test top-1, bits/dim.
    member = {p.name: json.loads(p.read_text())["records"] for p in res.glob("igpt@step12__*.json")}
    probe = next(v for k, v in member.items() if "__linear-probe__" in k)
    val = {r["layer"]: r["value"] for r in probe if r["split"] == "val" and r["metric"] == "top1"}
    test = {r["layer"]: r["value"] for r in probe if r["split"] == "test" and r["metric"] == "top1"}
    chosen = max(val, key=lambda layer: (val[layer], -list(val).index(layer)))
    best = next(r for r in recs if r["kind"] == "best" and r["point"] == "tiny@step12" and r["split"] == "test")
    assert best["layer"] == chosen and best["value"] == test[chosen]
    quality = next(v for k, v in member.items() if "__sample-quality__" in k)
    bpd = next(r for r in quality if r["metric"] == "bits_per_dim")
    assert next(r for r in recs if r.get("metric") == "bits_per_dim" and r["point"] == "tiny@step12")["value"] \
        == bpd["value"]
    fd = next(r for r in quality if r["metric"] == "fd")  # sample-quality's default n: the val split's 144 images
    assert fd["n"] == 144 and fd["n_rule"] == "default: min(1000, the val split's 144 images)"

    stamps = {p: p.stat().st_mtime_ns for p in res.rglob("*") if p.is_file()}
    r = bench(*args)  # everything done already: nothing extracted, sampled, probed or written
    assert r.code == 0, r
    assert "extracted" not in r.out + r.err
    assert r.out.count("skipped: done already") == 7  # 3 x (sample-quality, linear-probe) + the study
    assert {p: p.stat().st_mtime_ns for p in res.rglob("*") if p.is_file()} == stamps

    df = api.run("igpt", "correlation", "digits", weights=f"{tiny_run}/checkpoints/*", limit=200, results=res)
    assert {p: p.stat().st_mtime_ns for p in res.rglob("*") if p.is_file()} == stamps  # same identities
    assert set(df[df.study.notna()].point.dropna()) == points
    df = api.run("igpt", "correlation", "digits", weights=f"{tiny_run}/checkpoints/*", limit=200, results=res,
                 options={"n": "auto", "bootstrap": 10000})  # the defaults spelled out: the same runs
    assert {p: p.stat().st_mtime_ns for p in res.rglob("*") if p.is_file()} == stamps

    r = bench("report", res, "--format", "md")  # run x layer tables, then the study's
    assert r.code == 0 and "### linear-probe · digits" in r.out and "### sample-quality · digits" in r.out, r
    assert "| igpt tiny@step12 | h0 |" in r.out and "### correlation · digits · 3 checkpoints" in r.out, r
    assert "separate training step from quality" in r.out, r
    r = bench("report", res, "--long", "--format", "md")
    assert r.code == 0 and "### correlation · digits · 3 checkpoints" in r.out and "| linear-probe |" in r.out, r
    out = tmp_path / "report.html"
    r = bench("report", res, "--format", "html", "--out", out, "--plot", tmp_path / "plots")
    assert r.code == 0, r
    assert "correlation-scatter" in out.read_text() and (tmp_path / "plots" / "checkpoint-layers.png").is_file()
    r = bench("report", study, "--format", "html", "--out", tmp_path / "study.html")  # the study file alone
    assert r.code == 0 and (tmp_path / "study.html").read_text().count("<table>") == 3, r

    # Two runs saved at the same steps: their points keep apart in the tables and the plots. (A plain
    # copy would be the same checkpoints, counted once: the second run's weights differ.)
    shutil.copytree(tiny_run, tmp_path / "again")
    _nudge_weights(tmp_path / "again")
    r = bench("run", "-b", "igpt", "--weights", f"{tiny_run}/checkpoints/*", "--weights",
              f"{tmp_path}/again/checkpoints/*", *STUDY, "--results", res)
    assert r.code == 0, r
    (both,) = set(res.glob("study__*.json")) - {study}
    labels = {r["point"] for r in json.loads(both.read_text())["records"] if r["kind"] == "best"}
    assert labels == points | {"again@step4", "again@step8", "again@step12"}
    assert len(list(both.with_suffix("").glob("*.png"))) == 4


def test_a_glob_matching_nothing_is_refused(bench, tmp_path):
    r = bench("run", "-b", "igpt", "--weights", f"{tmp_path}/none/checkpoints/*", *STUDY)
    assert_user_error(r, "matches nothing")


def test_fewer_than_three_points_are_refused_before_any_work(bench, tiny_run, tmp_path):
    ckpts = sorted((tiny_run / "checkpoints").iterdir())[:2]
    r = bench("run", "-b", "igpt", *[a for c in ckpts for a in ("--weights", c)], *STUDY, "--results", tmp_path / "r")
    assert_user_error(r, "at least 3 checkpoints, got 2")
    assert not (tmp_path / "r").exists()


def test_checkpoints_of_other_palettes_or_datasets_are_not_mixed(bench, tiny_run, tmp_path):
    from backbones.igpt.train import TrainConfig, pretrain

    other = tmp_path / "eight-colors"
    pretrain(TrainConfig(backbone="igpt-tiny", dataset="digits", steps=1, batch_size=8, limit=50, colors=8), other,
             quiet=True, log=lambda msg: None)
    ckpts = sorted((tiny_run / "checkpoints").iterdir())
    mixed = [*ckpts[:2], other / "checkpoints" / "step-0000001"]
    r = bench("run", "-b", "igpt", *[a for c in mixed for a in ("--weights", c)], *STUDY, "--results", tmp_path / "r")
    assert_user_error(r, "different palettes")

    moved = tmp_path / "from-mnist"
    shutil.copytree(ckpts[0], moved)
    meta = json.loads((moved / "igpt.json").read_text())
    meta["train"]["dataset"] = "mnist"
    (moved / "igpt.json").write_text(json.dumps(meta))
    r = bench("run", "-b", "igpt", *[a for c in [*ckpts[1:], moved] for a in ("--weights", c)], *STUDY,
              "--results", tmp_path / "r")
    assert_user_error(r, "different training datasets")
    assert not (tmp_path / "r").exists()


def test_a_study_of_backbones_that_cannot_sample_is_refused(bench, tmp_path):
    r = bench("run", "-b", "resnet18", "-b", "resnet34", "-b", "pixels", *STUDY, "--results", tmp_path / "r")
    assert_user_error(r, "needs a generative backbone")
    assert not (tmp_path / "r").exists()


def test_refits_of_one_palette_are_one_palette_and_others_are_not():
    from bench.study import same_palette

    centers = np.linspace(-1, 1, 16, dtype=np.float32)[:, None]
    assert same_palette(centers, centers + 6e-4)  # k-means on another thread count: last bits differ
    assert not same_palette(centers, centers + 0.01)
    assert not same_palette(centers, centers[:8])
