"""Metrics the tasks share: top-1 accuracy and its binomial standard error, in percent, so that
every task's ``top1`` record means the same number."""

from __future__ import annotations

import math

import numpy as np


def binomial_se(correct: int, n: int) -> float:
    """The binomial standard error of an accuracy of ``correct`` out of ``n``, in percent."""
    p = correct / max(n, 1)
    return 100.0 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def top1(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Accuracy in percent and its binomial standard error."""
    correct = int((pred == y).sum())
    return 100.0 * (correct / max(len(y), 1)), binomial_se(correct, len(y))
