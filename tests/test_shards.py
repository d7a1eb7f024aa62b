"""Scale-out of sweeps: `bench run --shard K/N` runs a deterministic share of a sweep's jobs, so N
processes over one results folder and cache run it between them, with the same results files as one
process; `--submit` hands the jobs to a scheduler through submitit (its local executor here) and
writes the same files as a plain run."""

import itertools
import json
import shutil
import sys
from pathlib import Path

import pytest

from bench import api
from bench.errors import BenchError
from bench.job import Settings
from bench.sweep import parse_shard, plan, shard, unit_key
from tests.conftest import assert_user_error

SWEEP = ["-b", "pixels", "-t", "knn", "-t", "linear-probe", "-d", "digits", "--limit", "100", "--seed", "0..1"]
API_SWEEP = dict(backbone="pixels", task=["knn", "linear-probe"], dataset="digits", limit=100, seed="0..1")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The sweep's results folder as one process writes it."""
    base = tmp_path_factory.mktemp("full")
    api.run(**API_SWEEP, results=base / "res", cache=base / "cache")
    return base / "res"


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.json")}


def _without_times(value):
    """A results file as it would be written again: no clock times or durations, and of its
    activation files only the name (the cache folders differ; whether a file was extracted or
    reused depends on which process came first)."""
    if isinstance(value, dict):
        return {k: Path(v).name if k == "activations" else _without_times(v) for k, v in value.items()
                if k not in ("time", "seconds", "cache")}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def assert_same_results(folder: Path, reference: Path, names=None):
    names = _files(folder) if names is None else names
    assert names, folder
    for name in names:
        got = json.loads((folder / name).read_text())
        want = json.loads((reference / name).read_text())
        assert [r["value"] for r in got["records"]] == [r["value"] for r in want["records"]], name
        assert _without_times(got) == _without_times(want), name


# -- sharding -------------------------------------------------------------------------------------

def test_two_shards_run_disjoint_halves_whose_union_is_the_unsharded_sweeps_results(bench, tmp_path, full):
    res = tmp_path / "res"
    r = bench("run", *SWEEP, "--results", res, "--shard", "0/2")
    assert r.code == 0 and "shard 0/2: 2 of the sweep's 4 jobs" in r.err, r
    first = _files(res)
    r = bench("run", *SWEEP, "--results", res, "--shard", "1/2")
    assert r.code == 0 and "skipped" not in r.out, r
    second = _files(res) - first
    assert len(first) == len(second) == 2
    assert first | second == _files(full)
    assert_same_results(res, full)
    r = bench("run", *SWEEP, "--results", res)  # the whole sweep is done: nothing is run again
    assert r.code == 0 and r.out.count("skipped: done already") == 4, r


def test_the_api_takes_a_shard_as_text_or_a_pair_and_returns_only_its_share(tmp_path, full):
    res = tmp_path / "res"
    planned = [api.run(**API_SWEEP, results=res, shard=share, dry_run=True) for share in ("0/2", (1, 2))]
    assert [len(p) for p in planned] == [2, 2] and not res.exists()
    first = api.run(**API_SWEEP, results=res, shard=(0, 2))
    second = api.run(**API_SWEEP, results=res, shard="1/2")
    assert sorted(first.file.unique()) == sorted(planned[0].path)
    assert sorted(second.file.unique()) == sorted(planned[1].path)
    assert not set(first.file) & set(second.file)
    assert _files(res) == _files(full)
    assert_same_results(res, full)
    empty = api.run(**API_SWEEP, results=tmp_path / "other", shard=(7, 8))  # 4 jobs: shard 7 of 8 has none
    assert empty.empty and not (tmp_path / "other").exists()


def test_a_dry_run_with_a_shard_lists_only_its_share_and_the_shards_together_list_the_sweep(bench, tmp_path):
    whole = bench("run", *SWEEP, "--results", tmp_path / "res", "--dry-run")
    assert whole.code == 0, whole
    jobs = [line for line in whole.out.splitlines() if line.startswith("run ")]
    shares = []
    for k in range(3):
        r = bench("run", *SWEEP, "--results", tmp_path / "res", "--dry-run", "--shard", f"{k}/3")
        assert r.code == 0 and r.out.startswith(f"shard {k}/3: "), r
        shares.append([line for line in r.out.splitlines() if line.startswith("run ")])
    assert sorted(itertools.chain(*shares)) == sorted(jobs)
    assert sorted(len(s) for s in shares) == [1, 1, 2]
    assert not (tmp_path / "res").exists()


def _units(sweep):
    return [unit_key(u) for u in [*sweep.jobs, *sweep.studies]]


def test_shards_are_dealt_by_what_each_job_is_not_by_the_order_of_the_command_line():
    def planned(backbones, tasks, seeds):
        return plan(backbones=backbones, datasets=["digits"], tasks=tasks, seeds=seeds, settings=Settings())

    sweep = planned(["pixels", "resnet18"], ["knn", "linear-probe"], "0..2")
    keys = sorted(_units(sweep))
    assert len(keys) == len(set(keys)) == 12
    reordered = planned(["resnet18", "pixels"], ["linear-probe", "knn"], [2, 0, 1])
    for n in range(1, 6):
        shares = [_units(shard(sweep, (k, n))) for k in range(n)]
        assert [sorted(s) for s in shares] == [keys[k::n] for k in range(n)]  # the reference: every Nth by key
        assert sorted(itertools.chain(*shares)) == keys  # disjoint, and together the whole sweep
        assert [sorted(_units(shard(reordered, (k, n)))) for k in range(n)] == [sorted(s) for s in shares]
    assert shard(sweep, None) is sweep
    spelled = [plan(backbones=["pixels"], datasets=["digits"], tasks=["knn"], task_options=options, settings=Settings())
               for options in (["k=5,20"], {"k": [5, 20]}, [" k = 05,20"])]
    assert len({unit_key(s.jobs[0]) for s in spelled}) == 1  # however an option is spelled, one job


@pytest.mark.parametrize("value", ["0/0", "2/2", "-1/2", "a/b", "3", "1/2/3", "", (2, 2), (-1, 2), (0, 0), (1,), 3,
                                   True, (True, 2), (0.0, 2)])
def test_a_shard_that_is_not_k_of_n_is_refused_in_one_line(value, tmp_path):
    with pytest.raises(BenchError) as e:
        parse_shard(value)
    assert "\n" not in str(e.value) and ("shard" in str(e.value))
    with pytest.raises(BenchError):
        api.run(**API_SWEEP, results=tmp_path / "res", shard=value)
    assert not (tmp_path / "res").exists()


def test_a_shard_is_k_of_n_counting_from_zero():
    assert parse_shard("0/1") == (0, 1) and parse_shard(" 3 / 4 ") == (3, 4) and parse_shard((1, 2)) == (1, 2)
    assert parse_shard(None) is None


def test_the_shard_that_draws_a_study_computes_its_missing_components_then_the_others_find_them_done(
        bench, tmp_path, tiny_run):
    study = ["run", "-b", "igpt", "--weights", f"{tiny_run}/checkpoints/*", "-t", "correlation", "-d", "digits",
             "--limit", "100", "-o", "n=8", "-o", "extractor=pixels", "-o", "bootstrap=100",
             "--results", tmp_path / "res"]
    whole = bench(*study, "--dry-run")
    assert whole.code == 0, whole
    expected = {Path(line.rsplit(": ", 1)[1]).name for line in whole.out.splitlines() if line.startswith("run ")}
    assert len(expected) == 7  # 3 checkpoints x (sample-quality, linear-probe), and the study
    sweep = plan(backbones=["igpt"], weights=[f"{tiny_run}/checkpoints/*"], tasks=["correlation"],
                 datasets=["digits"], task_options=["n=8", "extractor=pixels", "bootstrap=100"], settings=Settings())
    (owner,) = [k for k in range(3) if shard(sweep, (k, 3)).studies]
    r = bench(*study, "--shard", f"{owner}/3")  # run first, alone: it does the other shards' components too
    assert r.code == 0, r
    assert "and 4 of other shards' that its studies need" in r.err, r
    assert _files(tmp_path / "res") == expected
    for k in set(range(3)) - {owner}:
        r = bench(*study, "--shard", f"{k}/3")
        assert r.code == 0 and r.out.count("skipped: done already") == 2, r


# -- submitting through submitit ------------------------------------------------------------------

def test_submit_local_writes_the_same_files_as_a_plain_run_and_reports_a_failed_job_as_a_sweep_does(
        bench, tmp_path, full):
    res = tmp_path / "res"
    r = bench("run", "-b", "pixels", "-t", "knn", "-t", "bits-per-dim", "-d", "digits", "--limit", "100",
              "--results", res, "--submit", "local", "-S", "slurm_partition=ignored-here")
    assert r.code == 2, r  # bits-per-dim on pixels is refused in its job, and the other goes on
    assert "failed: pixels · bits-per-dim · digits · seed 0: task 'bits-per-dim' needs a generative backbone" in r.err
    assert "1 of 2 runs failed (listed above); 1 succeeded" in r.err, r
    assert r.out.count("results: ") == 1 and "submitted 2 jobs to local" in r.err, r
    assert len(_files(res)) == 1 and _files(res) < _files(full)
    assert_same_results(res, full)
    assert list((res / ".submitit").iterdir())  # submitit's logs stay beside the results


def test_submit_through_the_api_runs_a_shard_of_the_sweep_elsewhere(tmp_path, full):
    df = api.run(**API_SWEEP, results=tmp_path / "res", shard=(3, 4), submit="local",
                 submit_options={"timeout_min": 30})
    assert df.file.nunique() == 1
    assert _files(tmp_path / "res") == {Path(f).name for f in df.file.unique()}
    assert_same_results(tmp_path / "res", full)


def test_submit_without_submitit_says_how_to_install_it(bench, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    r = bench("run", "-b", "pixels", "-t", "knn", "-d", "digits", "--results", tmp_path / "res", "--submit", "local")
    assert_user_error(r, "submitit", "pip install 'igpt-bench[cluster]'")
    assert not (tmp_path / "res").exists()
    with pytest.raises(BenchError, match=r"igpt-bench\[cluster\]"):
        api.run("pixels", "knn", "digits", results=tmp_path / "res", submit="local")


@pytest.mark.skipif(bool(shutil.which("srun")), reason="this machine has Slurm")
def test_submit_slurm_where_there_is_no_slurm_is_one_line_before_any_work(bench, tmp_path):
    r = bench("run", "-b", "pixels", "-t", "knn", "-d", "digits", "--results", tmp_path / "res", "--submit", "slurm")
    assert_user_error(r, "--submit slurm", "login node", "--submit local")
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("options, fragment", [
    ({"nonsense": 1}, "nonsense"), ({"timeout_min": "abc"}, "timeout_min"), (["timeout_min"], "KEY=VALUE"),
    ({"Bad Key": 1}, "parameter name"), (5, "submit_options")])
def test_submit_options_submitit_does_not_take_are_refused_before_any_work(tmp_path, options, fragment):
    with pytest.raises(BenchError, match=fragment):
        api.run("pixels", "knn", "digits", results=tmp_path / "res", submit="local", submit_options=options)
    with pytest.raises(BenchError, match="submit"):
        api.run("pixels", "knn", "digits", results=tmp_path / "res", submit="pbs")
    with pytest.raises(BenchError, match="submit"):
        api.run("pixels", "knn", "digits", results=tmp_path / "res", submit_options={"timeout_min": 5})
    assert not (tmp_path / "res").exists()
