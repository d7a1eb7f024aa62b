"""Runtime choices: device, seeds, progress bars, the CPU allocator."""

from __future__ import annotations

import contextlib
import os
import sys

from bench.errors import BenchError


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {device}: no CUDA device is visible; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise BenchError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    return device


def join_processes(device: str) -> tuple[int, int, str, bool]:
    """Under ``torchrun``: (rank, world size, this process's device, whether this call started the
    process group). The group is started once per process, gloo on CPUs and NCCL on GPUs, where
    each rank takes the GPU of its LOCAL_RANK; collectives time out after $BENCH_DIST_TIMEOUT_MIN
    minutes (default 720). Outside torchrun: (0, 1, device, False)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world == 1:
        return 0, 1, device, False
    import torch
    import torch.distributed as dist

    started = False
    if not dist.is_initialized():
        # Ranks wait in collectives while rank 0 waits for another process's lock or writes a
        # large file: far longer than torch's default timeout (10 min NCCL, 30 min gloo) allows.
        from datetime import timedelta

        minutes = float(os.environ.get("BENCH_DIST_TIMEOUT_MIN", "720"))
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo",
                                timeout=timedelta(minutes=minutes))
        started = True
    if str(device).startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    return rank, world, device, started


def autocast_for(precision: str, device: str):
    """The autocast context of a forward pass: bf16 for ``bf16``, and for ``auto`` on a GPU; none
    otherwise (fp32). Weights stay fp32 either way."""
    import torch

    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(kind, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_bf16_hardware() -> str | None:
    """The CPU's bf16 instructions as /proc/cpuinfo names them (``amx_bf16``, ``avx512_bf16``), or
    None where it has neither (or the file is not there)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return None
    found = [name for name in ("amx_bf16", "avx512_bf16") if name in flags]
    return " + ".join(found) or None


def warn_slow_bf16(precision: str, device: str, log) -> None:
    """Log a warning when bf16 runs on a CPU without bf16 instructions: there autocast emulates
    bf16, and it is slower than fp32, not faster (``bench perf``'s bf16 row on the 2-core AMD
    EPYC, AVX2 only: iGPT-S forward 35.7 s under bf16 against 5.3 s in fp32)."""
    import platform

    if precision != "bf16" or str(device).startswith("cuda") or platform.machine().lower() not in ("x86_64", "amd64"):
        return  # other CPUs name their bf16 instructions otherwise (Arm: bf16): no guess about them
    if os.path.exists("/proc/cpuinfo") and cpu_bf16_hardware() is None:
        log("warning: bf16 on a CPU without AVX512-BF16 or AMX is emulated and several times slower than "
            "fp32; use --precision fp32 (or auto) here")


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` as what it means on ``device`` (bf16 on a GPU, fp32 on a CPU); others as given."""
    if precision == "auto":
        return "bf16" if str(device).startswith("cuda") else "fp32"
    if precision not in ("fp32", "bf16"):
        raise BenchError(f"precision {precision!r} is not one of auto, fp32, bf16")
    return precision


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory (blocks up to 1 GiB, and the heap top) for reuse.

    By default glibc gives large freed blocks and a freed heap top back to the kernel, so each
    batch's activations (e.g. an iGPT MLP at batch 256: 256 x 196 x 1024 floats) are page-faulted
    in afresh: iGPT feature extraction spent a third of its CPU time in the kernel. Measured on the
    2-core CPU, forward of igpt-wide at 14x14 and batch 256: 24.5 -> 16.0 and 31.0 -> 19.2 ms per
    image in two runs; three forward passes of a 2x256 iGPT at batch 128: 809k -> 12.5k page
    faults. No-op off glibc, or when the user set MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_
    themselves. Returns whether it applied.
    """
    if not sys.platform.startswith("linux") or any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_",
                                                                            "MALLOC_TRIM_THRESHOLD_")):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Bar:
    def __init__(self, progress, task):
        self._p, self._t = progress, task

    def advance(self, n: int) -> None:
        if self._p is not None:
            self._p.advance(self._t, n)

    def describe(self, text: str) -> None:
        """Replace the bar's description (e.g. with a running loss)."""
        if self._p is not None:
            self._p.update(self._t, description=text)


_live = None  # the Progress on screen, which nested bars (a job's, under a sweep's) join


@contextlib.contextmanager
def progress_bar(description: str, total: int, quiet: bool = False):
    """A rich progress bar, silent when ``quiet`` or when stderr is not a terminal. A bar opened
    while another is showing becomes a second line of the same display (rich allows one live
    display at a time)."""
    global _live
    if quiet or not sys.stderr.isatty():
        yield _Bar(None, None)
        return
    if _live is not None:
        task = _live.add_task(description, total=total)
        try:
            yield _Bar(_live, task)
        finally:
            _live.remove_task(task)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as live:
        _live = live
        try:
            yield _Bar(live, live.add_task(description, total=total))
        finally:
            _live = None
