"""Fine-tuning a whole backbone plus a linear head: records, reusable weights, resume after
SIGKILL, DDP under torchrun, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import assert_user_error

IGPT = ["run", "-b", "igpt-tiny", "-t", "finetune", "-d", "digits", "--limit", "300", "--device", "cpu",
        "-o", "epochs=3", "-o", "batch_size=32", "-o", "lr=3e-3"]


def _run_folder(results: Path) -> Path:
    (folder,) = [p for p in Path(results).iterdir() if p.is_dir()]
    return folder


def _records(results: Path) -> list[dict]:
    (path,) = Path(results).glob("*.json")
    return json.loads(path.read_text())["records"]


def _tree(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes: to prove nothing was touched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_finetune_igpt_on_digits_end_to_end_writes_records_the_report_renders_and_reusable_weights(bench, tmp_path):
    results = tmp_path / "results"
    r = bench("-q", *IGPT, "--results", results)
    assert r.code == 0, r
    assert "val top-1" in r.out and "test top-1" in r.out
    records = _records(results)
    final = [x for x in records if not x.get("curve")]
    curves = [x for x in records if x.get("curve")]
    by_key = {(x["split"], x["metric"]): x for x in final}
    assert set(by_key) == {("val", "top1"), ("test", "top1"), ("val", "epoch")}
    best = by_key["val", "epoch"]["value"]
    assert 1 <= best <= 3 and by_key["test", "top1"]["epoch"] == best and by_key["val", "top1"]["epoch"] == best
    assert all(x["layer"] == "final" and x["task"] == "finetune" for x in records)
    assert by_key["test", "top1"]["stderr"] > 0 and by_key["test", "top1"]["n"] == 300
    # Per-epoch curves: train loss (and its two parts under the joint loss) and val top-1.
    assert sorted({(x["split"], x["metric"]) for x in curves}) == [
        ("train", "clf_loss"), ("train", "gen_loss"), ("train", "loss"), ("val", "top1")]
    assert [x["epoch"] for x in curves if x["metric"] == "loss"] == [1, 2, 3]
    val_curve = {x["epoch"]: x["value"] for x in curves if x["split"] == "val"}
    assert val_curve[best] == by_key["val", "top1"]["value"] == max(val_curve.values())

    report = bench("report", results)
    assert report.code == 0, report
    assert "finetune" in report.out and "igpt-tiny" in report.out

    folder = _run_folder(results)
    assert sorted(p.name for p in folder.iterdir()) == ["finetune.json", "finetuned", "head.safetensors",
                                                        "settings.json"]
    summary = json.loads((folder / "finetune.json").read_text())
    assert summary["epoch"] == best and len(summary["history"]) == 3
    # The fine-tuned weights are an igpt checkpoint: extract and probe them again.
    probe = bench("-q", "run", "-b", "igpt", "--weights", folder / "finetuned", "-t", "linear-probe", "-d", "digits",
                  "--limit", "300", "--layers", "final", "--results", tmp_path / "probe")
    assert probe.code == 0, probe
    (probed,) = _records(tmp_path / "probe")[:1]
    assert (tmp_path / probed["weights"]).resolve() == (folder / "finetuned").resolve()  # as named, relative

    again = bench("-q", *IGPT, "--results", results)  # a finished run is skipped
    assert again.code == 0 and "skipped" in again.out


def test_finetune_timm_writes_weights_usable_as_weights_file(bench, tmp_path):
    results = tmp_path / "results"
    r = bench("-q", "run", "-b", "resnet18", "-t", "finetune", "-d", "digits", "--limit", "150", "--device", "cpu",
              "-o", "epochs=1", "-o", "batch_size=32", "--results", results)
    assert r.code == 0, r
    records = _records(results)
    assert {x["layer"] for x in records} == {"layer4"}
    assert not [x for x in records if x["metric"] in ("clf_loss", "gen_loss")]  # no generative loss on timm
    weights = _run_folder(results) / "finetuned.safetensors"
    state = load_file(str(weights))
    assert "layer4.1.conv2.weight" in state
    probe = bench("-q", "run", "-b", "resnet18", "--weights", weights, "--image-size", "32", "-t", "linear-probe",
                  "-d", "digits", "--limit", "150", "--layers", "layer4", "--results", tmp_path / "probe")
    assert probe.code == 0, probe
    fingerprints = {x["fingerprint"] for x in _records(results) + _records(tmp_path / "probe")}
    assert len(fingerprints) == 2  # the fine-tuned weights are another backbone than the random init


@pytest.mark.parametrize("backbone, layers, options", [
    # A random-init transformer learns 8x8 digits slowly; shifted crops of 8 pixels slow it further.
    ("igpt-tiny", ["final"], {"epochs": 6, "batch_size": 16, "lr": 3e-3, "augment": "off"}),
    ("resnet18", ["layer4"], {"epochs": 4, "batch_size": 32, "lr": 3e-3}),
])
def test_finetuning_lowers_the_training_loss_and_beats_chance(tmp_path, backbone, layers, options):
    from backbones.base import BackboneOptions, DataSpec, create_backbone
    from bench.datasets import load_split
    from tasks.base import RunContext
    from tasks.finetune import Finetune

    data = {s: load_split("digits", s, limit=400) for s in ("train", "val", "test")}
    model = create_backbone(backbone, DataSpec.of(data["train"].images), BackboneOptions())
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    task = Finetune()
    options = task.parse_options(options)
    ctx = RunContext(backbone=model, layers=layers, options=options, data=data, artifacts=tmp_path / "run",
                     quiet=True)
    records = task.run(ctx)
    curve = {m: [r["value"] for r in records if r.get("curve") and r["metric"] == m] for m in ("loss", "clf_loss")}
    assert len(curve["loss"]) == options["epochs"] and curve["loss"][-1] < curve["loss"][0]
    classification = curve["clf_loss"] or curve["loss"]  # iGPT's joint loss has a classification part
    assert classification[-1] < 0.8 * classification[0]
    test = next(r for r in records if r["split"] == "test" and r["metric"] == "top1")
    assert test["value"] > 30.0  # 10 classes: chance is 10%
    # The runner's backbone is left as it came (its fingerprint keyed the run); the trained weights are on disk.
    after = model.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_augmentation_pads_crops_and_flips_only_where_asked():
    from bench.batches import augment

    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1) + 1
    out = augment(images, np.random.default_rng(0), pad=1, flip=False)
    assert out.shape == images.shape and out.dtype == np.uint8
    for a, b in zip(images, out):  # a shifted copy: each row of b is a window of a padded row of a
        padded = np.pad(a[..., 0], 1)
        assert any(np.array_equal(b[..., 0], padded[y : y + 4, x : x + 4]) for y in range(3) for x in range(3))
    flipped = augment(images, np.random.default_rng(0), pad=1, flip=True)
    windows = [np.pad(images[i, ..., 0], 1)[y : y + 4, x : x + 4] for i in range(2) for y in range(3)
               for x in range(3)]
    assert all(any(np.array_equal(f[..., 0], w) or np.array_equal(f[..., 0], w[:, ::-1]) for w in windows)
               for f in flipped)


def test_flips_follow_the_dataset():
    from tasks.finetune import FLIP_DATASETS

    assert {"cifar10", "fashion-mnist"} <= FLIP_DATASETS
    assert not {"digits", "mnist"} & FLIP_DATASETS


def test_pixels_has_nothing_to_train(bench, tmp_path):
    r = bench("run", "-b", "pixels", "-t", "finetune", "-d", "digits", "--results", tmp_path / "results")
    assert_user_error(r, "pixels", "no trainable parameters")
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


@pytest.mark.parametrize("option, fragment", [
    ("epochs=0", "1..1000"), ("epochs=1001", "1..1000"), ("epochs=two", "epochs"),
    ("lr=0", "(0, 1]"), ("lr=-1e-3", "(0, 1]"), ("lr=2", "(0, 1]"), ("lr=nan", "(0, 1]"),
    ("warmup=1", "warmup"), ("batch_size=0", "batch_size"), ("augment=yes", "on, off"),
    ("precision=fp16", "bf16"), ("gen_weight=-1", "gen_weight"),
])
def test_out_of_range_options_are_refused_before_any_work(bench, tmp_path, option, fragment):
    r = bench("run", "-b", "igpt-tiny", "-t", "finetune", "-d", "digits", "-o", option,
              "--results", tmp_path / "results")
    assert_user_error(r, option.split("=")[0], fragment)
    assert not (tmp_path / "results").exists()


def test_a_generative_loss_on_a_backbone_without_one_is_refused(bench, tmp_path):
    r = bench("run", "-b", "resnet18", "-t", "finetune", "-d", "digits", "--limit", "100", "-o", "gen_weight=0.5",
              "--results", tmp_path / "results")
    assert_user_error(r, "gen_weight", "generative")
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_a_run_folder_with_other_settings_is_refused_and_left_alone(bench, tmp_path):
    results = tmp_path / "results"
    args = [*IGPT[:-6], "-o", "epochs=1", "--results", results]
    assert bench("-q", *args).code == 0
    folder = _run_folder(results)
    settings = json.loads((folder / "settings.json").read_text())
    settings["device"] = "cuda"  # as if the folder had been trained on a GPU
    (folder / "settings.json").write_text(json.dumps(settings))
    before = _tree(results)
    r = bench("-q", *args, "--rerun")
    assert_user_error(r, "other settings", "device", str(folder))
    assert _tree(results) == before


ARGS_KILL = ["run", "-b", "igpt-tiny", "-t", "finetune", "-d", "digits", "--limit", "300", "--device", "cpu",
             "-o", "epochs=4", "-o", "batch_size=16"]
# One thread: bit-equality needs the same thread count in every run, and two-thread runs crawl
# on a busy 2-core machine (OpenMP barriers wait for descheduled threads).
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")


def _final_weights(results: Path) -> dict:
    folder = _run_folder(results)
    body = folder / "finetuned.safetensors"  # a timm model's; an igpt's is a checkpoint folder
    body = body if body.exists() else folder / "finetuned" / "model.safetensors"
    out = {f"body.{k}": v for k, v in load_file(str(body)).items()}
    out.update({f"head.{k}": v for k, v in load_file(str(folder / "head.safetensors")).items()})
    return out


def _numbers(results: Path) -> list[tuple]:
    return [(r["split"], r["metric"], r.get("epoch"), r["value"]) for r in _records(results)]


@pytest.mark.parametrize("backbone, precision", [("igpt-tiny", "fp32"), ("igpt-tiny", "bf16"), ("resnet18", "fp32")])
def test_sigkill_then_same_command_continues_to_the_same_weights(tmp_path, backbone, precision):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    args = [backbone if a == "igpt-tiny" else a for a in ARGS_KILL]
    if backbone == "resnet18":  # batch norm, convolutions, and a classifier the head leaves unused
        args[args.index("300")] = "200"
    cmd = [sys.executable, "-m", "bench", "-q", *args, "-o", f"precision={precision}"]
    proc = subprocess.Popen(cmd + ["--results", str(killed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=ONE_THREAD)
    deadline = time.time() + 300

    def first_epoch_done():
        return killed.is_dir() and any(p.is_dir() and not p.name.endswith(".tmp") for p in killed.glob("*/epoch-*"))

    while time.time() < deadline and proc.poll() is None and not first_epoch_done():
        time.sleep(0.01)
    assert proc.poll() is None, "fine-tuning finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(killed.glob("*.json")), "killed before the results file"

    again = subprocess.run(cmd + ["--results", str(killed)], capture_output=True, text=True, timeout=600,
                           check=False, env=ONE_THREAD)
    assert again.returncode == 0, again.stderr
    ref = subprocess.run(cmd + ["--results", str(clean)], capture_output=True, text=True, timeout=600, check=False,
                         env=ONE_THREAD)
    assert ref.returncode == 0, ref.stderr
    a, b = _final_weights(killed), _final_weights(clean)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _numbers(killed) == _numbers(clean)
    assert not list(_run_folder(killed).glob("epoch-*"))  # checkpoints are gone once the outputs are whole


def test_torchrun_two_cpu_processes_match_one_process(tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    args = [*IGPT[:-6], "-o", "epochs=2", "-o", "batch_size=32"]
    env = ONE_THREAD
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "bench", "-q", *args, "--results", str(ddp)],
                       capture_output=True, text=True, timeout=600, check=False, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-m", "bench", "-q", *args, "--results", str(single)],
                       capture_output=True, text=True, timeout=600, check=False, env=env)
    assert r.returncode == 0, r.stderr
    a, b = _final_weights(ddp), _final_weights(single)
    for k in a:  # gradients averaged over two equal halves (the same augmented images) equal the full batch's
        torch.testing.assert_close(a[k], b[k], atol=2e-4, rtol=1e-3)
    val = {r["metric"]: r["value"] for r in _records(ddp) if r["split"] == "val" and not r.get("curve")}
    ref = {r["metric"]: r["value"] for r in _records(single) if r["split"] == "val" and not r.get("curve")}
    assert val["epoch"] == ref["epoch"] and abs(val["top1"] - ref["top1"]) <= 100.0 / 144 + 1e-9  # one image


def test_patience_stops_early_and_the_best_epoch_is_restored_and_scored(tmp_path, monkeypatch):
    from backbones.base import BackboneOptions, DataSpec, create_backbone
    from bench.datasets import load_split
    from tasks import finetune
    from tasks.base import RunContext

    val_scores = iter([50, 70, 60, 65, 40, 90])  # correct of 100 after epochs 1, 2, 3, ...; stop after 4
    scored = {}

    def fake_evaluate(self, split):
        if split == "val":
            return next(val_scores), 100
        scored["weights"] = {k: v.clone() for k, v in self.net.state_dict().items()}
        return 33, 100

    monkeypatch.setattr(finetune.Finetuning, "_evaluate", fake_evaluate)
    data = {s: load_split("digits", s, limit=100) for s in ("train", "val", "test")}
    model = create_backbone("igpt-tiny", DataSpec.of(data["train"].images), BackboneOptions())
    task = finetune.Finetune()
    ctx = RunContext(backbone=model, layers=["final"], data=data, artifacts=tmp_path / "run", quiet=True,
                     options=task.parse_options({"epochs": 6, "batch_size": 32, "patience": 2}))
    records = task.run(ctx)
    final = {(r["split"], r["metric"]): r["value"] for r in records if not r.get("curve")}
    assert final == {("val", "top1"): 70.0, ("test", "top1"): 33.0, ("val", "epoch"): 2}
    assert [r["epoch"] for r in records if r.get("curve") and r["split"] == "val"] == [1, 2, 3, 4]
    saved = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert saved["epoch"] == 2 and len(saved["history"]) == 4
    head = load_file(str(tmp_path / "run" / "head.safetensors"))
    assert torch.equal(head["weight"], scored["weights"]["head.weight"])  # test saw the weights written
