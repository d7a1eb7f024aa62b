"""The Python API: what the ``bench`` CLI does, callable from a notebook or a script.

    from bench import api
    df = api.run("resnet18", "linear-probe", "digits", limit=500)   # -> pandas DataFrame
    df = api.run("igpt", ["linear-probe", "bits-per-dim"], "digits", weights="runs/tiny/checkpoints/*")
    acts = api.extract("pixels", "digits", "test")                   # -> ActivationFile
    table = api.report("bench-results/", best=True)                  # -> pandas DataFrame
    pairs = api.paired("runs/a.json", "runs/b.json")                 # McNemar p, paired 95% interval

``run`` writes the same results files as ``bench run`` and returns their records as the tidy
frame of ``bench report`` (plus the provenance columns). Mistakes raise ``bench.BenchError`` with
the same one-line message the CLI prints (``bench.errors.BenchError``).
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path

import pandas as pd

from bench.errors import BenchError


def _device(device: str) -> str:
    from bench.runtime import pick_device

    return pick_device(device)


def run(backbone, task, dataset, *, weights=None, pretrained: bool = False, image_size: int | None = None,
        seed=0, layers="all", options=None, limit: int | None = None, data_root: str | None = None,
        tag: str | None = None, results: str | Path = "bench-results", cache: str | Path | None = None,
        batch_size: int = 256, device: str = "auto", precision: str = "fp32", rerun: bool = False,
        dry_run: bool = False, threads: int | None = None, quiet: bool = True, log=None, shard=None,
        submit: str | None = None, submit_options=None) -> pd.DataFrame:
    """Run ``task`` on ``backbone`` × ``dataset``; any of backbone, weights, task and dataset may be
    a list (a sweep over their product; a weights glob expands to every match in step order).
    Finished runs with the same identity in ``results`` are reused unless ``rerun``.

    ``seed``: an int, or several (a list, a ``range``, or text such as ``"0..4"``, both ends
    included): a sweep axis, one results file per seed.
    ``dry_run``: run nothing and write nothing; return the plan instead, a row per job (and
    study) with ``plan`` ("run", "skip" or "refuse"), ``job``, ``seed``, ``path`` and ``reason``.

    ``options``: {key: value} or ["key=value", ...], shared out to the tasks that declare each key.
    ``precision``: of the extraction forward, fp32 (default), bf16 or auto (bf16 on a GPU).
    ``threads``: CPU threads to compute with (default: $BENCH_THREADS, else the CPUs this process
    may use); the caller's count is put back after.
    ``shard``: ``"K/N"`` or ``(K, N)``, 0 <= K < N: only share K of the sweep's jobs, dealt by
    what each job is, so N processes over one ``results`` folder and cache run the whole sweep
    (``bench.sweep.shard``); an empty share returns an empty frame.
    ``submit``: "slurm" hands each job to Slurm through submitit and waits for them ("local":
    submitit's executor on this machine, for testing); ``submit_options``: {key: value} or
    ["key=value", ...] for the executor (``timeout_min``, ``gpus_per_node``, ``slurm_partition``).
    Returns the records of every job as one DataFrame; raises BenchError naming the failed jobs
    (after running all the others) when any failed.
    """
    from bench import sweep
    from bench.job import Settings
    from bench.runs import frame
    from bench.runtime import keep_freed_memory, resolve_threads, using_threads

    keep_freed_memory()  # as the CLI does: batches reuse freed memory instead of faulting it in afresh
    args = _checked(backbone=backbone, task=task, dataset=dataset, weights=weights, image_size=image_size, layers=layers,
                    options=options, limit=limit, data_root=data_root, tag=tag, results=results, cache=cache,
                    batch_size=batch_size, device=device, precision=precision, log=log)
    limit, batch_size, image_size = args["limit"], args["batch_size"], args["image_size"]
    asked_threads = threads
    threads = resolve_threads(threads)  # a bad count is refused before anything else
    share = sweep.parse_shard(shard)
    runner = None
    if submit is not None:
        from bench import submit as submitting

        params = submitting.parse_params(submit_options)
        submitting.check(submit, params)
        device = submitting.device_name(device) if submit == "slurm" else _device(device)  # on each job's node
        runner = submitting.runner(submit, params, asked_threads, log)
    elif submit_options:
        raise BenchError("submit_options go with submit='slurm' (or 'local')")
    else:
        device = _device(device)
    settings = Settings(layers=layers, data_root=data_root, limit=limit, tag=tag,
                        batch_size=batch_size, device=device, precision=precision, results_dir=results,
                        cache_dir=cache, rerun=rerun, quiet=quiet, log=log)
    plan = sweep.shard(sweep.plan(backbones=backbone, datasets=dataset, tasks=task, weights=_weights_list(weights),
                                  pretrained=pretrained, image_size=image_size, task_options=options or (), seeds=seed,
                                  settings=settings), share)
    if dry_run:
        return pd.DataFrame([{"plan": p.status, "job": p.job.describe(), "seed": p.job.seed,
                              "path": None if p.path is None else str(p.path), "reason": p.message}
                             for p in sweep.dry_run(plan)], columns=["plan", "job", "seed", "path", "reason"])
    if not plan.jobs and not plan.studies:  # an empty shard
        return frame([])
    with using_threads(threads):
        outcomes, failures = sweep.execute(plan, runner=runner)
    if failures:
        total = len(plan.jobs) + len(plan.studies)
        lines = sweep.failure_lines(failures, total)
        if len(lines) == 1 and lines[0][0] > 1:  # all failed the same way: the message once
            raise BenchError(f"{len(failures)} of {total} jobs failed: {lines[0][2]}")
        listed = "; ".join(f"{who}: {what}" for _, who, what in lines)
        raise BenchError(f"{len(failures)} of {total} jobs failed: {listed}")
    return frame([r for outcome in outcomes for r in outcome.records])


def _weights_list(weights) -> list[str]:
    if weights is None:
        return []
    return [str(weights)] if isinstance(weights, (str, Path)) else [str(w) for w in weights]


def extract(backbone: str, dataset: str, split: str, *, layers="all", weights=None, pretrained: bool = False,
            image_size: int | None = None, seed: int = 0, limit: int | None = None, data_root: str | None = None,
            out: str | Path | None = None, cache: str | Path | None = None, batch_size: int = 256,
            device: str = "auto", precision: str = "fp32", threads: int | None = None, quiet: bool = True, log=None):
    """Export pooled layer activations of one split to HDF5 (reusing or resuming the cache);
    returns the opened ``bench.store.ActivationFile`` (``.path``, ``.labels``, ``.read(layer)``).
    ``.how`` says whether it was extracted, resumed or reused. ``threads``: as ``run``'s."""
    from backbones.base import BackboneOptions, DataSpec, create_backbone
    from bench.datasets import load_split
    from bench.extract import extract as extract_split
    from bench.runtime import keep_freed_memory, resolve_threads, using_threads

    keep_freed_memory()  # as the CLI does
    _name("--backbone", backbone), _name("--dataset", dataset), _optional_path("--weights", weights)
    args = _checked(split=split, layers=layers, image_size=image_size, seed=seed, limit=limit, data_root=data_root,
                    out=out, cache=cache, batch_size=batch_size, device=device, precision=precision, log=log)
    limit, batch_size, image_size, seed = args["limit"], args["batch_size"], args["image_size"], args["seed"]
    threads = resolve_threads(threads)  # a bad count is refused before anything else
    data = load_split(dataset, split, data_root, limit, seed)
    options = BackboneOptions(pretrained=pretrained, weights=None if weights is None else str(weights),
                              image_size=image_size, seed=seed)
    model = create_backbone(backbone, DataSpec.of(data.images), options)
    with using_threads(threads):
        acts, how = extract_split(model, data, model.check_layers(layers), limit=limit, seed=seed, out=out,
                                  cache_dir=cache, batch_size=batch_size, device=_device(device), precision=precision,
                                  quiet=quiet,
                                  log=log or (lambda msg: None))
    acts.how = how
    return acts


def report(*paths, best: bool = False) -> pd.DataFrame:
    """Results files or folders -> the tidy frame of ``bench report`` (all columns); with
    ``best``, a boolean ``best`` column marks each run's layer with the best val top-1."""
    from bench.runs import load, mark_best

    df = load(_paths(paths))
    return mark_best(df) if best else df


def compare(*paths, against: str | None = None, all_metrics: bool = False) -> pd.DataFrame:
    """Two or more runs of one dataset and task side by side: a column each in run order (runs that
    differ only in seed pooled: mean, ``± …`` std), Δ against the first (or ``against``: a run id,
    results file or run label), then each run's best layer by val top-1. Folders contribute every
    run in them; study files and the settings tasks chose (L2, k, epoch) are left out unless
    ``all_metrics``. Runs of several (dataset, task) pairs: ``compare_tables``."""
    from bench.compare import compare as side_by_side

    return side_by_side(_compare_frame(paths), against, all_metrics)


def compare_tables(*paths, against: str | None = None, all_metrics: bool = False) -> list[tuple[str, pd.DataFrame]]:
    """``compare`` per (dataset, task) of the runs given: [(title, DataFrame)]."""
    from bench.compare import compare_tables as tables

    return tables(_compare_frame(paths), against, all_metrics)


def _compare_frame(paths) -> pd.DataFrame:
    from bench.records import collect
    from bench.runs import load

    files = [str(f) for f in collect(_paths(paths))]
    if len(files) < 2:
        raise BenchError(f"compare needs two or more runs; {' '.join(map(str, _paths(paths)))} holds {len(files)}")
    df = load(files)
    twice = df.drop_duplicates("file").groupby("run").file.agg(list)
    twice = twice[twice.map(len) > 1]
    if len(twice):
        run, where = twice.index[0], twice.iloc[0]
        raise BenchError(f"{where[0]} and {where[1]} hold the same run ({run}): a copy, or one run in two folders; "
                         "compare each run once")
    return df


def paired(*paths, layers=None, against: str | None = None) -> pd.DataFrame:
    """Paired differences on the same test examples (``bench compare``'s second table): per
    dataset and task, every other run against the first in run order, or ``against`` (their layers
    chosen by val, then each layer both have), or with ``layers=("h2", "h4")`` layer h4 against h2
    within each run.
    Columns: top-1 A and B, Δ = B − A (points), ``Δ low``/``Δ high`` (95% paired-bootstrap
    interval), ``A only``/``B only`` (examples only that side got right), McNemar's exact ``p``,
    ``significant`` (p < 0.05) and a ``note`` where a pair cannot be paired (other examples, no
    predictions kept), whose paired columns are then empty."""
    from bench.paired import paired_table, parse_layer_pair
    from bench.records import collect
    from bench.runs import load

    pair = parse_layer_pair(",".join(layers) if isinstance(layers, (list, tuple)) else layers)
    files = [str(f) for f in collect(_paths(paths))]
    if len(files) < 2 and pair is None:
        raise BenchError(f"a paired comparison needs two runs, or two layers of one (layers=('h2', 'h4')); "
                         f"{' '.join(map(str, _paths(paths)))} holds {len(files)}")
    return paired_table(load(files), pair, against)


def per_class(*paths) -> list[tuple[str, pd.DataFrame]]:
    """``bench report --per-class``'s tables: per dataset and task, the per-class test top-1 of each
    run's layer chosen by val, then a confusion matrix per run: [(title, DataFrame)]."""
    from bench.paired import per_class_tables
    from bench.runs import load

    return per_class_tables(load(_paths(paths)))


def _paths(paths) -> list:
    flat = []
    for p in paths:
        flat += [p] if isinstance(p, (str, os.PathLike)) else list(p) if isinstance(p, (list, tuple)) else [p]
    for p in flat:
        if not isinstance(p, (str, os.PathLike)):
            raise BenchError(f"name results files or folders (str or pathlib.Path), got {_short(p)}")
    if not flat:
        raise BenchError("name at least one results file or folder")
    return flat


# -- the CLI's checks, for Python values -----------------------------------------------------------
# click checks the CLI's types and ranges before any work; these do the same for the API's
# arguments, so a mistake is one BenchError with the CLI's wording, never a TypeError midway.

MAX_BATCH_SIZE = 65536  # as the CLI's --batch-size


def _checked(**values) -> dict:
    """Each argument (by its API name) checked as the CLI checks its option; numbers as ints."""
    return {name: _CHECKS[name]("--" + name.replace("_", "-"), value) for name, value in values.items()}


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _name(flag: str, value):
    if not isinstance(value, str):
        raise BenchError(f"{flag} takes a name (text), got {_short(value)}")
    return value


def _names(flag: str, value):
    if not (isinstance(value, str) or isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
        raise BenchError(f"{flag} takes a name or a list of names (text), got {_short(value)}")
    return value


def _path(flag: str, value):
    if not isinstance(value, (str, os.PathLike)):
        raise BenchError(f"{flag} takes a path (str or pathlib.Path), got {_short(value)}")
    return value


def _optional_path(flag: str, value):
    return None if value is None else _path(flag, value)


def _weights(flag: str, value):
    if value is None or isinstance(value, (str, os.PathLike)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, os.PathLike)) for v in value):
        return value
    raise BenchError(f"{flag} takes a path, a glob or a list of them, got {_short(value)}")


def _layers(flag: str, value):
    if value is None or isinstance(value, str) or isinstance(value, (list, tuple)) and all(isinstance(v, str)
                                                                                          for v in value):
        return value
    raise BenchError(f"{flag} takes 'all', comma-separated layer names or a list of names, got {_short(value)}")


def _options(flag: str, value):
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return value
    raise BenchError(f"options takes {{key: value}} or a list of 'key=value' texts (e.g. {{'k': 20}} or ['k=20']), "
                     f"got {_short(value)}")


def _integer(lo: int, hi: int | None = None, *, optional: bool = False):
    def check(flag: str, value):
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not (
                lo <= value and (hi is None or value <= hi)):
            span = f"an integer in {lo}..{hi}" if hi is not None else "a positive integer"
            raise BenchError(f"{flag} must be {span}, got {_short(value)}")
        return int(value)

    return check


def _tag(flag: str, value):
    if value is not None and not isinstance(value, str):
        raise BenchError(f"{flag} takes text (letters, digits, '.', '_', '+' or '-'), got {_short(value)}")
    return value


def _device_name(flag: str, value):
    if not isinstance(value, str):
        raise BenchError(f"{flag} must be auto, cpu or cuda[:N], got {_short(value)}")
    return value


def _precision(flag: str, value):
    if not isinstance(value, str) or value not in ("fp32", "bf16", "auto"):
        raise BenchError(f"precision {_short(value)} is not one of auto, fp32, bf16")
    return value


def _log(flag: str, value):
    if value is not None and not callable(value):
        raise BenchError(f"log takes a function of one message (or None), got {_short(value)}")
    return value


_CHECKS = {
    "backbone": _names, "task": _names, "dataset": _names, "split": _name, "weights": _weights, "layers": _layers,
    "options": _options, "limit": _integer(1, optional=True), "batch_size": _integer(1, MAX_BATCH_SIZE),
    "image_size": _integer(1, 1024, optional=True),  # BackboneOptions.MAX_IMAGE_SIZE
    "seed": _integer(0, 2**32 - 1),  # bench.datasets.MAX_SEED
    "data_root": _optional_path, "cache": _optional_path, "out": _optional_path,
    "results": _path, "tag": _tag, "device": _device_name, "precision": _precision, "log": _log,
}
