"""Pretraining an Image GPT: checkpoints, resume after SIGKILL, DDP under torchrun, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import assert_user_error

ARGS = ["pretrain", "-b", "igpt-tiny", "-d", "digits", "--limit", "300", "--steps", "60", "--batch-size", "16",
        "--warmup", "10", "--save-at", "20,40"]


def _weights(run_dir):
    return load_file(str(run_dir / "checkpoints" / "step-0000060" / "model.safetensors"))


def test_pretrain_writes_usable_checkpoints_and_lowers_bits_per_dim(bench, tmp_path):
    out = tmp_path / "run"
    r = bench("-q", *ARGS, "--out", out)
    assert r.code == 0, r
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [20, 40, 60]
    assert log[-1]["val_bits_per_dim"] < log[0]["val_bits_per_dim"]
    meta = json.loads((out / "checkpoints" / "step-0000040" / "igpt.json").read_text())
    assert meta["step"] == 40 and meta["image"] == [8, 8] and meta["config"]["n_colors"] == 16
    # Every checkpoint (or the run folder: its latest) is usable as --weights.
    for w in (out / "checkpoints" / "step-0000020", out):
        r = bench("-q", "extract", "-b", "igpt", "--weights", w, "-d", "digits", "--split", "test", "--limit", "20",
                  "--layers", "h2", "--out", tmp_path / f"{w.name}.h5")
        assert r.code == 0, r


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sigkill_then_same_command_continues_to_the_same_weights(tmp_path, precision):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    cmd = [sys.executable, "-m", "bench", "-q", *ARGS, "--precision", precision]
    proc = subprocess.Popen(cmd + ["--out", str(killed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first_ckpt = killed / "checkpoints" / "step-0000020"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not first_ckpt.exists():
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "step-0000060").exists()

    again = subprocess.run(cmd + ["--out", str(killed)], capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stderr
    ref = subprocess.run(cmd + ["--out", str(clean)], capture_output=True, text=True, timeout=600, check=False)
    assert ref.returncode == 0, ref.stderr
    a, b = _weights(killed), _weights(clean)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_torchrun_two_cpu_processes_match_one_process(tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "bench", "-q", *ARGS, "--out", str(ddp), "--device", "cpu"],
                       capture_output=True, text=True, timeout=600, check=False, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-m", "bench", "-q", *ARGS, "--out", str(single), "--device", "cpu"],
                       capture_output=True, text=True, timeout=600, check=False, env=env)
    assert r.returncode == 0, r.stderr
    a, b = _weights(ddp), _weights(single)
    for k in a:  # gradients averaged over two equal halves equal the full-batch gradient
        torch.testing.assert_close(a[k], b[k], atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("extra, fragments", [
    (["--save-at", "0,20"], ["--save-at", "1..60"]),
    (["--save-at", "20,x"], ["--save-at"]),
    (["--steps", "0"], ["--steps"]),
    (["--lr", "-1"], ["--lr"]),
    (["--precision", "fp16"], ["--precision", "bf16"]),
])
def test_bad_pretrain_values(bench, tmp_path, extra, fragments):
    args = list(ARGS)
    for flag in ("--save-at", "--steps"):
        if flag in extra and flag in args:
            i = args.index(flag)
            del args[i : i + 2]
    r = bench(*args, *extra, "--out", tmp_path / "run")
    assert_user_error(r, *fragments)
    assert not (tmp_path / "run").exists()


def test_unknown_shape_and_changed_settings_are_refused(bench, tmp_path):
    r = bench("pretrain", "-b", "igpt-tinny", "-d", "digits", "--steps", "5", "--out", tmp_path / "x")
    assert_user_error(r, "did you mean", "igpt-tiny")
    out = tmp_path / "run"
    assert bench("-q", *ARGS, "--out", out).code == 0
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    r = bench("-q", *ARGS[:-2], "--save-at", "30", "--out", out)
    assert_user_error(r, "other settings", "save_at")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_precision_picks_the_training_autocast():
    from backbones.igpt.train import autocast_for

    a, b = torch.ones(4, 4), torch.ones(4, 4)
    with autocast_for("bf16", "cpu"):
        assert (a @ b).dtype == torch.bfloat16
    for precision in ("auto", "fp32"):  # auto is fp32 on a CPU
        with autocast_for(precision, "cpu"):
            assert (a @ b).dtype == torch.float32


def test_a_run_written_before_a_setting_existed_resumes_with_its_default(bench, tmp_path):
    out = tmp_path / "run"
    assert bench("-q", *ARGS, "--out", out).code == 0
    settings = json.loads((out / "run.json").read_text())
    del settings["precision"]  # as written before --precision existed
    (out / "run.json").write_text(json.dumps(settings))
    assert bench("-q", *ARGS, "--out", out).code == 0
    r = bench("-q", *ARGS, "--precision", "bf16", "--out", out)
    assert_user_error(r, "other settings", "precision")


def test_the_model_owns_its_loss_in_float32_under_autocast():
    import math

    import numpy as np
    import torch.nn.functional as F

    from backbones.igpt.model import IGPTConfig, ImageGPT, with_sos
    from backbones.igpt.train import autocast_for, bits_per_dim

    torch.manual_seed(0)
    model = ImageGPT(IGPTConfig(n_colors=16, n_positions=12, n_embd=32, n_layer=2, n_head=4))
    tokens = torch.randint(0, 16, (3, 12))
    logits = model(with_sos(tokens, model.cfg.sos))
    expected = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    torch.testing.assert_close(model.loss(tokens), expected)
    per_token = model.loss(tokens, reduction="none")
    assert per_token.shape == (3, 12)
    torch.testing.assert_close(per_token.mean(), expected)
    with autocast_for("bf16", "cpu"):
        assert model(with_sos(tokens, model.cfg.sos)).dtype == torch.bfloat16
        assert model.loss(tokens).dtype == torch.float32
    bpd = bits_per_dim(model, tokens.numpy().astype(np.int64), channels=1, batch_size=2)
    assert math.isclose(bpd, expected.item() / math.log(2), rel_tol=1e-5)


def test_to_device_gives_the_tokens_as_int64_whatever_their_layout():
    """The training batch's way to the device (pinned and unwaited on a GPU): the same numbers as
    int64, from any integer dtype and from a strided view."""
    import numpy as np

    from backbones.igpt.train import to_device

    tokens = np.arange(24, dtype=np.int64).reshape(4, 6)
    for view in (tokens, tokens.astype(np.uint8), tokens[::2, 1::2]):
        x = to_device(view, "cpu")
        assert x.dtype == torch.int64 and x.device.type == "cpu"
        assert np.array_equal(x.numpy(), view.astype(np.int64))


def test_compile_runs_the_step_compiled_and_is_no_setting_of_the_run(bench, tmp_path, monkeypatch):
    """`--compile` puts the training step through torch.compile (here with the aot_eager backend:
    the captured graph without inductor's kernel generation, which costs ~30 s on 2 cores), trains
    to the eager run's weights, and is no setting of the run: the folder reruns without it."""
    compiled = []
    real = torch.compile

    def spy(model, **kw):
        compiled.append(model)
        return real(model, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", spy)
    assert bench("-q", *ARGS, "--out", tmp_path / "eager").code == 0
    assert compiled == []
    r = bench("-q", *ARGS, "--compile", "--out", tmp_path / "compiled")
    assert r.code == 0, r
    assert len(compiled) == 1
    a, b = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a), max((a[k] - b[k]).abs().max() for k in a)
    assert bench("-q", *ARGS, "--out", tmp_path / "compiled").code == 0
