"""Image grids as PNG files, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_grid(images: np.ndarray, cols: int, path: str | Path, scale: int | None = None, pad: int = 2) -> Path:
    """uint8 (N, H, W, C) -> one PNG, ``cols`` images a row, each enlarged ``scale`` times
    (default: to about 64 pixels)."""
    from PIL import Image

    n, h, w, c = images.shape
    scale = scale or max(1, round(64 / max(h, w)))
    rows = -(-n // cols)
    H, W = h * scale, w * scale
    canvas = np.full((rows * (H + pad) + pad, cols * (W + pad) + pad, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, k = divmod(i, cols)
        big = np.repeat(np.repeat(im, scale, 0), scale, 1)
        if c == 1:
            big = np.repeat(big, 3, axis=2)
        y, x = pad + r * (H + pad), pad + k * (W + pad)
        canvas[y : y + H, x : x + W] = big
    import io

    from bench.files import atomic_write_bytes

    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())
