"""`bench run --dry-run`: every job of a sweep listed as run, skip (a finished results file with its
identity is there) or refuse (a check fails, with why), through the same checks and identities as a
real run, and nothing written: no results folder, no cache file, no lock."""

import os

from bench import api
from bench.job import Job, Settings, prepare, run_job
from bench.sweep import dry_run, plan

KNN = ["-b", "pixels", "-d", "digits", "--limit", "100", "-o", "k=1,5"]


def _tree(root):
    """Every path under ``root`` (hidden ones too) with its size and modification time."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(folder, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def test_dry_run_lists_run_skip_and_refuse_and_writes_nothing(bench, tmp_path):
    res = tmp_path / "res"
    assert bench("-q", "run", *KNN, "-t", "knn", "--seed", "0", "--results", res).code == 0
    before = _tree(tmp_path)
    r = bench("run", *KNN, "-t", "knn", "-t", "bits-per-dim", "--seed", "0..1", "--results", res, "--dry-run")
    assert r.code == 2, r  # the real run would exit 2 for the refused jobs
    lines = r.out.splitlines()
    assert lines[0].startswith("skip    pixels · knn · digits · seed 0: ") and lines[0].endswith(".json")
    assert lines[1].startswith("run     pixels · knn · digits · seed 1: ")
    assert lines[2].startswith("refuse  pixels · bits-per-dim · digits · seed 0: task 'bits-per-dim' needs a "
                               "generative backbone")
    assert lines[3].startswith("refuse  pixels · bits-per-dim · digits · seed 1: ")
    assert lines[-1] == "dry run, nothing written: would run 1, skip 1 (done already), refuse 2"
    assert _tree(tmp_path) == before
    fresh = bench("run", *KNN, "-t", "knn", "--results", tmp_path / "new", "--dry-run")
    assert fresh.code == 0 and fresh.out.startswith("run "), fresh
    assert _tree(tmp_path) == before  # neither the results folder nor anything in the cache was made


def test_the_plan_names_the_files_the_run_then_writes(tmp_path):
    res = tmp_path / "res"
    kw = dict(limit=100, options={"k": "1,5", "l2_grid": "1e-2"}, results=res, seed=[0, 3])
    planned = api.run("pixels", ["knn", "linear-probe"], "digits", dry_run=True, **kw)
    assert list(planned.columns) == ["plan", "job", "seed", "path", "reason"]
    assert planned.plan.tolist() == ["run"] * 4 and planned.seed.tolist() == [0, 3, 0, 3]
    assert not res.exists() and not (tmp_path / "cache").exists()
    df = api.run("pixels", ["knn", "linear-probe"], "digits", **kw)
    assert sorted(df.file.unique()) == sorted(planned.path)
    again = api.run("pixels", ["knn", "linear-probe"], "digits", dry_run=True, **kw)
    assert again.plan.tolist() == ["skip"] * 4 and again.path.tolist() == planned.path.tolist()
    rerun = api.run("pixels", ["knn", "linear-probe"], "digits", dry_run=True, rerun=True, **kw)
    assert rerun.plan.tolist() == ["run"] * 4


def test_prepare_computes_the_identity_and_path_that_run_job_uses(tmp_path):
    settings = Settings(limit=100, results_dir=tmp_path / "res", log=None)
    job = Job("pixels", "digits", "knn", task_options={"k": "1"})
    prepared = prepare(job, settings)
    assert not (tmp_path / "res").exists() and not (tmp_path / "cache").exists()
    outcome = run_job(job, settings)
    assert outcome.path == prepared.out and outcome.records[0]["run"] == prepared.out.stem.rsplit("__", 1)[1]


def test_a_refusal_says_why_and_a_bug_exits_1(tmp_path, monkeypatch):
    sweep = plan(backbones="pixels", datasets="digits", tasks=["knn"], task_options=["k=500"],
                 settings=Settings(limit=100, results_dir=tmp_path / "res"))
    (only,) = dry_run(sweep)
    assert only.status == "refuse" and only.user_error and "at least 500 neighbours" in only.message

    def broken(job, settings):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("bench.job.prepare", broken)
    (only,) = dry_run(sweep)
    assert only.status == "refuse" and not only.user_error
    assert only.message == "internal error: ZeroDivisionError: a bug"
