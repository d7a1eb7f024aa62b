"""Runtime choices: device, seeds, progress bars."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def progress_bar(description: str, total: int, quiet: bool = False):
    """A rich progress bar, silent when ``quiet`` or when stderr is not a terminal."""
    if quiet or not sys.stderr.isatty():
        yield _Bar(None, None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as p:
        yield _Bar(p, p.add_task(description, total=total))
