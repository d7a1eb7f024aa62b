"""Backbone x dataset split -> activation file: the extraction step of the pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backbones.base import Backbone
from bench.datasets import SplitData
from bench.distributed import Group, join_processes
from bench.files import check_writable
from bench.identity import activation_identity
from bench.provenance import git_commit, now, versions
from bench.runtime import progress_bar
from bench.store import ActivationFile, cache_path, find_superset, open_activations
from bench.store_writer import shard_rows, write_activations


def extract(
    backbone: Backbone,
    data: SplitData,
    layers: list[str],
    *,
    limit: int | None,
    seed: int,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    precision: str = "fp32",
    quiet: bool = False,
    log=lambda msg: None,
) -> tuple[ActivationFile, str]:
    """Stream ``backbone``'s pooled features for ``data`` into an HDF5 file (cached by default).
    ``precision``: fp32, or bf16 (autocast around the forward; stored as float32)."""
    from bench.runtime import autocast_for, resolve_precision, warn_slow_bf16

    precision = resolve_precision(precision, device)
    rank, world, device, _ = join_processes(device)  # under torchrun each rank extracts a shard of rows
    if rank == 0:
        warn_slow_bf16(precision, device, log)
    layers = backbone.check_layers(layers)
    ident = activation_identity(backbone, data, layers, limit, seed, precision)
    if not out:
        found = find_superset(ident, cache_dir, log) if rank == 0 else None
        shared = Group(rank, world).share(found.path if found else None)  # rank 0 decides for all
        reusable = found or (open_activations(shared) if shared else None)
        if reusable is not None:
            more = set(reusable.layers) > set(layers)
            return reusable, "reused (a cached file with more layers)" if more else "reused"
    path = Path(out) if out else cache_path(ident, cache_dir)
    check_writable(path, "--out" if out else "cache folder ($BENCH_CACHE)")
    widths = backbone.layer_widths()
    provenance = {
        **backbone.provenance(),
        "data": data.info,
        "layers": {layer: widths[layer] for layer in layers},
        "batch_size": batch_size,
        "device": device,
        "precision": precision,
        "versions": versions(),
        "git_commit": git_commit(),
        "created": now(),
    }
    backbone.to(device)
    n = len(data)

    def batches(start: int, stop: int):
        import torch

        for begin in range(start, stop, batch_size):
            end = min(begin + batch_size, stop)
            # The extraction step owns inference mode: backbones' features() stay differentiable.
            with torch.inference_mode(), autocast_for(precision, device):
                feats = backbone.features(backbone.preprocess(data.images[begin:end]), layers)
            yield begin, end, {layer: np.asarray(feats[layer].cpu().float().numpy(), dtype=np.float32)
                               for layer in layers}

    lo, hi = shard_rows(n, batch_size, rank, world)
    shard = f" (rows {lo}-{hi} of {n}, rank {rank} of {world})" if world > 1 else ""
    with progress_bar(f"extract {backbone.name} {data.info['dataset']}/{data.info['split']}{shard}", hi - lo,
                      quiet or rank != 0) as bar:
        return write_activations(
            path, ident, provenance, n, data.labels, data.indices, {layer: widths[layer] for layer in layers},
            batches, batch_size=batch_size, progress=bar, log=log if rank == 0 else (lambda msg: None),
            rank=rank, world=world, owned=not out,
        )
