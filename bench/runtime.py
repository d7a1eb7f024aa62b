"""Runtime choices: device, CPU threads, seeds, progress bars, the CPU allocator."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from collections import deque
from pathlib import Path

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


# -- threads ------------------------------------------------------------------------------------

MAX_THREADS = 4096  # more is a typo, not a machine
CGROUP_ROOT = "/sys/fs/cgroup"
PROC_CGROUP = "/proc/self/cgroup"


def available_cpus() -> int:
    """The CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota in whole
    CPUs (rounded down), at least 1. ``os.cpu_count()`` counts the machine's CPUs, not what a
    container or a scheduler's allocation lets this process run on."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:  # threads beyond the quota wait for the next period, all of them
        cpus = min(cpus, int(quota))
    return max(1, cpus)


def cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time per period that the cgroup CPU quota grants this process (quota /
    period; the smallest along its cgroup's path to the hierarchy's root, which is also what a
    container sees of its own limit), or None where none is set or readable. Reads cgroup v2's
    ``cpu.max`` and v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``."""
    try:
        with open(PROC_CGROUP) as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        lines = []
    paths = {"v2": "/", "v1": "/"}
    for parts in lines:
        if len(parts) == 3 and parts[0] == "0" and parts[1] == "":
            paths["v2"] = parts[2]
        elif len(parts) == 3 and "cpu" in parts[1].split(","):
            paths["v1"] = parts[2]
    root = Path(CGROUP_ROOT)
    limits = [_cpu_max(d / "cpu.max") for d in _up_from(root, paths["v2"])]
    for base in (root / "cpu", root / "cpu,cpuacct"):
        limits += [_cfs_quota(d) for d in _up_from(base, paths["v1"])]
    limits = [q for q in limits if q is not None]
    return min(limits) if limits else None


def _up_from(base: Path, path: str) -> list[Path]:
    """``base``/``path`` and each of its parents up to ``base``."""
    rel = Path(path.strip("/"))
    return [base / rel] + [base / parent for parent in rel.parents]


def _cpu_max(file: Path) -> float | None:
    """cgroup v2 ``cpu.max``: "QUOTA PERIOD" in microseconds, QUOTA "max" for none."""
    try:
        quota, period = file.read_text().split()[:2]
        return int(quota) / int(period) if quota != "max" and int(quota) > 0 and int(period) > 0 else None
    except (OSError, ValueError):
        return None


def _cfs_quota(folder: Path) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` (-1 for none) over ``cpu.cfs_period_us``."""
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def default_threads() -> int:
    """The thread count when none is asked for: a positive ``OMP_NUM_THREADS`` (the standing choice
    torch itself honours), else the CPUs this process may use. Under torchrun, the CPUs shared
    among the node's ranks (LOCAL_WORLD_SIZE), and OMP_NUM_THREADS not read: torchrun sets it to 1
    on its own."""
    local_ranks = os.environ.get("LOCAL_WORLD_SIZE", "")
    if local_ranks.isdigit() and int(local_ranks) > 0:
        return max(1, available_cpus() // int(local_ranks))
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and 0 < int(omp) <= MAX_THREADS:
        return int(omp)
    return available_cpus()


def resolve_threads(threads: int | str | None = None, name: str = "threads") -> int:
    """The CPU thread count a command computes with: ``threads`` where given (``name`` is how the
    caller spells it in an error), else $BENCH_THREADS, else ``default_threads()``. A
    ``BenchError`` for anything but a whole number in 1..MAX_THREADS."""
    if threads is None and os.environ.get("BENCH_THREADS", "").strip():
        threads, name = os.environ["BENCH_THREADS"], "BENCH_THREADS"
    if threads is None:
        return default_threads()
    text = str(threads).strip()
    if isinstance(threads, bool) or not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_THREADS:
        fix = "; set it to a count or unset it" if name == "BENCH_THREADS" else ""
        raise BenchError(f"{name} must be a whole number of CPU threads in 1..{MAX_THREADS}, got {threads!r}{fix}")
    return int(text)


@contextlib.contextmanager
def using_threads(threads: int | str | None = None, name: str = "threads"):
    """Compute with ``resolve_threads(threads)`` torch CPU threads inside the block (the inter-op
    pool too, where torch still allows setting it: once, before any inter-op work); yields the
    count and restores the previous one after, so that an API call leaves its caller's setting."""
    n = resolve_threads(threads, name)
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # set already, or inter-op work has begun: it stays
        torch.set_num_interop_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


class ThreadPacer:
    """Runs a loop of like, short steps on a CPU at whichever of two thread counts is faster at the
    time: torch's count when the pacer is made (``wide``), or 1. Why: a parallel region waits for
    its slowest thread, and a thread whose CPU another process holds waits out a time slice, so on
    a shared machine a loop of thousands of tiny regions can run many times slower on all CPUs
    than on one, while on an idle machine it gains from them; only timing tells which holds.

    Each step is timed. The loop starts at 1 thread (the cheaper mistake) and after ``trials``
    steps tries the other count for up to ``trials`` steps: the trial's median against the median
    of the current count's last ``trials`` steps decides, and a trial step slower than twice the
    latter ends the trial as lost. The next trial comes ``every`` steps later, or later still after
    a lost trial that cost much, so that lost trials cost at most ``budget`` of the loop's time; but
    at once when the current count's steps have become twice as slow as when it was chosen
    (another process came).

    The count varies from step to step: use the pacer where the step's operators give the same
    numbers at any count (the caller's test says so). It leaves torch's count as it found it; not
    ``active`` (a loop on a GPU, say), it runs every step as it comes::

        with ThreadPacer() as pace:
            for ...:
                with pace.step():
                    ...
    """

    def __init__(self, active: bool = True, trials: int = 3, every: int = 16, budget: float = 0.02,
                 clock=time.perf_counter):
        import torch

        self._torch, self._clock = torch, clock
        self.wide = torch.get_num_threads()
        self.active = active and self.wide > 1
        self.current = 1  # the cheaper start: 1 thread loses a little on an idle machine, all do much on a busy one
        self.trials, self.every, self.budget = trials, every, budget
        self._recent: deque[float] = deque(maxlen=trials)  # the current count's latest step times
        self._trial: list[float] = []
        self._trying = False
        self._wait = trials  # steps at the current count before the next trial
        self._since = 0
        self._settled = math.inf  # the current count's median step when last chosen
        self.steps = {self.wide: 0, 1: 0}  # steps run at each count

    @property
    def other(self) -> int:
        return 1 if self.current == self.wide else self.wide

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.active:
            self._torch.set_num_threads(self.wide)
        return False

    @contextlib.contextmanager
    def step(self):
        """One step of the loop, at the count the pacer chooses."""
        if not self.active:
            yield
            return
        count = self.other if self._trying else self.current
        if self._torch.get_num_threads() != count:
            self._torch.set_num_threads(count)
        start = self._clock()
        yield
        self._record(count, self._clock() - start)

    def _record(self, count: int, seconds: float) -> None:
        self.steps[count] += 1
        if not self._trying:
            self._recent.append(seconds)
            self._since += 1
            slower = self._since >= self.trials and statistics.median(self._recent) > 2 * self._settled
            self._trying = self._since >= self._wait or slower
            return
        self._trial.append(seconds)
        base = max(statistics.median(self._recent), 1e-9)
        lost = seconds > 2 * base
        if len(self._trial) < self.trials and not lost:
            return
        trial, self._trial, self._trying, self._since = self._trial, [], False, 0
        if not lost and statistics.median(trial) < base:
            self.current = self.other
            self._recent.clear()
            self._recent.extend(trial)
            self._wait, self._settled = self.every, statistics.median(trial)
        else:  # the next trial waits until this one's extra time is at most `budget` of the steps between
            self._settled = base
            extra = sum(trial) / base - len(trial)
            self._wait = max(self.every, math.ceil(extra / self.budget))


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
    bf16, and it is slower than fp32, not faster (figures: docs and ``bench perf``'s bf16 row)."""
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
    in afresh: iGPT feature extraction spent a third of its CPU time in the kernel (the figures
    are in docs/performance.md; a test counts the page faults). No-op off glibc, or when the user set MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_
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
