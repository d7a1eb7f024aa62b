"""Studies: every checkpoint of a run, random vs trained weights, several backbones and tasks in one
command; results kept apart by what was measured, skipped when done, from the CLI and from Python."""

import json

import pandas as pd
import pytest

from bench import api
from bench.errors import BenchError
from tests.conftest import assert_user_error

PROBE = ("-o", "l2_grid=1e-3,1e-1")


def _files(folder):
    return sorted(p.name for p in folder.glob("*.json"))


def test_a_checkpoint_sweep_writes_one_file_per_checkpoint_and_task_and_reruns_skip(bench, tiny_run, tmp_path):
    res = tmp_path / "res"
    args = ("run", "-b", "igpt", "--weights", tiny_run / "checkpoints" / "*", "-t", "linear-probe",
            "-t", "bits-per-dim", "-d", "digits", "--limit", "150", "--results", res, *PROBE)
    r = bench(*args)
    assert r.code == 0, r
    names = _files(res)
    assert len(names) == 6, names
    for step in (4, 8, 12):
        assert sum(f"igpt@step{step}__digits__" in n for n in names) == 2, names
    steps = {json.loads((res / n).read_text())["records"][0]["step"] for n in names}
    assert steps == {4, 8, 12}

    md = bench("report", res, "--long", "--format", "md")
    assert md.code == 0, md
    rows = [line.split("|")[1:-1] for line in md.out.splitlines()[2:]]
    header = [c.strip() for c in md.out.splitlines()[0].split("|")[1:-1]]
    table = pd.DataFrame([[c.strip() for c in row] for row in rows], columns=header)
    assert "step" in table.columns and "weights" in table.columns
    # One row group per checkpoint: the rows of a step are contiguous, steps in order.
    runs = table[["step", "task"]].drop_duplicates()
    assert list(runs.step) == ["4", "4", "8", "8", "12", "12"]

    again = bench(*args)
    assert again.code == 0, again
    assert again.err.count("skipped (done already") == 6 and "extracted" not in again.err
    assert _files(res) == names


def test_the_same_sweep_from_python_returns_records_and_skips_what_is_done(tiny_run, tmp_path):
    res = tmp_path / "res"
    weights = str(tiny_run / "checkpoints" / "*")
    df = api.run("igpt", ["linear-probe", "bits-per-dim"], "digits", weights=weights, limit=150, results=res,
                 options={"l2_grid": [1e-3, 1e-1]})
    assert isinstance(df, pd.DataFrame)
    assert sorted(df.step.dropna().unique()) == [4, 8, 12]
    assert df.run.nunique() == 6 and len(_files(res)) == 6
    bpd = df[df.metric == "bits_per_dim"].sort_values("step")
    assert len(bpd) == 3 and (bpd.value > 0).all()
    notes = []
    again = api.run("igpt", ["linear-probe", "bits-per-dim"], "digits", weights=weights, limit=150, results=res,
                    options=["l2_grid=1e-3,1e-1"], log=notes.append)
    assert sum(n.startswith("skipped") for n in notes) == 6 and not any("extracted" in n for n in notes)
    pd.testing.assert_frame_equal(df.drop(columns="file").reset_index(drop=True),
                                  again.drop(columns="file").reset_index(drop=True))
    table = api.report(res, best=True)
    best = table[table.best & (table.metric == "top1") & (table.split == "val")]
    assert len(best) == 3 and set(best.step) == {4, 8, 12}  # one best layer per checkpoint, never pooled


def test_random_and_file_weights_of_one_timm_model_land_in_two_files(bench, tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(5)
    state = timm.create_model("resnet18", in_chans=1).state_dict()
    weights = tmp_path / "r18-seed5.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, weights)
    common = ("run", "-b", "resnet18", "-t", "linear-probe", "-d", "digits", "--limit", "100", "--layers", "layer1",
              "--image-size", "32", "--results", tmp_path / "res", *PROBE)
    assert bench(*common).code == 0
    assert bench(*common, "--weights", weights).code == 0
    names = _files(tmp_path / "res")
    assert len(names) == 2, names
    assert any(n.startswith("resnet18@r18-seed5__digits__linear-probe__") for n in names)
    prints = {json.loads((tmp_path / "res" / n).read_text())["records"][0]["fingerprint"] for n in names}
    assert len(prints) == 2
    # Runs that differ only in their layers, seed or tag are apart as well.
    assert bench(*common[:-4], "--layers", "layer1,layer2", "--results", tmp_path / "res", *PROBE).code == 0
    assert bench(*common, "--tag", "again").code == 0
    names = _files(tmp_path / "res")
    assert len(names) == 4 and any("__again__" in n for n in names)


def test_compare_takes_several_runs_and_drops_none(bench, tmp_path):
    res = tmp_path / "res"
    for seed in ("0", "1"):
        r = bench("-q", "run", "-b", "resnet18", "-b", "pixels", "-t", "linear-probe", "-d", "digits", "--limit", "100",
                  "--seed", seed, "--results", res, *PROBE)
        assert r.code == 0, r
    files = sorted(res.glob("*.json"))
    assert len(files) == 4
    cmp = api.compare(*files)
    value_columns = [c for c in cmp.columns if c not in ("dataset", "task", "layer", "split", "metric")
                     and not c.startswith(("Δ", "±"))]
    assert value_columns == ["pixels (n=2)", "resnet18 (n=2)"]  # each run's two seeds pooled, none dropped
    chosen = cmp[cmp.metric == "layer chosen"]
    assert len(chosen) == 1 and chosen[value_columns].notna().all(axis=None)
    r = bench("compare", res, "--format", "csv")
    assert r.code == 0 and "resnet18 (n=2)" in r.out, r


def test_a_failed_job_is_reported_and_the_sweep_goes_on(bench, tmp_path):
    """pixels cannot score bits/dim: that job fails, the linear probe still runs, exit code 2."""
    r = bench("-q", "run", "-b", "pixels", "-t", "bits-per-dim", "-t", "linear-probe", "-d", "digits", "--limit", "100",
              "--results", tmp_path / "res", *PROBE)
    assert r.code == 2, r
    assert "failed: pixels · bits-per-dim · digits" in r.err and "1 of 2 runs failed" in r.err
    assert len(_files(tmp_path / "res")) == 1
    with pytest.raises(BenchError, match="1 of 2 jobs failed"):
        api.run("pixels", ["bits-per-dim", "linear-probe"], "digits", limit=100, results=tmp_path / "res2",
                options={"l2_grid": "1e-3"})


@pytest.mark.parametrize("args, fragments", [
    (("-b", "igpt", "--weights", "no/such/checkpoints/*"), ["matches nothing", "no/such/checkpoints/*"]),
    (("-b", "pixels", "-b", "resnet81"), ["unknown backbone 'resnet81'", "resnet18"]),
    (("-b", "pixels", "-t", "bits-per-dim", "-t", "linear-prob"), ["unknown task 'linear-prob'", "linear-probe"]),
    (("-b", "pixels", "-d", "digits", "-d", "fashion-mnst"), ["unknown dataset 'fashion-mnst'"]),
    (("-b", "pixels", "--tag", "a/b"), ["--tag 'a/b'", "path"]),
    (("-b", "pixels", "--tag", "two words"), ["--tag"]),
    (("-b", "pixels", "-t", "bits-per-dim", "-t", "linear-probe", "-o", "nope=1"), ["no task of this run has an option 'nope'"]),
    (("-b", "pixels", "-o", "max_itr=3"), ["did you mean", "max_iter"]),
])
def test_bad_sweep_input_is_reported_before_any_work(bench, tmp_path, args, fragments):
    full = ["run", *args]
    if "-t" not in args:
        full += ["-t", "linear-probe"]
    if "-d" not in args:
        full += ["-d", "digits"]
    r = bench(*full, "--results", tmp_path / "res")
    assert_user_error(r, *fragments)
    assert not (tmp_path / "res").exists() and not (tmp_path / "cache").exists()


def test_global_flags_work_after_the_subcommand_and_bare_bench_is_help(bench, tmp_path):
    r = bench("run", "-b", "pixels", "-t", "linear-probe", "-d", "digits", "--limit", "100", "--results", tmp_path,
              *PROBE, "--quiet")
    assert r.code == 0 and r.err == "", r
    with pytest.raises(BenchError, match="unknown backbone"):
        bench("run", "-b", "nope", "-t", "linear-probe", "-d", "digits", "--debug")
    r = bench()
    assert r.code == 0 and r.out.startswith("Usage: bench") and "error:" not in r.out + r.err


def test_weights_given_twice_run_once_and_the_log_says_so(tmp_path):
    from bench.sweep import expand_weights

    (tmp_path / "ckpt").mkdir()
    for step in (10, 2):
        (tmp_path / "ckpt" / f"step-{step}").mkdir()
    said = []
    got = expand_weights([tmp_path / "ckpt" / "step-2", str(tmp_path / "ckpt" / "*")], said.append)
    assert got == [str(tmp_path / "ckpt" / "step-2"), str(tmp_path / "ckpt" / "step-10")]
    assert len(said) == 1 and "step-2 given more than once: run once" in said[0]
    assert expand_weights([tmp_path / "ckpt" / "step-2"], said.append) and len(said) == 1
