"""`bench run`: dataset -> backbone -> activation files (cached) -> task -> results file."""

from __future__ import annotations

import time
from pathlib import Path

from backbones.base import BackboneOptions, DataSpec, create_backbone
from bench.datasets import load_split
from bench.errors import BenchError
from bench.extract import extract
from bench.provenance import git_commit, now, versions
from bench.records import results_path, write_results
from bench.registry import TASKS
from bench.store import check_writable


def run(
    *,
    backbone: str,
    task: str,
    dataset: str,
    options: BackboneOptions,
    task_options: tuple[str, ...] = (),
    layers: str | None = "all",
    data_root: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str = "cpu",
    results_dir: str | Path = "bench-results",
    cache_dir: str | Path | None = None,
    quiet: bool = False,
    log=lambda msg: None,
):
    """Validate everything first, then extract what the task needs and run it.

    Returns (task object, records, results path).
    """
    t0 = time.time()
    task_obj = TASKS.get(task)()
    topts = task_obj.parse_options(task_options)
    defaults = task_obj.parse_options(())
    changed = {k: v for k, v in topts.items() if v != defaults[k]}
    out = results_path(results_dir, backbone, dataset, task, seed, limit, changed)
    if getattr(task_obj, "reads", "activations") == "model":
        # A task that holds the model (generative scores): no activation files.
        splits = task_obj.splits_for(topts)
        data = {s: load_split(dataset, s, data_root, limit, seed) for s in splits}
        bb = create_backbone(backbone, DataSpec.of(data[splits[0]].images), options)
        if not getattr(bb, "generative", False):
            raise BenchError(f"task {task!r} needs a generative backbone (e.g. igpt); {backbone!r} is not one")
        check_writable(out, "--results folder")
        bb.to(device)
        layer_list, acts, how = ["model"], {}, {s: "model" for s in splits}
        t_extract = time.time() - t0
        raw = task_obj.run_model(bb, data, options=topts, seed=seed, quiet=quiet)
    else:
        splits = task_obj.splits
        bb, layer_list, data, acts, how = extract_splits(
            backbone=backbone, dataset=dataset, splits=splits, options=options, layers=layers,
            data_root=data_root, limit=limit, seed=seed, batch_size=batch_size, device=device,
            cache_dir=cache_dir, quiet=quiet, log=log, before_work=lambda: check_writable(out, "--results folder"),
        )
        t_extract = time.time() - t0
        raw = task_obj.run(acts, layer_list, options=topts, seed=seed, device=device, quiet=quiet)
    if not raw:
        raise BenchError(f"task {task!r} produced no results")

    config = {"backbone_options": options.to_dict(), "task_options": topts, "layers": layer_list,
              "batch_size": batch_size, "device": device, "data_root": data_root}
    stamp = {
        "backbone": backbone, "fingerprint": bb.fingerprint, "dataset": dataset, "task": task,
        "seed": seed, "limit": limit, "config": config, "versions": versions(),
        "git_commit": git_commit(), "time": now(),
    }
    records = [dict(stamp, **r, layer_index=layer_list.index(r["layer"]) if r.get("layer") in layer_list else None)
               for r in raw]
    run_info = {
        **stamp,
        "backbone_provenance": bb.provenance(),
        "splits": {s: {"rows": len(data[s]), "activations": str(acts[s].path) if s in acts else None,
                       "cache": how[s], "data": data[s].info} for s in splits},
        "seconds": {"extract": round(t_extract, 3), "total": round(time.time() - t0, 3)},
    }
    path = write_results(out, run_info, records)
    return task_obj, records, path


def extract_splits(*, backbone, dataset, splits, options, layers, data_root, limit, seed, batch_size,
                   device, cache_dir=None, quiet=False, log=lambda msg: None, before_work=lambda: None):
    """Load the splits, build the backbone, validate layers, then extract (or reuse) each split.

    ``before_work`` runs after all validation and before anything is written.
    """
    data = {s: load_split(dataset, s, data_root, limit, seed) for s in splits}
    bb = create_backbone(backbone, DataSpec.of(data[splits[0]].images), options)
    layer_list = bb.check_layers(layers)
    before_work()
    acts, how = {}, {}
    for s in splits:
        acts[s], how[s] = extract(bb, data[s], layer_list, limit=limit, seed=seed, cache_dir=cache_dir,
                                  batch_size=batch_size, device=device, quiet=quiet, log=log)
        log(f"{s}: {how[s]} {acts[s].path}")
    return bb, layer_list, data, acts, how
