"""The kNN task: the same neighbours and votes as scikit-learn, whatever the block size; the CLI run
on digits that `bench report` renders; bad input in one line with nothing written."""

import json

import numpy as np
import pytest

from bench import api
from bench.benchmark import knn_benchmark, knn_features
from tasks.knn import fitting_ks, knn_predict, nearest, unit_rows
from tests.conftest import assert_user_error

T = 0.1


def _features(n_train=600, n_query=200, dim=16, n_classes=4, seed=3):
    X, y, Q, _ = knn_features(n_train, n_query, dim, n_classes, seed)
    return X + 0.5 * (y[:, None] == np.arange(dim) % n_classes), y, Q  # classes apart, not separable


def test_the_same_neighbours_as_sklearn_nearest_neighbors_with_cosine():
    from sklearn.neighbors import NearestNeighbors

    X, _, Q = _features()
    k = 25
    sims, idx = nearest(unit_rows(Q), unit_rows(X), k, block_size=64)
    dist, ref = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(X).kneighbors(Q)
    np.testing.assert_allclose(sims.numpy(), 1 - dist[:, :k], atol=1e-5)
    # Compare neighbour sets wherever the k-th and (k+1)-th are not a float32 near-tie.
    clear = (dist[:, k] - dist[:, k - 1]) > 1e-5
    assert clear.mean() > 0.95
    for row in np.flatnonzero(clear):
        assert set(idx[row].tolist()) == set(ref[row, :k].tolist()), row


@pytest.mark.parametrize("k", [1, 7, 50])
def test_the_same_votes_as_sklearn_kneighbors_classifier_with_exp_weights(k):
    from sklearn.neighbors import KNeighborsClassifier

    X, y, Q = _features()
    ours = knn_predict(X, y, Q, [k], temperature=T, block_size=100)[k]
    ref = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute",
                               weights=lambda d: np.exp((1 - d) / T)).fit(X, y)
    # Near-ties of two classes' summed weights may flip with float32 rounding: compare elsewhere.
    proba = ref.predict_proba(Q)
    top2 = np.sort(proba, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-4
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(ours[clear], ref.predict(Q)[clear])


def test_block_size_changes_memory_not_answers_and_every_k_comes_from_one_search():
    X, y, Q = _features(n_train=1000, n_query=300)
    a = knn_predict(X, y, Q, [3, 10, 40], T, block_size=7)
    b = knn_predict(X, y, Q, [3, 10, 40], T, block_size=100000)
    for k in (3, 10, 40):
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_array_equal(a[k], knn_predict(X, y, Q, [k], T)[k])  # searched for k alone


def test_votes_do_not_overflow_at_a_tiny_temperature():
    X, y, Q = _features()
    pred = knn_predict(X, y, Q, [20], temperature=1e-4)[20]
    nn1 = knn_predict(X, y, Q, [1], temperature=1.0)[1]
    np.testing.assert_array_equal(pred, nn1)  # exp(sim/T) with T -> 0 is the nearest neighbour's vote


def test_knn_run_on_digits_writes_records_that_report_renders(bench, tmp_path):
    res = tmp_path / "res"
    r = bench("-q", "run", "-b", "pixels", "-t", "knn", "-d", "digits", "-o", "k=1,5,20", "--results", res)
    assert r.code == 0, r
    assert "chosen k" in r.out
    (path,) = res.glob("pixels__digits__knn__*.json")
    recs = json.loads(path.read_text())["records"]
    by = {(x["split"], x["metric"]): x for x in recs}
    assert set(by) == {("val", "top1"), ("test", "top1"), ("val", "k")}
    k = by["val", "k"]["value"]
    assert k in (1, 5, 20) and by["val", "top1"]["k"] == by["test", "top1"]["k"] == k
    assert by["test", "top1"]["value"] > 90 and 0 < by["test", "top1"]["stderr"] < 2  # digits pixels: ~98
    assert by["test", "top1"]["n"] == 359 and by["val", "top1"]["layer"] == "pixels"
    assert recs[0]["config"]["task_options"] == {"k": [1, 5, 20], "temperature": 0.07, "bank": "train+val",
                                                 "block_size": 32768}
    for fmt in ("table", "md", "csv"):
        rep = bench("report", res, "--format", fmt)
        assert rep.code == 0 and "knn" in rep.out, rep


def test_the_test_bank_option_uses_train_alone_or_train_and_val(bench, tmp_path):
    values = {}
    for bank in ("train", "train+val"):
        r = bench("-q", "run", "-b", "pixels", "-t", "knn", "-d", "digits", "--limit", "300", "-o", "k=1",
                  "-o", f"bank={bank}", "--results", tmp_path / bank)
        assert r.code == 0, r
        (path,) = (tmp_path / bank).glob("*.json")
        recs = json.loads(path.read_text())["records"]
        values[bank] = {(x["split"], x["metric"]): x["value"] for x in recs}
    assert values["train"]["val", "top1"] == values["train+val"]["val", "top1"]  # val always uses train


@pytest.mark.parametrize("option, fragments", [
    ("k=5000,6000", ["k=5000,6000", "at least 5000 neighbours", "train split", "at most"]),
    ("k=0", ["k='0'", "positive integers"]),
    ("k=ten", ["k='ten'"]),
    ("temperature=0", ["temperature", "positive"]),
    ("bank=test", ["bank", "train+val"]),
    ("block_size=0", ["block_size", "positive"]),
])
def test_bad_knn_options_are_one_line_and_leave_nothing_written(bench, tmp_path, option, fragments):
    r = bench("run", "-b", "pixels", "-t", "knn", "-d", "digits", "-o", option, "--results", tmp_path / "res")
    assert_user_error(r, *fragments)
    assert not (tmp_path / "res").exists() and not (tmp_path / "cache").exists()  # checked before extraction


def test_k_values_past_the_train_split_are_dropped_with_a_logged_line():
    notes = []
    assert fitting_ks([10, 20, 50, 100, 200], 100, notes.append) == [10, 20, 50, 100]
    assert notes == ["knn: dropping k=200: more neighbours than the 100 images of the train split"]
    assert fitting_ks([1, 5], 5, notes.append) == [1, 5] and len(notes) == 1  # nothing dropped, nothing said
    assert fitting_ks([7, 9], 6) == []


def test_the_default_k_list_runs_on_a_small_limit(bench, tmp_path):
    """--limit 60: the train split has 60 images, so of the default 10..200 only 10, 20 and 50 fit."""
    r = bench("run", "-b", "pixels", "-t", "knn", "-d", "digits", "--limit", "60", "--results", tmp_path / "res")
    assert r.code == 0, r
    assert "knn: dropping k=100,200: more neighbours than the 60 images of the train split" in r.err
    (path,) = (tmp_path / "res").glob("*.json")
    recs = json.loads(path.read_text())["records"]
    assert {x["value"] for x in recs if x["metric"] == "k"} <= {10, 20, 50}
    assert recs[0]["config"]["task_options"]["k"] == [10, 20, 50, 100, 200]  # as asked: the identity's
    notes = []
    df = api.run("pixels", "knn", "digits", limit=60, results=tmp_path / "res", log=notes.append, rerun=True)
    assert df[df.metric == "k"].value.isin([10, 20, 50]).all() and any("dropping k=100,200" in n for n in notes)


def test_the_knn_benchmark_runs_both_methods_on_the_same_features():
    """The machinery of `bench benchmark knn` (its timings are printed there, not asserted here)."""
    table = knn_benchmark(n_train=500, n_query=100, dim=8, n_classes=3, ks=(1, 5), block_size=64)
    assert len(table) == 2 and (table["seconds"] > 0).all() and (table["peak RSS MB"] > 0).all()
    assert (table["same label as sklearn %"] > 95).all()


def test_bench_benchmark_knn_prints_a_table_and_refuses_too_many_neighbours(bench):
    r = bench("benchmark", "knn", "--n-train", "300", "--n-query", "50", "--dim", "4", "-k", "1,3", "--no-sklearn")
    assert r.code == 0 and "queries/s" in r.out, r
    assert_user_error(bench("benchmark", "knn", "--n-train", "30", "-k", "50"), "-k", "at most --n-train")
