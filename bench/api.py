"""The Python API: what the ``bench`` CLI does, callable from a notebook or a script.

    from bench import api
    df = api.run("resnet18", "linear-probe", "digits", limit=500)   # -> pandas DataFrame
    df = api.run("igpt", ["linear-probe", "bits-per-dim"], "digits", weights="runs/tiny/checkpoints/*")
    acts = api.extract("pixels", "digits", "test")                   # -> ActivationFile
    table = api.report("bench-results/", best=True)                  # -> pandas DataFrame

``run`` writes the same results files as ``bench run`` and returns their records as the tidy
frame of ``bench report`` (plus the provenance columns). Mistakes raise ``bench.BenchError`` with
the same one-line message the CLI prints (``bench.errors.BenchError``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.errors import BenchError


def _device(device: str) -> str:
    from bench.runtime import pick_device

    return pick_device(device)


def run(backbone, task, dataset, *, weights=None, pretrained: bool = False, image_size: int | None = None,
        seed: int = 0, layers="all", options=None, limit: int | None = None, data_root: str | None = None,
        tag: str | None = None, results: str | Path = "bench-results", cache: str | Path | None = None,
        batch_size: int = 256, device: str = "auto", precision: str = "fp32", rerun: bool = False,
        quiet: bool = True, log=None) -> pd.DataFrame:
    """Run ``task`` on ``backbone`` × ``dataset``; any of backbone, weights, task and dataset may be
    a list (a sweep over their product; a weights glob expands to every match in step order).
    Finished runs with the same identity in ``results`` are reused unless ``rerun``.

    ``options``: {key: value} or ["key=value", ...], shared out to the tasks that declare each key.
    ``precision``: of the extraction forward, fp32 (default), bf16 or auto (bf16 on a GPU).
    Returns the records of every job as one DataFrame; raises BenchError naming the failed jobs
    (after running all the others) when any failed.
    """
    from bench import sweep
    from bench.job import Settings
    from bench.report import frame

    settings = Settings(layers=layers, data_root=data_root, limit=limit, seed=seed, tag=tag,
                        batch_size=batch_size, device=_device(device), precision=precision, results_dir=results,
                        cache_dir=cache, rerun=rerun, quiet=quiet, log=log)
    plan = sweep.plan(backbones=backbone, datasets=dataset, tasks=task, weights=_weights_list(weights),
                      pretrained=pretrained, image_size=image_size, task_options=options or (), settings=settings)
    outcomes, failures = sweep.execute(plan)
    if failures:
        lines = "; ".join(f"{f.job.describe()}: {f.message}" for f in failures)
        raise BenchError(f"{len(failures)} of {len(plan.jobs) + len(plan.studies)} jobs failed: {lines}")
    return frame([r for outcome in outcomes for r in outcome.records])


def _weights_list(weights) -> list[str]:
    if weights is None:
        return []
    return [str(weights)] if isinstance(weights, (str, Path)) else [str(w) for w in weights]


def extract(backbone: str, dataset: str, split: str, *, layers="all", weights=None, pretrained: bool = False,
            image_size: int | None = None, seed: int = 0, limit: int | None = None, data_root: str | None = None,
            out: str | Path | None = None, cache: str | Path | None = None, batch_size: int = 256,
            device: str = "auto", precision: str = "fp32", quiet: bool = True, log=None):
    """Export pooled layer activations of one split to HDF5 (reusing or resuming the cache);
    returns the opened ``bench.store.ActivationFile`` (``.path``, ``.labels``, ``.read(layer)``).
    ``.how`` says whether it was extracted, resumed or reused."""
    from backbones.base import BackboneOptions, DataSpec, create_backbone
    from bench.datasets import load_split
    from bench.extract import extract as extract_split

    data = load_split(dataset, split, data_root, limit, seed)
    options = BackboneOptions(pretrained=pretrained, weights=None if weights is None else str(weights),
                              image_size=image_size, seed=seed)
    model = create_backbone(backbone, DataSpec.of(data.images), options)
    acts, how = extract_split(model, data, model.check_layers(layers), limit=limit, seed=seed, out=out,
                              cache_dir=cache, batch_size=batch_size, device=_device(device), precision=precision,
                              quiet=quiet,
                              log=log or (lambda msg: None))
    acts.how = how
    return acts


def report(*paths, best: bool = False) -> pd.DataFrame:
    """Results files or folders -> the tidy frame of ``bench report`` (all columns); with
    ``best``, a boolean ``best`` column marks each run's layer with the best val top-1."""
    from bench.report import load, mark_best

    df = load(_paths(paths))
    return mark_best(df) if best else df


def compare(*paths) -> pd.DataFrame:
    """Two or more runs side by side (a column each, Δ against the first), with each run's best
    layer by val top-1. Folders contribute every run in them."""
    from bench.records import collect
    from bench.report import compare as side_by_side
    from bench.report import load

    files = [str(f) for f in collect(_paths(paths))]
    if len(files) < 2:
        raise BenchError(f"compare needs two or more runs; {' '.join(map(str, _paths(paths)))} holds {len(files)}")
    return side_by_side(load(files), files)


def _paths(paths) -> list:
    flat = []
    for p in paths:
        flat += [p] if isinstance(p, (str, Path)) else list(p)
    if not flat:
        raise BenchError("name at least one results file or folder")
    return flat
