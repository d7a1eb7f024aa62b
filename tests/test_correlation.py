"""The correlation study: its statistics against scipy, one command end to end on a tiny run's
checkpoints (tables, both plots, nothing recomputed the second time, the same from Python), and the
mixes and sizes it must refuse."""

import json
import shutil

import numpy as np
import pytest
from scipy import stats

from bench import api
from tasks.correlation import correlate
from tests.conftest import assert_user_error

STUDY = ("-t", "correlation", "-d", "digits", "--limit", "200", "-o", "n=32", "-o", "extractor=pixels",
         "-o", "bootstrap=2000")


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


def test_correlation_end_to_end_on_a_tiny_run_then_nothing_is_recomputed(bench, tiny_run, tmp_path):
    res = tmp_path / "res"
    args = ("run", "-b", "igpt", "--weights", f"{tiny_run}/checkpoints/*", *STUDY, "--results", res)
    r = bench(*args)
    assert r.code == 0, r
    assert "against best-layer test top-1" in r.out and "Spearman ρ" in r.out and "best layer" in r.out
    (study,) = res.glob("study__digits__correlation__*.json")
    assert {p.name for p in study.with_suffix("").iterdir()} == {"correlation-scatter.png", "checkpoint-depth.png"}
    doc = json.loads(study.read_text())
    recs = doc["records"]
    points = {r["point"] for r in recs if r["kind"] == "best"}
    assert points == {"tiny@step4", "tiny@step8", "tiny@step12"}  # <run folder>@step<N>
    layers = [r for r in recs if r["kind"] == "layer" and r["point"] == "tiny@step12" and r["split"] == "test"]
    assert [r["layer"] for r in layers] == ["h0", "h1", "h2", "h3", "h4", "final"]
    assert [r["depth"] for r in layers] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    rho = [r for r in recs if r["kind"] == "stat" and r["quality"] == "bits_per_dim" and r["metric"] == "spearman"]
    assert len(rho) == 1 and rho[0]["n"] == 3
    # The study's numbers are its members' numbers: best layer by val, its test top-1, bits/dim.
    member = {p.name: json.loads(p.read_text())["records"] for p in res.glob("igpt@step12__*.json")}
    probe = next(v for k, v in member.items() if "__linear-probe__" in k)
    val = {r["layer"]: r["value"] for r in probe if r["split"] == "val" and r["metric"] == "top1"}
    test = {r["layer"]: r["value"] for r in probe if r["split"] == "test" and r["metric"] == "top1"}
    chosen = max(val, key=lambda layer: (val[layer], -list(val).index(layer)))
    best = next(r for r in recs if r["kind"] == "best" and r["point"] == "tiny@step12" and r["split"] == "test")
    assert best["layer"] == chosen and best["value"] == test[chosen]
    bpd = next(r for r in next(v for k, v in member.items() if "__sample-quality__" in k)
               if r["metric"] == "bits_per_dim")
    assert next(r for r in recs if r.get("metric") == "bits_per_dim" and r["point"] == "tiny@step12")["value"] \
        == bpd["value"]

    stamps = {p: p.stat().st_mtime_ns for p in res.rglob("*") if p.is_file()}
    r = bench(*args)  # everything done already: nothing extracted, sampled, probed or written
    assert r.code == 0, r
    assert "extracted" not in r.out + r.err
    assert r.out.count("skipped: done already") == 7  # 3 x (sample-quality, linear-probe) + the study
    assert {p: p.stat().st_mtime_ns for p in res.rglob("*") if p.is_file()} == stamps

    df = api.run("igpt", "correlation", "digits", weights=f"{tiny_run}/checkpoints/*", limit=200, results=res,
                 options={"n": 32, "extractor": "pixels", "bootstrap": 2000})
    assert {p: p.stat().st_mtime_ns for p in res.rglob("*") if p.is_file()} == stamps  # same identities
    assert set(df[df.study.notna()].point.dropna()) == points

    r = bench("report", res, "--format", "md")
    assert r.code == 0 and "### correlation · digits · 3 checkpoints" in r.out and "| linear-probe |" in r.out, r
    r = bench("report", res, "--summary", "--format", "md")  # run x layer tables, then the study's
    assert r.code == 0 and "### linear-probe · digits" in r.out and "### sample-quality · digits" in r.out, r
    assert "| igpt tiny@step12 | h0 |" in r.out and "### correlation · digits · 3 checkpoints" in r.out, r
    out = tmp_path / "report.html"
    r = bench("report", res, "--format", "html", "--out", out, "--plot", tmp_path / "plots")
    assert r.code == 0, r
    assert "correlation-scatter" in out.read_text() and (tmp_path / "plots" / "checkpoint-depth.png").is_file()
    r = bench("report", study, "--format", "html", "--out", tmp_path / "study.html")  # the study file alone
    assert r.code == 0 and (tmp_path / "study.html").read_text().count("<table>") == 2, r

    # Two runs saved at the same steps: their points keep apart in the tables and the plots.
    shutil.copytree(tiny_run, tmp_path / "again")
    r = bench("run", "-b", "igpt", "--weights", f"{tiny_run}/checkpoints/*", "--weights",
              f"{tmp_path}/again/checkpoints/*", *STUDY, "--results", res)
    assert r.code == 0, r
    (both,) = set(res.glob("study__*.json")) - {study}
    labels = {r["point"] for r in json.loads(both.read_text())["records"] if r["kind"] == "best"}
    assert labels == points | {"again@step4", "again@step8", "again@step12"}
    assert len(list(both.with_suffix("").glob("*.png"))) == 2


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
