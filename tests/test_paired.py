"""Per-example predictions beside the results file, paired comparisons (McNemar's exact test, a
paired-bootstrap interval) and per-class tables, through the CLI and bench.api on digits."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, bootstrap

from bench import api
from bench.paired import mcnemar, paired_bootstrap, predictions_path, read_predictions
from tests.conftest import assert_user_error

PROBE = ["-o", "l2_grid=1e-3,1e-1"]


def _outcomes(both: int, a_only: int, b_only: int, neither: int):
    """Paired right/wrong outcomes with the given disagreement table, shuffled."""
    a = np.array([1] * both + [1] * a_only + [0] * b_only + [0] * neither, bool)
    b = np.array([1] * both + [0] * a_only + [1] * b_only + [0] * neither, bool)
    order = np.random.default_rng(0).permutation(len(a))
    return a[order], b[order]


# -- the statistics against simple references ---------------------------------------------------

def test_mcnemar_is_binomtest_on_the_discordant_pairs():
    a, b = _outcomes(both=50, a_only=7, b_only=19, neither=24)
    test = mcnemar(a, b)
    assert (test.a_only, test.b_only) == (7, 19)
    assert test.p == pytest.approx(binomtest(19, 26, 0.5).pvalue, rel=1e-12)
    assert mcnemar(b, a).p == pytest.approx(test.p, rel=1e-12)  # two-sided: symmetric


def test_mcnemar_exact_two_sided_values_by_hand():
    assert mcnemar(*_outcomes(5, 0, 3, 2)).p == pytest.approx(2 * 0.5**3)  # 3 of 3 discordant are B's
    assert mcnemar(*_outcomes(5, 1, 4, 0)).p == pytest.approx(2 * (1 + 5) / 2**5)  # 2 P(X <= 1), X ~ Bin(5, 1/2)
    assert mcnemar(*_outcomes(5, 0, 0, 5)).p == 1.0  # no discordant pair: nothing tells them apart


def test_bootstrap_interval_covers_the_true_difference_and_is_calibrated():
    """Paired outcomes drawn with P(only B right) = 0.15, P(only A right) = 0.05: B - A = +10 points.
    One draw's interval holds 10 and excludes 0; over 200 draws about 95% of the intervals hold 10."""
    rng = np.random.default_rng(1)

    def draw(n):
        kind = rng.choice(3, size=n, p=[0.15, 0.05, 0.80])  # B only, A only, same outcome
        same = rng.random(n) < 0.6
        return np.where(kind == 1, True, (kind == 2) & same), np.where(kind == 0, True, (kind == 2) & same)

    lo, hi = paired_bootstrap(*draw(2000))
    assert lo < 10 < hi and lo > 0
    covered = sum(lo < 10 < hi for lo, hi in (paired_bootstrap(*draw(400), resamples=2000, seed=s)
                                            for s in range(200)))
    assert 0.89 <= covered / 200 <= 0.99, covered


def test_bootstrap_is_deterministic_for_a_seed_and_matches_resampling_rows():
    a, b = _outcomes(both=120, a_only=10, b_only=22, neither=48)
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    reference = bootstrap((a.astype(float), b.astype(float)), lambda x, y, axis: 100 * (y.mean(axis) - x.mean(axis)),
                          paired=True, method="percentile", n_resamples=20000, random_state=0).confidence_interval
    lo, hi = paired_bootstrap(a, b, resamples=20000)
    assert lo == pytest.approx(reference.low, abs=0.6) and hi == pytest.approx(reference.high, abs=0.6)


# -- real runs ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """pixels and igpt-tiny (h0, h1) linear probes on the same digits examples (--limit 300), and
    pixels on other examples (--limit 200)."""
    from bench.cli import main

    root = tmp_path_factory.mktemp("paired")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE", str(root / "cache"))
        for backbone, limit, extra in (("pixels", 300, []), ("igpt-tiny", 300, ["--layers", "h0,h1"]),
                                       ("pixels", 200, [])):
            try:
                main(["-q", "run", "-b", backbone, "-t", "linear-probe", "-d", "digits", "--limit", str(limit),
                      "--results", str(root / f"res{limit}"), *PROBE, *extra])
            except SystemExit as e:
                assert not e.code, e
    (pixels,) = (root / "res300").glob("pixels__*.json")
    (igpt,) = (root / "res300").glob("igpt-tiny__*.json")
    (other,) = (root / "res200").glob("pixels__*.json")
    return {"pixels": pixels, "igpt": igpt, "other": other}


def _top1(path, split="test") -> dict:
    doc = json.loads(path.read_text())
    return {r["layer"]: r["value"] for r in doc["records"] if r["metric"] == "top1" and r["split"] == split}


def test_predictions_are_written_beside_the_results_and_match_its_top1(runs):
    from bench.datasets import load_split

    for path in (runs["pixels"], runs["igpt"]):
        assert predictions_path(path).is_file()
        header = json.loads(path.read_text())["run"]
        assert header["predictions"]["file"] == predictions_path(path).name
        kept, why = read_predictions(path)
        assert why == "" and set(kept) == {"val", "test"}
        for split in ("val", "test"):
            data = load_split("digits", split, limit=300, seed=0)
            assert np.array_equal(kept[split].indices, data.indices)
            assert np.array_equal(kept[split].labels, data.labels)
            assert kept[split].digest == header["identity"]["data"][split]
            for layer, value in _top1(path, split).items():
                assert 100.0 * kept[split].correct(layer).mean() == pytest.approx(value, abs=1e-9)
        assert set(kept["test"].predicted) == set(_top1(path))


def test_compare_prints_mcnemar_p_and_a_paired_interval(bench, runs):
    r = bench("compare", runs["pixels"], runs["igpt"])
    assert r.code == 0, r
    assert "runs side by side" in r.out and "McNemar p" in r.out and "95% CI" in r.out
    assert re.search(r"\[[+-]\d+\.\d\d, [+-]\d+\.\d\d\]", r.out), r.out
    table = api.paired(runs["pixels"], runs["igpt"], against=runs["pixels"].name)
    best = table.iloc[0]  # pixels' only layer against the layer igpt-tiny chose by val
    chosen = max(_top1(runs["igpt"], "val").items(), key=lambda kv: kv[1])[0]
    assert (best["layer A"], best["layer B"]) == ("pixels", chosen) and best["n"] == 300
    assert best["top1 A"] == pytest.approx(_top1(runs["pixels"])["pixels"])
    assert best["top1 B"] == pytest.approx(_top1(runs["igpt"])[chosen])
    a = read_predictions(runs["pixels"])[0]["test"].correct("pixels")
    b = read_predictions(runs["igpt"])[0]["test"].correct(chosen)
    assert best["p"] == pytest.approx(binomtest(int((b & ~a).sum()), int((a != b).sum()), 0.5).pvalue)
    assert best["Δ low"] <= best["Δ"] <= best["Δ high"] and best["significant"] == (best["p"] < 0.05)
    assert best["note"] == ""


def test_compare_md_and_csv_carry_the_paired_table(bench, runs):
    md = bench("compare", runs["pixels"], runs["igpt"], "--format", "md")
    assert md.code == 0 and "### paired" in md.out and "| McNemar p |" in md.out, md
    csv = bench("compare", runs["pixels"], runs["igpt"], "--format", "csv")  # one table: the side-by-side one
    assert csv.code == 0 and "McNemar" not in csv.out, csv
    only = bench("compare", runs["pixels"], runs["igpt"], "--format", "csv", "--paired")
    table = pd.read_csv(__import__("io").StringIO(only.out))
    assert only.code == 0 and {"p", "Δ low", "Δ high", "significant"} <= set(table.columns)


def test_runs_on_other_examples_keep_unpaired_columns_and_say_why(bench, runs):
    table = api.paired(runs["pixels"], runs["other"], against=runs["pixels"].stem)
    row = table.iloc[0]
    assert row["top1 A"] == pytest.approx(_top1(runs["pixels"])["pixels"])
    assert row["top1 B"] == pytest.approx(_top1(runs["other"])["pixels"])
    assert pd.isna(row["p"]) and pd.isna(row["Δ low"]) and pd.isna(row["n"]) and not row["significant"]
    assert "not paired: other test examples (300 vs 200" in row["note"]
    r = bench("compare", runs["pixels"], runs["other"])
    assert r.code == 0 and "not paired" in r.out, r


def test_two_layers_of_one_run_are_paired(bench, runs):
    table = api.paired(runs["igpt"], layers=("h0", "h1"))
    assert len(table) == 1 and (table.iloc[0]["layer A"], table.iloc[0]["layer B"]) == ("h0", "h1")
    top = _top1(runs["igpt"])
    assert table.iloc[0]["Δ"] == pytest.approx(top["h1"] - top["h0"])
    r = bench("compare", runs["igpt"], "--layers", "h0,h1")
    assert r.code == 0 and "McNemar p" in r.out and "side by side" not in r.out, r
    assert_user_error(bench("compare", runs["igpt"], "--layers", "h0,h7"), "has no layer 'h7'", "h0, h1")
    assert_user_error(bench("compare", runs["igpt"], "--layers", "h0"), "two different layers")


def test_runs_without_predictions_say_so_instead_of_failing(bench, runs, tmp_path):
    old = tmp_path / runs["igpt"].name
    doc = json.loads(runs["igpt"].read_text())
    del doc["run"]["predictions"]  # as written before predictions were kept
    old.write_text(json.dumps(doc))
    table = api.paired(runs["pixels"], old, against=str(runs["pixels"]))
    assert table.iloc[0]["note"].startswith("B: no predictions (written before") and pd.isna(table.iloc[0]["p"])
    assert table.iloc[0]["top1 B"] == pytest.approx(_top1(runs["igpt"])[table.iloc[0]["layer B"]])
    r = bench("compare", runs["pixels"], old, "--format", "md", "--against", runs["pixels"].name)
    assert r.code == 0 and "B: no predictions (written before they were kept" in r.out, r
    r = bench("report", old, "--per-class", "--format", "md")
    assert r.code == 0 and "left out" in r.out, r


def test_a_predictions_file_that_is_not_the_one_written_is_not_used(runs, tmp_path):
    results = tmp_path / runs["pixels"].name
    results.write_bytes(runs["pixels"].read_bytes())
    predictions_path(results).write_bytes(predictions_path(runs["igpt"]).read_bytes())
    kept, why = read_predictions(results)
    assert kept is None and "is not the file" in why


def test_per_class_table_sums_to_the_test_top1(bench, runs):
    tables = api.per_class(runs["pixels"], runs["igpt"])
    title, table = tables[0]
    assert title.startswith("per-class test top-1 · linear-probe · digits")
    chosen = max(_top1(runs["igpt"], "val").items(), key=lambda kv: kv[1])[0]
    for name, expected in (("pixels · pixels", _top1(runs["pixels"])["pixels"]),
                           (f"igpt-tiny · {chosen}", _top1(runs["igpt"])[chosen])):
        classes = table[table["class"] != "all"]
        weighted = (classes["n"].astype(float) * classes[name]).sum() / classes["n"].sum()
        assert weighted == pytest.approx(expected, abs=1e-9)
        assert table[table["class"] == "all"][name].iloc[0] == pytest.approx(expected, abs=1e-9)
    matrices = [t for title, t in tables[1:] if title.startswith("confusion matrix")]
    assert len(matrices) == 2
    for matrix in matrices:
        counts = matrix.drop(columns="true \\ predicted").to_numpy()
        assert counts.sum() == 300 and list(counts.sum(axis=1)) == list(table["n"][:-1])
    r = bench("report", runs["pixels"], runs["igpt"], "--per-class", "--format", "md")
    assert r.code == 0 and "### per-class test top-1" in r.out and "### confusion matrix" in r.out, r
    assert r.out.endswith("\n")


def test_per_class_plots_and_html(bench, runs, tmp_path):
    r = bench("report", runs["pixels"], runs["igpt"], "--per-class", "--plot", tmp_path / "plots", "--format", "html",
              "--out", tmp_path / "r.html")
    assert r.code == 0, r
    png = tmp_path / "plots" / "confusion-linear-probe-digits.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "r.html").read_text()
    assert "per-class test top-1" in page and "confusion-linear-probe-digits" in page


def test_knn_keeps_the_predictions_of_its_chosen_k(bench, tmp_path):
    r = bench("-q", "run", "-b", "pixels", "-t", "knn", "-d", "digits", "--limit", "300", "-o", "k=5,10",
              "--results", tmp_path / "res")
    assert r.code == 0, r
    (path,) = (tmp_path / "res").glob("*.json")
    kept, why = read_predictions(path)
    assert why == ""
    for split in ("val", "test"):
        assert 100.0 * kept[split].correct("pixels").mean() == pytest.approx(_top1(path, split)["pixels"], abs=1e-9)


def _finetune(folder, epochs: int):
    """A fine-tune of igpt-tiny on 64 digits per split: (records, the run context, the data)."""
    from backbones.base import BackboneOptions, DataSpec, create_backbone
    from bench.datasets import load_split
    from tasks.base import RunContext
    from tasks.finetune import Finetune

    data = {s: load_split("digits", s, limit=64) for s in ("train", "val", "test")}
    model = create_backbone("igpt-tiny", DataSpec.of(data["train"].images), BackboneOptions())
    task = Finetune()
    ctx = RunContext(backbone=model, layers=["final"], data=data, artifacts=folder, quiet=True,
                     options=task.parse_options({"epochs": epochs, "batch_size": 32, "augment": "off"}))
    return task.run(ctx), ctx, data


def _assert_predictions_match(records, ctx, data):
    assert set(ctx.predictions) == {("val", "final"), ("test", "final")}
    scored = [r for r in records if r["metric"] == "top1" and not r.get("curve")]
    assert {r["split"] for r in scored} == {"val", "test"}
    for r in scored:
        correct = ctx.predictions[(r["split"], "final")] == data[r["split"]].labels
        assert 100.0 * correct.mean() == pytest.approx(r["value"], abs=1e-9)


def test_finetune_keeps_the_best_epochs_val_and_test_predictions(tmp_path):
    _assert_predictions_match(*_finetune(tmp_path / "run", epochs=2))


def test_finetune_resumed_after_its_best_epoch_scores_val_again_for_its_predictions(tmp_path, monkeypatch):
    """Killed once epoch 1 (of 1) is saved: the resumed run trains nothing, so the best epoch's
    val classes were never seen by this process; they are scored again from the best weights."""
    import tasks.finetune

    class Killed(Exception):
        pass

    save = tasks.finetune.save_epoch

    def save_then_die(*args):
        save(*args)
        raise Killed

    monkeypatch.setattr(tasks.finetune, "save_epoch", save_then_die)
    with pytest.raises(Killed):
        _finetune(tmp_path / "run", epochs=1)
    monkeypatch.setattr(tasks.finetune, "save_epoch", save)
    assert list((tmp_path / "run").glob("epoch-0001"))
    _assert_predictions_match(*_finetune(tmp_path / "run", epochs=1))


def test_the_first_run_in_run_order_is_the_reference_unless_against_names_one(bench, runs):
    table = api.paired(runs["pixels"], runs["igpt"])  # igpt-tiny sorts before pixels
    assert (table.iloc[0]["A"], table.iloc[0]["B"]) == ("igpt-tiny", "pixels")
    run_id = json.loads(runs["pixels"].read_text())["run"]["run"]
    flipped = api.paired(runs["pixels"], runs["igpt"], against=run_id).iloc[0]
    assert (flipped["A"], flipped["B"]) == ("pixels", "igpt-tiny")
    assert flipped["Δ"] == pytest.approx(-table.iloc[0]["Δ"]) and flipped["p"] == pytest.approx(table.iloc[0]["p"])
    assert (flipped["Δ low"], flipped["Δ high"]) == pytest.approx((-table.iloc[0]["Δ high"], -table.iloc[0]["Δ low"]),
                                                                 abs=1.0)
    assert_user_error(bench("compare", runs["pixels"], runs["igpt"], "--paired", "--against", "nope"),
                      "--against 'nope' names none of the runs")
