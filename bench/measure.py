"""Measuring tools both speed commands use (``bench perf`` and its component comparisons):
the machine, wall times taken in alternation, where a call's time goes (torch's profiler), FLOP
counts and the FLOP rate of one matmul, and a neighbour process that keeps one CPU busy.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

PROFILE_TOP = 6  # operators (kernels on a GPU) per profiled row


def machine() -> dict:
    """What the figures were measured on: CPU model, core and thread counts, torch, python, GPU,
    transformers."""
    import torch

    from bench.runtime import available_cpus

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "usable cpus": available_cpus(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "python": platform.python_version(), "gpu": None}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    out["transformers"] = getattr(transformers_or_none(), "__version__", None)
    return out


def transformers_or_none():
    """The transformers module, or None where it is not installed (its rows then say so)."""
    try:
        import transformers
    except ImportError:
        return None
    return transformers


def median_time(fn: Callable[[], object], repeat: int, device: str = "cpu") -> float:
    """Median wall seconds of ``repeat`` calls after one untimed warm-up call (on a GPU, each
    waited for)."""
    return interleaved_medians({"fn": fn}, repeat, device=device)["fn"]


def interleaved_medians(fns: dict[str, Callable[[], object]], repeat: int, warmup: bool = True,
                        device: str = "cpu") -> dict[str, float]:
    """Median wall seconds of each contender over ``repeat`` rounds, one call of each per round
    (after one untimed round where ``warmup``; on a GPU, each call waited for). Why alternate: on a
    shared machine whose speed drifts, both sides of a ratio then run under the same conditions."""
    import torch

    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    if warmup:
        for fn in fns.values():
            fn()
        sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def profile_call(fn: Callable[[], object], device: str = "cpu", top: int = PROFILE_TOP) -> list[dict]:
    """Where one more call of ``fn`` spends its time, by torch's profiler: the ``top`` operators by
    self time (on a GPU, the kernels by device time), each as ``{"op", "seconds", "calls",
    "share"}`` with share the fraction of the call's wall time, then ``(other operators)`` and the
    rest of the wall time, ``(outside operators)`` (Python, dispatch; on a GPU, ``(device idle)``).
    The profiler's own cost per operator call is in the figures. On a CPU, kineto's log is silenced
    unless ``KINETO_LOG_LEVEL`` is set: a CUDA build of torch without a GPU logs to stderr at every
    use. A profiler that fails leaves one entry that says so."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = str(device).startswith("cuda")
    if not cuda:
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # above every level it logs at
    profiler = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []))
    try:
        with profiler:
            start = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize(device)
            wall = time.perf_counter() - start
    except RuntimeError as e:  # the call ran unprofiled before: the profiler failed, not the row
        return [{"op": f"(profiler failed: {str(e).splitlines()[0] if str(e) else type(e).__name__})",
                 "seconds": 0.0, "calls": None, "share": 0.0}]
    if cuda:
        timed = [(e.key, getattr(e, "self_device_time_total", 0) / 1e6, e.count) for e in profiler.key_averages()
                 if e.device_type == torch.autograd.DeviceType.CUDA]
    else:
        timed = [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in profiler.key_averages()]
    timed = sorted((t for t in timed if t[1] > 0), key=lambda t: -t[1])
    entries = [{"op": op, "seconds": s, "calls": n, "share": s / wall} for op, s, n in timed[:top]]
    rest = sum(s for _, s, _ in timed[top:])
    if rest:
        entries.append({"op": "(other operators)", "seconds": rest, "calls": sum(n for *_, n in timed[top:]),
                        "share": rest / wall})
    outside = max(wall - sum(s for _, s, _ in timed), 0.0)
    entries.append({"op": "(device idle)" if cuda else "(outside operators)", "seconds": outside, "calls": None,
                    "share": outside / wall})
    return entries


def matmul_rate(m: int, k: int, n: int, device: str = "cpu", dtype=None, repeat: int = 5) -> float:
    """FLOP/s of one (m x k) @ (k x n) matmul on ``device`` (fp32 unless ``dtype``): the measured
    rate that FLOP rates are judged against."""
    import torch

    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    return 2 * m * k * n / median_time(lambda: a @ b, repeat, device)


def counted(fn):
    """(torch's FlopCounterMode after one call of ``fn``, what the call returned); the counter is
    taught the CPU attention kernel first."""
    from torch.utils.flop_counter import FlopCounterMode

    from backbones.base import count_cpu_attention

    count_cpu_attention()
    counter = FlopCounterMode(display=False)
    with counter:
        out = fn()
    return counter, out


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn``, as torch's counter counts them."""
    return counted(fn)[0].get_total_flops()


def necessary_flops(counter) -> float:
    """The FLOPs a forward counted by ``counter`` (from ``counted``) needs: torch's count with causal
    attention at half its score matrix (the counter charges the masked half too)."""
    per_op = counter.get_flop_counts().get("Global", {})
    attention = sum(n for op, n in per_op.items() if "scaled_dot_product" in str(op))
    return counter.get_total_flops() - attention / 2


# Runs `bench ARGS...` and writes the process's peak resident set (VmHWM, which, unlike the rusage
# maxrss, starts afresh at exec rather than inheriting the forking parent's) to the file argv[1].
_PEAK = """import sys
from bench.cli import main
try:
    main(sys.argv[2:])
finally:
    with open("/proc/self/status") as status, open(sys.argv[1], "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM")))
"""


def bench_peak_memory(args: list[str], env: dict) -> tuple[float | None, str | None]:
    """(peak resident memory in GiB, None) of ``bench ARGS`` run in a fresh process with ``env``
    (Linux: read from /proc), or (None, the tail of its stderr) where it failed."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        peak = os.path.join(tmp, "peak")
        proc = subprocess.run([sys.executable, "-c", _PEAK, peak, *args], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0 or not os.path.exists(peak):
            return None, proc.stderr.strip()[-200:]
        with open(peak) as f:
            return int(f.read().split()[1]) / 2**20, None  # "VmHWM: N kB" -> GiB


@contextlib.contextmanager
def busy_neighbour():
    """A process that keeps one of this process's CPUs busy (the last it may use) for the block, as
    another user's job would on a shared machine; yields that CPU. Linux only (it pins the process
    with sched_setaffinity)."""
    from bench.errors import BenchError

    if not hasattr(os, "sched_setaffinity"):
        raise BenchError("--busy pins a process to a CPU, which needs Linux (os.sched_setaffinity); run it there")
    cpu = max(os.sched_getaffinity(0))
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        os.sched_setaffinity(spinner.pid, {cpu})
        yield cpu
    finally:
        spinner.kill()
        spinner.wait()
