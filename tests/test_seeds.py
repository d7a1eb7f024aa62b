"""Seeds as a sweep axis: `--seed` repeats and takes ranges, one results file per seed, a single
seed keeps the identity it always had, studies run once per seed, and a sweep that fails the same
way in every job says it once."""

import json

import numpy as np
import pytest

from bench import api
from bench.errors import BenchError
from bench.job import Settings
from bench.sweep import dry_run, plan, seed_list
from tests.conftest import assert_user_error

KNN = ["-b", "pixels", "-t", "knn", "-d", "digits", "--limit", "100", "-o", "k=1,5"]
# The run ids of these two runs as the harness wrote them before seeds were an axis.
IDS_BEFORE = {0: "47dc7996a330", 1: "b81a55f74578"}


def _seeds_of(folder):
    return sorted(json.loads(f.read_text())["run"]["seed"] for f in folder.glob("*.json"))


def test_seed_list_takes_ints_inclusive_ranges_python_ranges_and_lists_each_once():
    assert seed_list(None) == [0]
    assert seed_list(3) == [3]
    assert seed_list("0..4") == [0, 1, 2, 3, 4]  # both ends, as the shell's {0..4}
    assert seed_list(["7", " 2..3 "]) == [7, 2, 3]
    assert seed_list(range(3)) == [0, 1, 2]
    assert seed_list([3, "1..3", range(5, 7), np.int64(3)]) == [3, 1, 2, 5, 6]
    assert seed_list("4294967295") == [2**32 - 1]


@pytest.mark.parametrize("value, fragment", [
    ("4..0", "empty range"), ("a..b", "not a seed"), ("-1", "not a seed"), ("1.5", "not a seed"),
    ("4294967296", "past the largest seed"), ("0..4294967296", "past the largest seed"),
    ("0..99999", "at most 1000"), (-1, "not a seed"), (True, "not a seed"), (1.0, "not a seed"),
    ([], "at least one seed"), (range(10**9), "at most 1000"),
])
def test_bad_seeds_are_refused_with_what_to_write(value, fragment):
    with pytest.raises(BenchError, match=fragment):
        seed_list(value)


@pytest.mark.parametrize("value, fragment", [
    ("4..0", "empty range"), ("a..b", "'a..b' is not a seed"), ("-1", "'-1' is not a seed"),
    ("4294967296", "past the largest seed"), ("0..5000", "at most 1000"),
])
def test_bad_seeds_on_the_command_line_are_one_line_before_any_work(bench, tmp_path, value, fragment):
    r = bench("run", *KNN, "--seed", "0", "--seed", value, "--results", tmp_path / "res")
    assert_user_error(r, "--seed", fragment)
    assert not (tmp_path / "res").exists() and not (tmp_path / "cache").exists()


def test_repeated_and_ranged_seeds_run_every_seed_into_its_own_results_file(bench, tmp_path):
    res = tmp_path / "res"
    r = bench("run", *KNN, "--seed", "2", "--seed", "0..1", "--seed", "1", "--results", res)
    assert r.code == 0, r
    assert _seeds_of(res) == [0, 1, 2]
    assert all(f"· seed {s}" in r.out for s in (0, 1, 2))  # each table says its seed
    names = sorted(f.name for f in res.glob("*.json"))
    assert len(set(names)) == 3 and {n.rsplit("__", 1)[1][:12] for n in names} >= set(IDS_BEFORE.values())
    again = bench("-q", "run", *KNN, "--seed", "0..2", "--results", res)  # every seed done already
    assert again.code == 0 and again.out.count("skipped: done already") == 3, again


def test_a_single_seed_keeps_the_result_identity_it_had_before_seeds_were_an_axis(bench, tmp_path):
    for seed, run_id in IDS_BEFORE.items():
        planned = api.run("pixels", "knn", "digits", limit=100, options={"k": "1,5"}, seed=seed,
                          results=tmp_path / "res", dry_run=True)
        assert planned.path.tolist() == [str(tmp_path / "res" / f"pixels__digits__knn__{run_id}.json")]
    r = bench("run", *KNN, "--seed", "1", "--results", tmp_path / "res", "--dry-run")
    assert r.code == 0 and IDS_BEFORE[1] in r.out and IDS_BEFORE[0] not in r.out, r


def test_api_run_takes_a_list_a_range_or_text_and_returns_every_seeds_records(tmp_path):
    forms = [[0, 1], range(2), "0..1", ("0", 1)]
    paths = {tuple(api.run("pixels", "knn", "digits", limit=100, options={"k": "1,5"}, seed=form,
                           results=tmp_path / "res", dry_run=True).path) for form in forms}
    assert len(paths) == 1 and len(next(iter(paths))) == 2
    df = api.run("pixels", "knn", "digits", limit=100, options={"k": "1,5"}, seed=range(2), results=tmp_path / "res")
    assert sorted(df.seed.unique()) == [0, 1] and df.run.nunique() == 2
    assert _seeds_of(tmp_path / "res") == [0, 1]
    with pytest.raises(BenchError, match="empty range"):
        api.run("pixels", "knn", "digits", seed="3..1", results=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_the_seed_is_the_jobs_own_in_every_component_and_study(tiny_run):
    """backbones x weights x datasets x tasks x seeds; a study runs once per seed, its members
    carrying that seed, and members it shares with the sweep's own jobs are those jobs."""
    sweep = plan(backbones="igpt", datasets="digits", tasks=["bits-per-dim", "correlation"],
                 weights=[str(tiny_run / "checkpoints" / "*")], seeds="0..1", settings=Settings(limit=100))
    assert [job.seed for job in sweep.jobs[:6]] == [0, 1] * 3  # seeds innermost
    assert [study.seed for study in sweep.studies] == [0, 1]
    for study in sweep.studies:
        members = [job for jobs in study.points for job in jobs]
        assert {job.seed for job in members} == {study.seed}
        assert all(any(job is own for own in sweep.jobs) for job in members)
        assert f"seed {study.seed}" in study.describe()
    planned = {id(p.job): p for p in dry_run(sweep)}
    studies = [planned[id(study)] for study in sweep.studies]
    assert [p.status for p in studies] == ["run", "run"] and studies[0].path != studies[1].path
    assert all(p.path.name.startswith("study__digits__correlation__") for p in studies)


def test_a_sweep_failing_the_same_way_in_every_job_says_it_once_with_the_count(bench, tmp_path):
    r = bench("run", "-b", "pixels", "-t", "bits-per-dim", "-d", "digits", "--limit", "100", "--seed", "0..2",
              "--results", tmp_path / "res")
    assert r.code == 2, r
    failed = [line for line in r.err.splitlines() if line.startswith("failed")]
    assert len(failed) == 1 and failed[0].startswith("failed (3 of 3 jobs): task 'bits-per-dim' needs a generative"), r
    assert "3 of 3 runs failed" in r.err


def test_a_failure_shared_by_some_jobs_names_them_and_the_api_says_it_once(bench, tmp_path):
    r = bench("-q", "run", "-b", "pixels", "-t", "bits-per-dim", "-t", "knn", "-d", "digits", "--limit", "100",
              "-o", "k=1", "--seed", "0..1", "--results", tmp_path / "res")
    assert r.code == 2, r
    (line,) = [line for line in r.err.splitlines() if line.startswith("failed")]
    assert line.startswith("failed (2 of 4 jobs): task 'bits-per-dim'"), line
    assert "(in: pixels · bits-per-dim · digits · seed 0; pixels · bits-per-dim · digits · seed 1)" in line
    assert "2 of 4 runs failed" in r.err and len(list((tmp_path / "res").glob("*.json"))) == 2
    with pytest.raises(BenchError) as e:
        api.run("pixels", "bits-per-dim", "digits", limit=100, seed=[0, 1], results=tmp_path / "res2")
    assert str(e.value).startswith("2 of 2 jobs failed: task 'bits-per-dim' needs a generative")
    assert str(e.value).count("needs a generative backbone") == 1
