"""Training batches drawn from uint8 images: a seeded order per epoch, and pad-crop-flip augmentation.

Every draw comes from the seed and the epoch, so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np


def epoch_order(n: int, batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The global batches of one epoch: a seeded permutation, the last partial batch dropped."""
    perm = np.random.default_rng([seed, epoch, 0]).permutation(n)
    return [perm[k * batch : (k + 1) * batch] for k in range(n // batch)]


def augment(images: np.ndarray, rng: np.random.Generator, pad: int, flip: bool) -> np.ndarray:
    """Pad (B, H, W, C) uint8 images by ``pad`` black pixels, crop back to H x W at a random
    offset per image, and mirror half of them left-right when ``flip``."""
    count, height, width, _ = images.shape
    dy = rng.integers(0, 2 * pad + 1, count)
    dx = rng.integers(0, 2 * pad + 1, count)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = dy[:, None] + np.arange(height)
    cols = dx[:, None] + np.arange(width)
    if flip:
        cols = np.where((rng.random(count) < 0.5)[:, None], cols[:, ::-1], cols)
    return padded[np.arange(count)[:, None, None], rows[:, :, None], cols[:, None, :]]
