"""`bench cache list` and `bench cache prune`: what the activation cache holds and which results
files name each file; prune removes only what none names, never a file a running job holds (the
lock bench.lock and bench.store use), also while runs go on beside it."""

import json
import os
import subprocess
import sys
import time

import pytest

from bench import api, cache
from tests.conftest import assert_user_error

KNN = ["run", "-b", "pixels", "-t", "knn", "-d", "digits", "--limit", "100", "-o", "k=1,5"]
HOLD = """
import sys
from bench.cache import reading
from bench.lock import exclusive
kind, path = sys.argv[1], sys.argv[2]
with exclusive(path, "testing") if kind == "exclusive" else reading(path):
    print("held", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def filled(bench, tmp_path):
    """A results folder whose one run names three cache files, and a fourth file no run names."""
    res = tmp_path / "res"
    assert bench("-q", *KNN, "--results", res).code == 0
    r = bench("-q", "extract", "-b", "pixels", "-d", "digits", "--split", "test", "--limit", "50")
    assert r.code == 0, r
    loose = r.out.split("extracted: ")[1].split(" (")[0]
    return res, tmp_path / "cache" / "activations", loose


def _hold(kind, path):
    p = subprocess.Popen([sys.executable, "-c", HOLD, kind, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def _release(p):
    p.stdin.write("\n")
    p.stdin.close()
    assert p.wait(timeout=60) == 0


def test_cache_list_shows_what_each_file_holds_and_which_results_name_it(bench, filled, tmp_path):
    res, root, loose = filled
    found = cache.entries(results=[res])
    assert len(found) == 4 and {e.state for e in found} == {"finished"}
    (results_file,) = res.glob("*.json")
    named = json.loads(results_file.read_text())["run"]["splits"]
    assert {str(e.path) for e in found if e.references} == {s["activations"] for s in named.values()}
    assert all(e.references == [results_file] for e in found if e.references)
    (unnamed,) = [e for e in found if not e.references]
    assert str(unnamed.path) == loose and (unnamed.split, unnamed.limit, unnamed.rows) == ("test", 50, 50)
    assert all(e.backbone == "pixels" and e.dataset == "digits" and e.layers == ["pixels"] for e in found)
    assert all(e.size == e.path.stat().st_size > 0 and e.last_use > 0 and not e.in_use for e in found)
    r = bench("cache", "list", "--results", res)
    assert r.code == 0 and "4 files" in r.out and "1 of them" in r.out and "none" in r.out, r
    r = bench("cache", "list")  # no bench-results here: the references are not counted
    assert r.code == 0 and "--results DIR counts" in r.out and "none" not in r.out, r
    r = bench("cache", "list", "--cache", tmp_path / "empty")
    assert r.code == 0 and "holds no activation files" in r.out, r


def test_prune_removes_only_what_no_results_file_names(bench, filled):
    res, root, loose = filled
    r = bench("cache", "prune", "--results", res, "--dry-run")
    assert r.code == 0 and f"would remove {loose} (" in r.out and "would remove 1 files" in r.out, r
    assert os.path.exists(loose)
    r = bench("cache", "prune", "--results", res)
    assert r.code == 0 and f"removed {loose} (" in r.out and "kept 3 named by results files" in r.out, r
    assert not os.path.exists(loose) and len(cache.entries()) == 3
    assert not list(root.rglob(".*.lock"))  # the prune's locks went with it
    r = bench(*KNN, "--results", res, "--rerun")  # what the run named is still there to reuse
    assert r.code == 0 and r.err.count(": reused ") == 3, r
    done = cache.prune([res])
    assert done.removed == [] and len(done.referenced) == 3


@pytest.mark.parametrize("kind", ["exclusive", "reading"])
def test_prune_keeps_a_file_another_process_holds(bench, filled, kind):
    """exclusive: a job extracting it (bench.store's lock); reading: a job using it."""
    res, root, loose = filled
    holder = _hold(kind, loose)
    try:
        assert cache.in_use(loose)
        r = bench("cache", "prune", "--results", res)
        assert r.code == 0 and f"kept (a running job holds it) {loose}" in r.out and "removed 0 files" in r.out, r
        assert os.path.exists(loose) and [e.in_use for e in cache.entries() if str(e.path) == loose] == [True]
        assert "in use" in bench("cache", "list").out
    finally:
        _release(holder)
    assert not cache.in_use(loose) and not list(root.rglob(".*.lock"))  # the last holder out deletes the lock file
    done = cache.prune([res])
    assert [str(e.path) for e in done.removed] == [loose] and not os.path.exists(loose)


def test_a_partial_extraction_is_listed_and_pruned_once_nobody_holds_it(bench, filled):
    res, root, _ = filled
    name = root / "pixels" / "0123456789abcdef" / "digits-train-all-L00000000-D00000000.h5"
    shard = name.with_name(name.name + ".parts") / "shard-0-of-1"
    shard.mkdir(parents=True)
    identity = {"backbone": "pixels", "dataset": "digits", "split": "train", "layers": ["pixels"], "limit": None}
    (shard / "progress.json").write_text(json.dumps({"meta": {"identity": identity, "n_rows": 10, "rows": [0, 10]},
                                                     "rows_done": 4}))
    (shard / "000.f32").write_bytes(bytes(4 * 64 * 4))
    (partial,) = [e for e in cache.entries() if e.state == "partial"]
    assert (partial.path, partial.rows, partial.of_rows, partial.split) == (name, 4, 10, "train")
    assert partial.size == 4 * 64 * 4 + (shard / "progress.json").stat().st_size
    holder = _hold("exclusive", name)  # an extraction under way
    try:
        assert bench("cache", "prune", "--results", res).code == 0 and shard.exists()
    finally:
        _release(holder)
    done = cache.prune([res])
    assert [e.path for e in done.removed if e.state == "partial"] == [name] and not shard.parent.exists()


def test_a_job_holds_its_activation_files_until_its_results_file_names_them(tmp_path, monkeypatch):
    import bench.job

    seen = {}
    write = bench.job.write_results

    def spy(path, run, records):
        seen.update({split: cache.in_use(info["activations"]) for split, info in run["splits"].items()})
        return write(path, run, records)

    monkeypatch.setattr(bench.job, "write_results", spy)
    api.run("pixels", "knn", "digits", limit=100, options={"k": "1"}, results=tmp_path / "res")
    assert seen == {"train": True, "val": True, "test": True}
    assert not any(cache.in_use(e.path) for e in cache.entries()) and not list((tmp_path / "cache").rglob(".*.lock"))


def test_prunes_beside_a_running_sweep_never_break_it_nor_remove_what_it_names(filled, tmp_path):
    res, _, loose = filled
    env = dict(os.environ, BENCH_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    run = subprocess.Popen([sys.executable, "-m", "bench", *KNN, "--seed", "1..3", "--results", res], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    removed = []
    while run.poll() is None:  # every file the sweep extracts appears while it runs, named by no results file yet
        removed += [str(e.path) for e in cache.prune([res]).removed]
        time.sleep(0.1)
    assert run.returncode == 0, run.stderr.read()
    assert removed == [loose]  # the one file nothing holds or names
    for f in res.glob("*.json"):
        for info in json.loads(f.read_text())["run"]["splits"].values():
            assert os.path.exists(info["activations"]), (f, info)
    cache.prune([res])
    assert len(cache.entries()) == 3 * 4  # four seeds, three splits each: all named, all kept


def test_bad_prune_input_is_one_line_and_removes_nothing(bench, filled, tmp_path):
    res, root, loose = filled
    (tmp_path / "empty").mkdir()
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "x.json").write_text('{"format": "igpt-bench/results", "run": {')
    (tmp_path / "a-file").write_text("")
    assert_user_error(bench("cache", "prune"), "--results")
    assert_user_error(bench("cache", "prune", "--results", tmp_path / "missing"), "does not exist")
    assert_user_error(bench("cache", "prune", "--results", tmp_path / "empty"), "no results files under")
    assert_user_error(bench("cache", "prune", "--results", res, "--results", tmp_path / "damaged"), "x.json")
    assert_user_error(bench("cache", "prune", "--results", res, "--cache", tmp_path / "a-file"), "--cache")
    assert len(cache.entries()) == 4 and os.path.exists(loose)
