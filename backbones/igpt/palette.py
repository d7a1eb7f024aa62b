"""Color palettes: k-means centers in [-1, 1], nearest-color quantization and its inverse.

RGB palettes have shape (K, 3) (512 colors by default, as the paper), grayscale ones (K, 1)
(16 levels by default). A grayscale image under an RGB palette is replicated to three channels;
an RGB image under a grayscale palette is an error. Pixels map to [-1, 1] as x / 127.5 - 1,
as transformers' ImageGPTImageProcessor does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.errors import BenchError

DEFAULT_COLORS = {3: 512, 1: 16}


class Palette:
    def __init__(self, centers):
        try:
            centers = np.asarray(centers, dtype=np.float32)
        except (TypeError, ValueError):  # ragged rows, text
            raise BenchError("a palette must be a (K, 3) or (K, 1) table of numbers, but its rows differ in length "
                             "or hold text; pass k-means centers of RGB (or gray) values in [-1, 1]") from None
        if centers.ndim != 2 or centers.shape[1] not in (1, 3) or len(centers) < 2:
            raise BenchError(f"a palette must have shape (K, 3) or (K, 1) with K >= 2, got {centers.shape}; "
                             "pass k-means centers of RGB (or gray) values in [-1, 1]")
        if not np.isfinite(centers).all() or np.abs(centers).max() > 1.0 + 1e-4:
            raise BenchError("palette values must be finite and in [-1, 1]; rescale them (x / 127.5 - 1)")
        self.centers = centers

    @property
    def n_colors(self) -> int:
        return len(self.centers)

    @property
    def channels(self) -> int:
        return self.centers.shape[1]

    # -- constructing ------------------------------------------------------------------------
    @classmethod
    def fit(cls, images: np.ndarray, n_colors: int | None = None, seed: int = 0,
            max_pixels: int = 200_000) -> Palette:
        """k-means (scikit-learn) on up to ``max_pixels`` pixels sampled from ``images``."""
        from sklearn.cluster import KMeans

        c = images.shape[-1]
        n_colors = n_colors or DEFAULT_COLORS[c]
        if not isinstance(images, np.ndarray):  # decoded on demand: decode just enough images
            per_image = int(np.prod(images.shape[1:3]))
            pick = np.random.default_rng(seed).permutation(len(images))[: -(-max_pixels // per_image)]
            images = images[np.sort(pick)]
        px = images.reshape(-1, c)
        rng = np.random.default_rng(seed)
        if len(px) > max_pixels:
            px = px[rng.choice(len(px), max_pixels, replace=False)]
        px = px.astype(np.float32) / 127.5 - 1.0
        distinct = len(np.unique(px, axis=0))
        if distinct < n_colors:
            raise BenchError(f"the data has only {distinct} distinct colors, fewer than {n_colors}; ask for fewer colors")
        km = KMeans(n_clusters=n_colors, n_init=1, random_state=seed, max_iter=100).fit(px)
        centers = km.cluster_centers_.astype(np.float32)
        order = np.lexsort(centers.T[::-1])  # a stable order: by first channel, then the next
        return cls(np.clip(centers[order], -1.0, 1.0))

    @classmethod
    def load(cls, path: str | Path) -> Palette:
        """From a transformers preprocessor_config.json (``clusters``), a .npy (OpenAI's
        kmeans_centers.npy) or our own palette .json."""
        path = Path(path)
        try:
            if path.suffix == ".npy":
                return cls(np.load(path, allow_pickle=False))
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise BenchError(f"cannot read palette {path} ({e}); pass a preprocessor_config.json or .npy") from None
        key = "clusters" if "clusters" in doc else "centers"
        if key not in doc:
            raise BenchError(f"{path} holds no 'clusters'; pass the preprocessor_config.json of an ImageGPT model")
        return cls(doc[key])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"centers": self.centers.tolist()}))

    # -- using -------------------------------------------------------------------------------
    def _to_unit(self, images: np.ndarray):
        import torch

        c = images.shape[-1]
        if c == 3 and self.channels == 1:
            raise BenchError("RGB images under a grayscale palette; use an RGB palette or grayscale data")
        x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)
        if c == 1 and self.channels == 3:
            x = x.expand(*x.shape[:-1], 3)
        return x

    def quantize(self, images: np.ndarray, batch: int = 65536) -> np.ndarray:
        """uint8 (N, H, W, C) -> int64 (N, H*W) indices of the nearest color, in raster order."""
        import torch

        x = self._to_unit(images).reshape(-1, self.channels)
        c = torch.from_numpy(self.centers)
        c2 = (c * c).sum(1)
        out = torch.empty(len(x), dtype=torch.int64)
        for s in range(0, len(x), batch):
            xb = x[s : s + batch]
            # |x|^2 - 2 x.c + |c|^2, summed in the same order as transformers' processor so that
            # near-ties break the same way.
            d = (xb * xb).sum(1, keepdim=True) - 2.0 * (xb @ c.T) + c2
            out[s : s + batch] = d.argmin(1)
        return out.view(len(images), -1).numpy()

    def dequantize(self, idx: np.ndarray, height: int, width: int) -> np.ndarray:
        """int (N, H*W) -> uint8 (N, H, W, C) with the palette's colors."""
        rgb = self.centers[np.asarray(idx)]
        px = np.clip(np.rint((rgb + 1.0) * 127.5), 0, 255).astype(np.uint8)
        return px.reshape(len(idx), height, width, self.channels)


def tokenize(images: np.ndarray, palette: Palette, height: int, width: int, batch: int = 4096) -> np.ndarray:
    """uint8 (N, H, W, C) -> palette indices (N, height*width) in raster order, resizing first
    (bilinear, antialiased, rounded back to uint8) when the images have another size."""
    import torch
    import torch.nn.functional as F

    out = []
    for s in range(0, len(images), batch):
        part = images[s : s + batch]
        if part.shape[1:3] != (height, width):
            x = torch.from_numpy(np.ascontiguousarray(part)).permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
            part = x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out.append(palette.quantize(part))
    return np.concatenate(out) if out else np.zeros((0, height * width), dtype=np.int64)
