"""Samples and completions of a generative backbone, drawn into PNG grids (`bench sample`,
`bench complete`): build the backbone, check what was asked, pick the images, save the grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backbones.base import BackboneOptions, DataSpec, create_backbone
from bench.errors import BenchError


def generative_backbone(name: str, options: BackboneOptions, spec: DataSpec, device: str = "cpu"):
    """A backbone that can sample (igpt with weights); a one-line error for any other."""
    backbone = create_backbone(name, spec, options)
    if not getattr(backbone, "generative", False):
        raise BenchError(f"backbone {name!r} cannot generate images; use an igpt backbone with --weights")
    return backbone.to(device)


def check_png(out) -> None:
    from bench.files import check_writable

    if not str(out).lower().endswith(".png"):
        raise BenchError(f"--out {out} must name a .png file")
    check_writable(out, "--out")


def sample_png(name: str, options: BackboneOptions, n: int, temperature: float, top_k: int | None, cols: int,
               out, device: str = "cpu") -> Path:
    """``n`` unconditional samples (seeded by ``options.seed``) in a grid of ``cols`` columns."""
    from bench.grid import save_grid

    if not 1 <= n <= 1024:
        raise BenchError(f"--n must lie in 1..1024, got {n}")
    if not options.weights:
        raise BenchError("bench sample needs --weights (a checkpoint, run folder or ImageGPT folder)")
    check_png(out)
    backbone = generative_backbone(name, options, DataSpec(1, 1, 1), device)
    images = backbone.sample(n, temperature, top_k, options.seed)
    return save_grid(images, min(cols, n), out)


def pick_images(images: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` images (all, when fewer) drawn without replacement by ``seed``, in dataset order."""
    idx = np.random.default_rng(seed).choice(len(images), size=min(n, len(images)), replace=False)
    return images[np.sort(idx)]


def completion_png(name: str, options: BackboneOptions, dataset: str, split: str, data_root, limit, n: int,
                   keep_rows: int, samples: int, temperature: float, top_k: int | None, out,
                   device: str = "cpu") -> Path:
    """Rows of (original, what the model saw, completions) for ``n`` images of a split."""
    from bench.datasets import load_split
    from bench.grid import save_grid

    if not 1 <= n <= 256:
        raise BenchError(f"--n must lie in 1..256, got {n}")
    if not 1 <= samples <= 32:
        raise BenchError(f"--samples must lie in 1..32, got {samples}")
    check_png(out)
    data = load_split(dataset, split, data_root, limit, options.seed)
    backbone = generative_backbone(name, options, DataSpec.of(data.images), device)
    rows = backbone.completion_grid(pick_images(data.images, n, options.seed), keep_rows, samples, temperature,
                                    top_k, options.seed)
    return save_grid(rows.reshape(-1, *rows.shape[2:]), rows.shape[1], out)
