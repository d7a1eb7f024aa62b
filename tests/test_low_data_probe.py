"""The low-data probe: stratified, seeded, nested draws; the same minimizer as scikit-learn on a
subset although the fit is preconditioned by the full train split; test never steers a choice;
the CLI run on digits that `bench report` renders; bad input in one line with nothing written."""

import json
import warnings

import numpy as np
import pytest

from bench.datasets import load_split
from bench.probe_loss import objective
from bench.probe_solver import LogisticRegressionLBFGS, second_moment_basis, standardize
from tasks.low_data_probe import low_data_layer, sample_shots
from tests.conftest import assert_user_error

GRID = ("-o", "l2_grid=1e-2,1,100")


def _pixels(d):
    return d.images.reshape(len(d), -1).astype(np.float32) / 255.0


def test_draws_are_stratified_seeded_and_nested():
    labels = np.repeat(np.arange(4), [30, 12, 50, 7])
    draws = sample_shots(labels, [1, 3, 7], seed=0, draw=0)
    for k, rows in draws.items():
        assert np.array_equal(np.bincount(labels[rows], minlength=4), [k] * 4)  # k of every class
        assert len(set(rows.tolist())) == len(rows)
    assert set(draws[1]) <= set(draws[3]) <= set(draws[7])  # a draw's small budget is inside its large one
    again = sample_shots(labels, [1, 3, 7], seed=0, draw=0)
    assert all(np.array_equal(draws[k], again[k]) for k in draws)  # seeded
    others = [sample_shots(labels, [3], seed, draw)[3] for seed, draw in ((0, 1), (1, 0))]
    assert all(not np.array_equal(draws[3], o) for o in others)  # another draw or --seed: other images
    assert np.array_equal(sample_shots(labels, [3], 0, 0)[3], draws[3])  # the budget list does not matter


@pytest.mark.parametrize("lam", [1e-2, 1e-1, 1.0])
def test_a_subset_fit_in_the_full_train_basis_reaches_sklearns_minimum(lam):
    """Standardized and preconditioned by the full train split, fitted on 10 images a class: the
    objective both solvers minimize agrees within 1e-4 of it (+1e-5), in both directions."""
    import torch
    from sklearn.linear_model import LogisticRegression

    d = load_split("digits", "train")
    X = standardize(_pixels(d))[0]
    Q, s = second_moment_basis(X)
    rows = sample_shots(d.labels, [10], seed=0, draw=0)[10]
    Xs, ys = X[rows], d.labels[rows]
    ours = LogisticRegressionLBFGS(10, tol=1e-6, max_iter=5000).fit(Xs, ys, lam, basis=(torch.as_tensor(Xs), Q, s))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = LogisticRegression(C=1 / (lam * len(Xs)), max_iter=5000, tol=1e-8).fit(Xs, ys)

    f_ours, f_ref = objective(Xs, ys, ours.W, ours.b, lam), objective(Xs, ys, ref.coef_.T, ref.intercept_, lam)
    slack = 1e-4 * f_ref + 1e-5
    assert f_ours <= f_ref + slack and f_ref <= f_ours + slack, (f_ours, f_ref)


def _digits_layer():
    s = {k: load_split("digits", k) for k in ("train", "val", "test")}
    return [a for k in ("train", "val", "test") for a in (_pixels(s[k]), s[k].labels)]


def test_test_labels_steer_nothing_and_std_is_over_draws():
    Xtr, ytr, Xva, yva, Xte, yte = _digits_layer()
    args = dict(shots=[1, 5], seeds=3, grid=[10.0, 0.1, 1e-3], n_classes=10)
    a = low_data_layer(Xtr, ytr, Xva, yva, Xte, yte, **args)
    b = low_data_layer(Xtr, ytr, Xva, yva, Xte, np.random.default_rng(0).permutation(yte), **args)
    pick = lambda recs, split: [(r["shots"], r["metric"], r["value"]) for r in recs if r["split"] == split]  # noqa: E731
    assert pick(a, "val") == pick(b, "val")  # val top-1 and the chosen l2 do not see test
    for r in a:
        if r["metric"] == "top1":
            assert r["seeds"] == 3 and r["labels"] == 10 * r["shots"]
            assert r["stderr"] == pytest.approx(r["std"] / np.sqrt(3))


def test_low_data_run_on_digits_writes_records_that_report_renders(bench, tmp_path):
    res = tmp_path / "res"
    r = bench("-q", "run", "-b", "pixels", "-t", "low-data-probe", "-d", "digits", "-o", "shots=1,10",
              "-o", "seeds=2", *GRID, "--results", res)
    assert r.code == 0, r
    (path,) = res.glob("pixels__digits__low-data-probe__*.json")
    recs = json.loads(path.read_text())["records"]
    keys = sorted((x["shots"], x["split"], x["metric"]) for x in recs)
    assert keys == [(k, split, metric) for k in (1, 10) for split, metric in
                    (("test", "top1"), ("val", "l2"), ("val", "top1"))]
    for x in recs:
        assert x["layer"] == "pixels" and x["seeds"] == 2 and x["labels"] == 10 * x["shots"]
        if x["metric"] == "top1":
            assert 10 < x["value"] <= 100 and x["std"] >= 0 and x["stderr"] == pytest.approx(x["std"] / np.sqrt(2))
            assert x["n"] == (359 if x["split"] == "test" else 144)
        else:
            assert x["value"] in (1e-2, 1.0, 100.0) and x["stderr"] is None
    test = {x["shots"]: x["value"] for x in recs if x["split"] == "test" and x["metric"] == "top1"}
    assert test[10] > test[1] > 40  # digits pixels, 1 image a class: ~60
    assert recs[0]["config"]["task_options"]["shots"] == [1, 10]
    for fmt in ("table", "md", "csv"):
        rep = bench("report", res, "--format", fmt)
        assert rep.code == 0 and "low-data-probe" in rep.out, rep


def test_layer_best_keeps_the_layer_a_full_linear_probe_prefers_on_val(bench, tmp_path):
    common = ("-q", "run", "-b", "resnet18", "-d", "digits", "--limit", "200", "--layers", "act1,layer1,layer2",
              "--image-size", "32", "-o", "max_iter=100", "--results", tmp_path)  # max_iter: both tasks
    assert bench(*common, "-t", "linear-probe").code == 0
    r = bench(*common, "-t", "low-data-probe", "-o", "layer=best", "-o", "shots=2", "-o", "seeds=2", *GRID)
    assert r.code == 0, r
    (probe,) = tmp_path.glob("*__linear-probe__*.json")
    (low,) = tmp_path.glob("*__low-data-probe__*.json")
    val = [x for x in json.loads(probe.read_text())["records"] if x["split"] == "val" and x["metric"] == "top1"]
    best = max(val, key=lambda x: x["value"])["layer"]  # max keeps the shallowest of equals, as the task does
    assert {x["layer"] for x in json.loads(low.read_text())["records"]} == {best}


def test_paper_budgets_are_an_option_value():
    from bench.registry import TASKS

    task = TASKS.get("low-data-probe")()
    assert task.parse_options(["shots=1,paper"])["shots"] == [1, 4, 25, 400]
    assert task.defaults()["shots"] == [1, 5, 10, 100] and task.defaults()["seeds"] == 5


@pytest.mark.parametrize("option, fragments", [
    ("shots=1,500", ["shots=1,500", "500 train images per class", "class", "has", "at most"]),
    ("shots=0", ["shots='0'", "positive integers"]),
    ("shots=five", ["shots='five'"]),
    ("seeds=0", ["seeds", "1..1000"]),
    ("layer=last", ["layer", "all, best"]),
    ("l2_grid=0", ["l2_grid", "positive"]),
])
def test_bad_low_data_options_are_one_line_and_leave_nothing_written(bench, tmp_path, option, fragments):
    r = bench("run", "-b", "pixels", "-t", "low-data-probe", "-d", "digits", "-o", option,
              "--results", tmp_path / "res")
    assert_user_error(r, *fragments)
    assert not (tmp_path / "res").exists() and not (tmp_path / "cache").exists()  # checked before extraction
