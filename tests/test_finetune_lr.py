"""A fair fine-tuning protocol: ``-o lr=`` takes a list, every rate trains from the same start on the
same data, the rate with the best val top-1 is chosen (a tie: the smaller) and only it is scored on
test; a single rate is what it always was (same run id). Fine-tuning folders cannot be mixed: one
writer at a time, and a resume refuses checkpoints or finished rates saved with other settings."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bench.errors import BenchError
from bench.lock import exclusive
from bench.records import read_results
from tests.conftest import assert_user_error

# The run id of this command before rate lists existed: a single rate must keep it.
SINGLE = ["run", "-b", "resnet18", "-t", "finetune", "-d", "digits", "--limit", "200", "-o", "epochs=1"]
SINGLE_RUN_ID = "b73793857a13"

# igpt-tiny with the joint loss, two rates: the folder a killed run leaves behind (see ``killed``).
LIST_OPTIONS = {"epochs": 2, "batch_size": 16, "lr": [1e-3, 3e-3]}
LIST_CLI = ["run", "-b", "igpt-tiny", "-t", "finetune", "-d", "digits", "--limit", "100", "--device", "cpu",
            "-o", "epochs=2", "-o", "batch_size=16", "-o", "lr=1e-3,3e-3"]


def _records(results: Path) -> list[dict]:
    (path,) = Path(results).glob("*.json")
    return read_results(path)


def _run_folder(results: Path) -> Path:
    (folder,) = [p for p in Path(results).iterdir() if p.is_dir()]
    return folder


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _numbers(records: list[dict]) -> list[tuple]:
    return [(r["split"], r["metric"], r.get("epoch"), r.get("lr"), r.get("best_epoch"), r["value"]) for r in records]


# -- parsing and identity ---------------------------------------------------------------------------

def test_a_single_rate_parses_to_a_float_and_a_list_to_its_distinct_rates_ascending():
    from tasks.finetune import Finetune, show_rates

    task = Finetune()
    assert task.parse_options([])["lr"] == 1e-3 and isinstance(task.parse_options([])["lr"], float)
    single = task.parse_options(["lr=3e-4"])["lr"]
    assert single == 3e-4 and isinstance(single, float)
    assert task.parse_options(["lr=1e-3, 1e-4,3e-4,1e-4"])["lr"] == [1e-4, 3e-4, 1e-3]
    assert task.parse_options(["lr=1e-3,0.001"])["lr"] == 1e-3  # one distinct rate is that rate
    assert task.parse_options({"lr": [1e-3, 1e-4]})["lr"] == [1e-4, 1e-3]  # from Python, parsed values
    assert task.parse_options({"lr": 1e-3}) == task.parse_options([])
    for value in (1e-3, [1e-4, 3e-4, 1e-3]):
        assert task.parse_options([f"lr={show_rates(value)}"])["lr"] == value


def test_a_single_rate_keeps_the_run_id_it_had_before_rate_lists(bench, tmp_path):
    import bench.api as api

    for extra in ([], ["-o", "lr=1e-3"], ["-o", "lr=0.001,1e-3"]):
        r = bench(*SINGLE, *extra, "--dry-run", "--results", tmp_path / "res")
        assert r.code == 0, r
        assert f"__{SINGLE_RUN_ID}.json" in r.out, r.out
    listed = bench(*SINGLE, "-o", "lr=1e-4,1e-3", "--dry-run", "--results", tmp_path / "res")
    assert listed.code == 0 and "finetune__" in listed.out and SINGLE_RUN_ID not in listed.out, listed
    plan = api.run("resnet18", "finetune", "digits", limit=200, options={"epochs": 1, "lr": 1e-3}, dry_run=True,
                   results=tmp_path / "res")
    assert plan.path[0].endswith(f"__{SINGLE_RUN_ID}.json")
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize("value, fragment", [
    ("0,1e-3", "0: must lie in (0, 1]"), ("1e-3,-1e-4", "-1e-4: must lie in (0, 1]"),
    ("1e-3,inf", "inf: must lie in (0, 1]"), ("nan,1e-3", "nan: must lie in (0, 1]"),
    ("1e-3,2", "2: must lie in (0, 1]"), ("1e-3,fast", "fast"), ("", "no rate given"),
    (",", "an empty entry"), ("1e-3,,3e-4", "an empty entry"),
])
def test_a_bad_rate_list_is_one_line_before_any_work(bench, tmp_path, value, fragment):
    r = bench("run", "-b", "igpt-tiny", "-t", "finetune", "-d", "digits", "-o", f"lr={value}",
              "--results", tmp_path / "results")
    assert_user_error(r, "lr=", fragment)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("lr", [[1e-3, 0.0], [1e-3, float("nan")], [1e-3, -1.0], []])
def test_a_bad_rate_list_through_the_api_is_the_same_error(tmp_path, lr):
    import bench.api as api

    with pytest.raises(BenchError, match="lr="):
        api.run("igpt-tiny", "finetune", "digits", options={"lr": lr}, results=tmp_path / "results")
    assert not (tmp_path / "results").exists()


# -- the choice -------------------------------------------------------------------------------------

@pytest.mark.parametrize("val_scores, chosen, epoch", [
    # correct of 100 after each epoch, per rate
    ({1e-4: [40, 50], 3e-4: [60, 55], 1e-3: [58, 59]}, 3e-4, 1),
    ({1e-4: [50, 60], 1e-3: [60, 55]}, 1e-4, 2),  # a tie: the smaller rate
])
def test_the_rate_with_the_best_val_is_chosen_and_only_its_weights_see_test_once(tmp_path, monkeypatch, val_scores,
                                                                                 chosen, epoch):
    from backbones.base import BackboneOptions, DataSpec, create_backbone
    from bench.datasets import load_split
    from tasks import finetune
    from tasks.base import RunContext

    calls = {rate: 0 for rate in val_scores}
    heads, tested = {}, []

    def fake_evaluate(self, split):
        head = self.net.head.weight.detach().clone()
        if split == "test":
            tested.append(head)
            return 33, 100
        if calls[self.rate] == len(val_scores[self.rate]):  # the chosen weights' val classes, after training
            return 0, 100
        calls[self.rate] += 1
        heads[self.rate, calls[self.rate]] = head
        return val_scores[self.rate][calls[self.rate] - 1], 100

    monkeypatch.setattr(finetune.Finetuning, "_evaluate", fake_evaluate)
    data = {s: load_split("digits", s, limit=100) for s in ("train", "val", "test")}
    model = create_backbone("igpt-tiny", DataSpec.of(data["train"].images), BackboneOptions())
    task = finetune.Finetune()
    ctx = RunContext(backbone=model, layers=["final"], data=data, artifacts=tmp_path / "run", quiet=True,
                     options=task.parse_options({"epochs": 2, "batch_size": 32, "lr": list(val_scores)}))
    records = task.run(ctx)

    final = {(r["split"], r["metric"]): r["value"] for r in records if not r.get("curve")}
    assert final == {("val", "top1"): max(max(v) for v in val_scores.values()), ("test", "top1"): 33.0,
                     ("val", "epoch"): epoch, ("val", "lr"): chosen}
    assert len(tested) == 1 and torch.equal(tested[0], heads[chosen, epoch])  # test saw the chosen weights, once
    per_rate = {r["lr"]: (r["value"], r["best_epoch"]) for r in records
                if r.get("curve") and "best_epoch" in r}
    assert per_rate == {rate: (max(v), 1 + v.index(max(v))) for rate, v in val_scores.items()}
    for rate, scores in val_scores.items():  # every rate's curves, told apart by lr; the joint loss kept
        curve = [r for r in records if r.get("curve") and r.get("lr") == rate and "epoch" in r]
        assert [r["value"] for r in curve if r["split"] == "val"] == scores
        assert {r["metric"] for r in curve if r["split"] == "train"} == {"loss", "clf_loss", "gen_loss"}
    folder = tmp_path / "run"
    assert sorted(p.name for p in folder.iterdir()) == ["finetune.json", "finetuned", "head.safetensors",
                                                        "settings.json"]  # the per-rate folders are gone
    summary = json.loads((folder / "finetune.json").read_text())
    assert summary["lr"] == chosen and [r["lr"] for r in summary["rates"]] == sorted(val_scores)
    assert torch.equal(load_file(str(folder / "head.safetensors"))["weight"], heads[chosen, epoch])


def test_a_rate_list_on_digits_trains_each_rate_as_its_single_rate_run_would(bench, tmp_path):
    """resnet18 (batch norm) through the CLI, then the chosen rate alone through the API: its curves,
    numbers, predictions and weights are the list's. Which rate wins one epoch on 200 images is a
    near tie that differs across CPUs, so the test follows val's choice rather than naming it."""
    import bench.api as api
    from bench.paired import read_predictions
    from bench.plots import learning_curves

    listed = bench("-q", *SINGLE, "-o", "lr=1e-6,3e-3", "--results", tmp_path / "list")
    assert listed.code == 0, listed
    assert "chosen lr" in listed.out
    records = _records(tmp_path / "list")
    per_rate = {r["lr"]: r["value"] for r in records if r.get("curve") and "best_epoch" in r}
    assert set(per_rate) == {1e-6, 3e-3}
    final = {(r["split"], r["metric"]): r["value"] for r in records if not r.get("curve")}
    best = max(per_rate.values())
    assert final["val", "lr"] == min(rate for rate, v in per_rate.items() if v == best)
    assert final["val", "top1"] == best
    chosen = final["val", "lr"]

    api.run("resnet18", "finetune", "digits", limit=200, options={"epochs": 1, "lr": chosen}, device="cpu",
            results=tmp_path / "single")
    single = _records(tmp_path / "single")
    assert [(s, m, e, v) for s, m, e, lr, _, v in _numbers(records) if lr == chosen and e is not None] == \
        [(s, m, e, v) for s, m, e, _, _, v in _numbers([r for r in single if r.get("curve")])]
    assert {k: v for k, v in final.items() if k != ("val", "lr")} == \
        {(r["split"], r["metric"]): r["value"] for r in single if not r.get("curve")}
    (a, _), (b, _) = (read_predictions(next(Path(tmp_path / d).glob("*.json"))) for d in ("list", "single"))
    for split in ("val", "test"):  # the predictions kept for paired statistics are the chosen rate's
        assert np.array_equal(a[split].predicted["layer4"], b[split].predicted["layer4"])
    weights = [load_file(str(_run_folder(tmp_path / d) / "finetuned.safetensors")) for d in ("list", "single")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])

    fig = learning_curves(api.report(tmp_path / "list"))  # a line per rate
    assert sorted(line.get_label() for line in fig.axes[1].lines) == ["resnet18 lr=0.003", "resnet18 lr=1e-06"]


# -- resume, settings and one writer ---------------------------------------------------------------

class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A results folder whose rate list was stopped after its first rate finished and the second
    had saved epoch 1 of 2 (the files a SIGKILL leaves: each is written whole or not at all)."""
    import bench.api as api
    import tasks.finetune

    root = tmp_path_factory.mktemp("killed")
    save = tasks.finetune.save_epoch

    def save_then_die(folder, state, net, best_state, opt, settings):
        save(folder, state, net, best_state, opt, settings)
        if settings["lr"] == 3e-3:
            raise Killed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tasks.finetune, "save_epoch", save_then_die)
        with pytest.raises(Killed):
            api.run("igpt-tiny", "finetune", "digits", limit=100, options=LIST_OPTIONS, device="cpu",
                    results=root / "results", cache=root / "cache")
    folder = _run_folder(root / "results")
    assert (folder / "lr-0.001" / "rate.json").is_file() and (folder / "lr-0.001" / "best.safetensors").is_file()
    assert [p.name for p in (folder / "lr-0.003").iterdir()] == ["epoch-0001"]
    assert not list((root / "results").glob("*.json"))
    return root / "results"


def test_a_killed_rate_list_resumes_each_rate_to_the_numbers_of_an_uninterrupted_run(killed, tmp_path):
    import bench.api as api

    results = tmp_path / "results"
    shutil.copytree(killed, results)
    notes = []
    api.run("igpt-tiny", "finetune", "digits", limit=100, options=LIST_OPTIONS, device="cpu", results=results,
            log=notes.append)
    assert any("lr 0.001: finished before" in n for n in notes), notes
    assert any(n.startswith("resuming") and "lr-0.003" in n for n in notes), notes
    api.run("igpt-tiny", "finetune", "digits", limit=100, options=LIST_OPTIONS, device="cpu",
            results=tmp_path / "clean")
    assert _numbers(_records(results)) == _numbers(_records(tmp_path / "clean"))
    for name in ("finetuned/model.safetensors", "head.safetensors"):
        a, b = (load_file(str(_run_folder(d) / name)) for d in (results, tmp_path / "clean"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert not list(_run_folder(results).glob("lr-*"))


@pytest.mark.parametrize("part, edit, fragment", [
    ("lr-0.003/epoch-0001/settings.json", {"device": "cuda"}, "other settings (device)"),
    ("lr-0.001/rate.json", {"precision": "bf16"}, "other settings (precision)"),
    ("lr-0.001/rate.json", {"lr": 3e-3}, "other settings (lr)"),
    ("lr-0.003/epoch-0001/settings.json", None, "holds no settings"),
])
def test_a_resume_refuses_checkpoints_and_finished_rates_saved_with_other_settings(bench, killed, tmp_path, part,
                                                                                   edit, fragment):
    results = tmp_path / "results"
    shutil.copytree(killed, results)
    folder = _run_folder(results)
    (folder / "settings.json").unlink()  # the folder's own settings gone: every part must speak for itself
    path = folder / part
    if edit is None:
        path.unlink()
    else:
        doc = json.loads(path.read_text())
        settings = doc["settings"] if path.name == "rate.json" else doc
        settings.update(edit)
        path.write_text(json.dumps(doc))
    before = _tree(results)
    r = bench("-q", *LIST_CLI, "--results", results)
    assert_user_error(r, str(path.parent), fragment)
    assert _tree(results) == before


def test_a_fine_tune_folder_in_use_is_refused_naming_the_holder(tmp_path):
    from backbones.base import BackboneOptions, DataSpec, create_backbone
    from bench.datasets import load_split
    from tasks.base import RunContext
    from tasks.finetune import Finetune

    data = {s: load_split("digits", s, limit=100) for s in ("train", "val", "test")}
    model = create_backbone("igpt-tiny", DataSpec.of(data["train"].images), BackboneOptions())
    task = Finetune()
    folder = tmp_path / "run"
    ctx = RunContext(backbone=model, layers=["final"], data=data, artifacts=folder, quiet=True,
                     options=task.parse_options({"epochs": 1}))
    with exclusive(folder, "fine-tuning into"):  # another process's fine-tune, as the lock sees it
        with pytest.raises(BenchError, match=f"{folder} is being fine-tuned by pid {os.getpid()}"):
            task.run(ctx)
    assert not folder.exists()


def test_two_identical_fine_tunes_at_once_train_once_and_both_succeed(tmp_path):
    args = [*LIST_CLI[:-6], "-o", "epochs=1", "-o", "lr=1e-3,3e-3", "--results", "res"]
    env = dict(os.environ, BENCH_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-m", "bench", *args], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    logs = " ".join(err for _, err in outs)
    assert logs.count("chose lr") == 1 and "skipped" in logs, logs  # the job lock: one trains, one reuses
    records = _records(tmp_path / "res")
    assert len([r for r in records if r.get("curve") and r["metric"] == "loss"]) == 2  # an epoch per rate, once
    summary = json.loads((_run_folder(tmp_path / "res") / "finetune.json").read_text())
    assert [len(r["history"]) for r in summary["rates"]] == [1, 1]
