"""Pretraining an Image GPT on a dataset's train split: next-token cross-entropy over palette
indices, AdamW (betas 0.9, 0.95), linear warm-up then cosine decay, gradient clipping, bf16
autocast on a GPU (and on a CPU when asked: ``precision="bf16"``), validation bits/dim in fp32 at
each save.

A run folder holds ``run.json`` (the settings; a rerun with other settings is refused),
``palette.json``, ``log.jsonl`` (per save: losses, time and the CPU threads the steps ran with,
which are no setting) and ``checkpoints/step-NNNNNNN/``. The same command after a kill continues
from the last checkpoint (weights, optimizer, schedule, RNG, data position) and ends with the same
weights as an uninterrupted run on the CPU at the same thread count. Under ``torchrun`` it trains with
DistributedDataParallel: each rank takes an equal share of every global batch, rank 0 writes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from bench.datasets import MAX_SEED
from bench.distributed import barrier, is_main, join_processes, leave
from bench.errors import BenchError
from bench.runtime import autocast_for, warn_slow_bf16
from bench.training import SKIP, adamw, check_settings, ddp, lr_factor, optimizer_to, writer_lock

from .checkpoint import latest_checkpoint, load_checkpoint, load_train_state, save_checkpoint
from .model import IGPTConfig, ImageGPT, with_sos
from .palette import DEFAULT_COLORS, Palette, tokenize
from .shapes import shape_config


@dataclass(frozen=True)
class TrainConfig:
    backbone: str
    dataset: str
    steps: int
    batch_size: int
    lr: float = 3e-3
    warmup: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    save_at: tuple[int, ...] = ()
    seed: int = 0
    limit: int | None = None
    colors: int | None = None
    image_size: int | None = None
    data_root: str | None = None
    precision: str = "auto"  # auto (bf16 on a GPU, fp32 on a CPU), fp32 or bf16


PRECISIONS = ("auto", "fp32", "bf16")


def train_step(net, opt, tokens, autocast, grad_clip: float):
    """One optimizer step of the model's next-token cross-entropy on palette ``tokens``; returns
    the loss. ``net`` is the ImageGPT or its DistributedDataParallel wrapper; the step calls its
    forward (``net(input, targets)``, the body of ``ImageGPT.loss``) rather than ``loss`` because
    DistributedDataParallel syncs the gradients of what runs through its forward only."""
    import torch

    sos = getattr(net, "module", net).cfg.sos
    with autocast:
        loss = net(with_sos(tokens, sos), tokens)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    opt.step()
    return loss


def batch_rows(step: int, n: int, batch: int, seed: int) -> np.ndarray:
    """Rows of the global batch at ``step``: epochs are seeded permutations, last partial batch dropped."""
    per_epoch = max(1, n // batch)
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[k * batch : (k + 1) * batch]


def bits_per_dim(model: ImageGPT, tokens, channels: int, batch_size: int = 64, device: str = "cpu") -> float:
    """Mean negative log-likelihood of palette tokens in bits, per sub-pixel (token / channels)."""
    import torch

    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    with torch.inference_mode():
        for s in range(0, len(tokens), batch_size):
            x = to_device(tokens[s : s + batch_size], device)
            total += model.loss(x, reduction="sum").double()  # summed on the device: one sync at the end
            count += x.numel()
    return float(total) / count / math.log(2) / channels


def to_device(tokens: np.ndarray, device):
    """Palette tokens as int64 on ``device``. To a GPU through pinned memory without waiting: a
    copy from pageable memory waits until the GPU has run all it was given, so the host could not
    queue the next training step while this one runs."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(tokens))
    if str(device).startswith("cuda"):
        x = x.pin_memory()
    return x.to(device, non_blocking=True).long()


def _validate(cfg: TrainConfig) -> None:
    shape_config(cfg.backbone)  # a one-line error for anything but an iGPT shape
    for name in ("steps", "batch_size"):
        if getattr(cfg, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be a positive integer")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise BenchError(f"--seed must be an integer in 0..{MAX_SEED}, got {cfg.seed}")
    if cfg.image_size is not None and not 1 <= cfg.image_size <= 128:
        raise BenchError(f"--image-size must lie in 1..128 for pretraining (tokens = size²), got {cfg.image_size}")
    if not (0 < cfg.lr <= 1):
        raise BenchError(f"--lr must lie in (0, 1], got {cfg.lr}")
    for name in ("weight_decay", "grad_clip", "min_lr_ratio"):
        if not (math.isfinite(getattr(cfg, name)) and getattr(cfg, name) >= 0):
            raise BenchError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {getattr(cfg, name)}")
    if cfg.precision not in PRECISIONS:
        raise BenchError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    bad = [s for s in cfg.save_at if not 1 <= s <= cfg.steps]
    if bad:
        raise BenchError(f"--save-at steps must lie in 1..{cfg.steps} (--steps), got {bad[0]}")


def pretrain(cfg: TrainConfig, out: Path, device: str = "cpu", quiet: bool = False, log=print,
             compile: bool = False) -> Path:
    """Train (or continue training) into ``out``; returns the final checkpoint folder.

    One process trains a folder at a time: another is refused at once, naming the holder. A run
    continues only where ``run.json`` and every checkpoint were written with the same settings.

    ``compile``: run the training forward (and so its backward) through ``torch.compile``; the
    same function of the same weights, fused into fewer kernels. It is not a setting of the run:
    a run may resume with or without it. The first step pays the compilation."""
    from bench.files import check_writable

    _validate(cfg)
    out = Path(out)
    check_writable(out / "run.json", "--out")
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    with writer_lock(out / "run.json", out, "pretraining into", "trained", "choose another --out", log, is_main()):
        return _pretrain(cfg, out, settings, device, quiet, log, compile)


def _settings_of(doc, where: Path) -> dict:
    """A run's settings as saved in ``run.json`` or a checkpoint, with later settings at their defaults."""
    if not isinstance(doc, dict):
        raise BenchError(f"{where} is damaged (not a settings object); {_ADVICE}")
    return {f.name: doc.get(f.name, f.default if not isinstance(f.default, tuple) else list(f.default))
            for f in fields(TrainConfig)}


_ADVICE = "rerun with the same settings to resume, or delete the run folder, or choose another --out"


def check_run_folder(out: Path, settings: dict) -> None:
    """Refuse a run folder whose ``run.json`` or any checkpoint was written with other settings:
    resuming would continue another run's weights under this run's name."""
    def read(source: Path):
        def settings_in(doc):
            if source.name == "igpt.json":
                if not isinstance(doc, dict) or "train" not in doc:
                    return SKIP  # a checkpoint saved by hand: no training settings to compare
                doc = doc["train"]
            return _settings_of(doc, source)
        return settings_in

    sources = [out / "run.json"] + sorted((out / "checkpoints").glob("step-*/igpt.json"))
    check_settings([(source, settings, read(source), False) for source in sources], "a run", _ADVICE)


def _pretrain(cfg: TrainConfig, out: Path, settings: dict, device: str, quiet: bool, log, compile: bool) -> Path:
    import torch

    from bench.datasets import load_split
    from bench.runtime import progress_bar

    check_run_folder(out, settings)
    rank, world, device, started = join_processes(device)
    if cfg.batch_size % world:
        raise BenchError(f"--batch-size {cfg.batch_size} must be divisible by the {world} processes")
    main = rank == 0

    train = load_split(cfg.dataset, "train", cfg.data_root, cfg.limit, cfg.seed)
    val = load_split(cfg.dataset, "val", cfg.data_root, cfg.limit, cfg.seed)
    channels = train.images.shape[-1]
    h = w = cfg.image_size or max(train.images.shape[1:3])

    latest = latest_checkpoint(out)
    if latest is not None:
        palette = Palette.load(latest / "palette.json")
    else:
        palette = Palette.fit(train.images, cfg.colors or DEFAULT_COLORS[channels], seed=cfg.seed)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps(settings, indent=1))
        palette.save(out / "palette.json")

    train_tok, val_tok = tokenize(train.images, palette, h, w), tokenize(val.images, palette, h, w)

    torch.manual_seed(cfg.seed)
    mcfg = IGPTConfig(n_colors=palette.n_colors, n_positions=h * w, **shape_config(cfg.backbone))
    model = ImageGPT(mcfg)
    opt = adamw(model, cfg.lr, cfg.weight_decay, betas=(0.9, 0.95),
                fused=str(device).startswith("cuda"))  # one kernel for all parameters on a GPU
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup, cfg.steps, cfg.min_lr_ratio))
    start = 0
    if latest is not None:
        loaded, _, _, _ = load_checkpoint(latest)
        model.load_state_dict(loaded.state_dict())
        state = load_train_state(latest)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
        if main:
            log(f"resuming {out} at step {start}")
    model.to(device)
    optimizer_to(opt, device)
    net = ddp(model, world)
    if compile:
        net = torch.compile(net)
    autocast = autocast_for(cfg.precision, device)
    if main:
        warn_slow_bf16(cfg.precision, device, log)
    saves = set(cfg.save_at) | {cfg.steps}
    per_rank = cfg.batch_size // world
    t0 = time.time()
    final = None
    with progress_bar(f"pretrain {cfg.backbone} on {cfg.dataset}", cfg.steps, quiet or not main) as bar:
        bar.advance(start)
        for step in range(start, cfg.steps):
            model.train()
            rows = batch_rows(step, len(train_tok), cfg.batch_size, cfg.seed)[rank * per_rank : (rank + 1) * per_rank]
            x = to_device(train_tok[np.sort(rows)], device)
            loss = train_step(net, opt, x, autocast, cfg.grad_clip)
            sched.step()
            bar.advance(1)
            done = step + 1
            if done in saves:
                if main:
                    bpd = bits_per_dim(model, val_tok, channels, device=device)
                    state = {"step": done, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                             "torch_rng": torch.get_rng_state(),
                             "data": {"epoch_rows": len(train_tok), "next_step": done}}
                    final = save_checkpoint(out / "checkpoints" / f"step-{done:07d}", model, palette, (h, w),
                                            train_state=state, extra={"step": done, "val_bits_per_dim": bpd,
                                                                      "train": settings})
                    rec = {"step": done, "train_loss": round(loss.item(), 5), "val_bits_per_dim": round(bpd, 5),
                           "lr": sched.get_last_lr()[0], "seconds": round(time.time() - t0, 2),
                           "threads": torch.get_num_threads()}  # provenance only: a resume may use another count
                    with open(out / "log.jsonl", "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    log(f"step {done}: train loss {loss.item():.4f}, val {bpd:.4f} bits/dim")
                barrier(world)
    leave(started)
    return final or latest_checkpoint(out)

