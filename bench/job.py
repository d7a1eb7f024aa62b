"""One job: dataset -> backbone -> (activation files, cached) -> task -> one results file.

A job is identified by what it measures (``bench.identity.result_identity``); a finished results
file with the same identity is reused rather than recomputed unless ``rerun`` is set. Sweeps over
many jobs live in ``bench.sweep``; the Python API in ``bench.api``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backbones.base import Backbone, BackboneOptions, DataSpec, create_backbone, recorded_weights, weights_label
from bench import layers as selection
from bench.datasets import SplitData, load_split
from bench.distributed import Group, join_processes
from bench.errors import BenchError
from bench.extract import extract
from bench.files import check_writable
from bench.identity import activation_identity, result_identity
from bench.lock import exclusive
from bench.provenance import git_commit, now, versions
from bench.records import finished_run, results_path, run_id, write_results
from bench.registry import TASKS
from bench.store import cache_path
from tasks.base import RunContext, Task


@dataclass(frozen=True)
class Job:
    """One combination of a sweep: which backbone and weights, dataset, task and seed."""

    backbone: str
    dataset: str
    task: str
    options: BackboneOptions = BackboneOptions()  # ``options.seed`` is the job's seed
    task_options: dict = field(default_factory=dict)  # KEY -> value (text or parsed)

    @property
    def seed(self) -> int:
        """The seed of the random init, the ``--limit`` subsets and the task: one per job, so a
        sweep over seeds is a sweep over jobs."""
        return self.options.seed

    def describe(self) -> str:
        weights = f" --weights {self.options.weights}" if self.options.weights else ""
        return f"{self.backbone}{weights} · {self.task} · {self.dataset} · seed {self.seed}"


@dataclass(frozen=True)
class Settings:
    """What every job of a sweep shares."""

    layers: str | list[str] | None = "all"
    data_root: str | None = None
    limit: int | None = None
    tag: str | None = None
    batch_size: int = 256
    device: str = "cpu"
    precision: str = "fp32"  # of the extraction forward: fp32, bf16 or auto (bf16 on a GPU)
    results_dir: str | Path = "bench-results"
    cache_dir: str | Path | None = None
    rerun: bool = False
    quiet: bool = False
    log: Callable[[str], None] | None = None  # notes such as "reused <file>"; None: silent


@dataclass
class Outcome:
    """What a job produced: its results file and records, and whether it ran or was reused."""

    job: Job
    status: str  # "ran" or "skipped" (a finished file with the same identity existed)
    path: Path
    records: list[dict]
    task: Task


@dataclass
class Prepared:
    """A job checked and resolved, before any extraction or training: what it computes
    (``identity``) and where its results file goes (``out``)."""

    job: Job
    task: Task
    options: dict  # the task's parsed options
    splits: tuple[str, ...]
    data: dict[str, SplitData]
    backbone: Backbone
    layers: list[str]
    precision: str
    identity: dict
    out: Path


def prepare(job: Job, settings: Settings) -> Prepared:
    """Every check a job makes before any work, and its identity and results path; writes nothing
    (``bench run --dry-run`` stops here)."""
    task = TASKS.get(job.task)()
    options = task.parse_options(job.task_options)
    splits = task.splits_for(options)
    data = {split: load_split(job.dataset, split, settings.data_root, settings.limit, job.seed) for split in splits}
    backbone = create_backbone(job.backbone, DataSpec.of(data[splits[0]].images), job.options)
    if task.requires_generative and not getattr(backbone, "generative", False):
        raise BenchError(f"task {job.task!r} needs a generative backbone (e.g. igpt); {job.backbone!r} is not one")
    layers = selection.parse(settings.layers, list(backbone.layers), backbone.name)
    if task.needs_classes:
        classes = np.unique(data[splits[0]].labels)
        if len(classes) < 2:
            raise BenchError(f"dataset {job.dataset!r} has a single class ({classes[0] if len(classes) else 'none'}) "
                             f"in {splits[0]}; task {job.task!r} needs at least two classes to tell apart")
    task.check(options, data)
    from bench.runtime import resolve_precision

    precision = resolve_precision(settings.precision, settings.device) if task.reads == "activations" else "fp32"
    identity = result_identity(
        fingerprint=backbone.fingerprint, dataset=job.dataset,
        data_digests={s: d.digest for s, d in data.items()},
        task=job.task, options=options, layers=layers, seed=job.seed, limit=settings.limit, tag=settings.tag,
        precision=precision)
    out = results_path(settings.results_dir, backbone.name, weights_label(backbone), identity)
    # records keep the weights as named (provenance text), not this machine's absolute path
    backbone.weights = recorded_weights(backbone.weights, job.options.weights, settings.results_dir)
    return Prepared(job, task, options, splits, data, backbone, layers, precision, identity, out)


def run_job(job: Job, settings: Settings) -> Outcome:
    """Validate everything first, then (unless a finished results file has the same identity)
    extract what the task needs, run it and write the results file."""
    t0 = time.time()
    log = settings.log or (lambda msg: None)
    p = prepare(job, settings)
    out, identity, task = p.out, p.identity, p.task
    # Under torchrun rank 0 decides whether to skip, and tells the others (who must reach the
    # same collectives); it alone takes the lock below.
    rank, world, _, _ = join_processes(settings.device)
    group = Group(rank, world)
    done = group.share(finished_run(out, identity) if rank == 0 and not settings.rerun else None)
    if done is not None:
        log(f"skipped (done already; --rerun to redo): {out}")
        return Outcome(job, "skipped", out, done, task)
    check_writable(out, "--results folder")
    # One process computes a given result; another asked for the same waits, then reuses the file.
    with exclusive(out, "computing", log) if rank == 0 else contextlib.nullcontext():
        done = group.share(finished_run(out, identity) if rank == 0 and not settings.rerun else None)
        if done is not None:
            log(f"skipped (another process finished it while this one waited): {out}")
            return Outcome(job, "skipped", out, done, task)
        return _compute(p, settings, t0, rank)


def _compute(p: Prepared, settings: Settings, t0: float, rank: int) -> Outcome:
    job, task, backbone, out = p.job, p.task, p.backbone, p.out
    log = settings.log or (lambda msg: None)
    ctx = RunContext(backbone=backbone, layers=p.layers, options=p.options, seed=job.seed,
                     device=settings.device, dataset=job.dataset, data=p.data, artifacts=out.with_suffix(""),
                     cache_dir=settings.cache_dir, log=log, quiet=settings.quiet)
    cache = {}
    # The activation files stay in place (bench cache prune) until the results file names them.
    with contextlib.ExitStack() as held:
        if task.reads == "model":
            backbone.to(settings.device)
        else:
            needed = selection.members(p.layers, list(backbone.layers))  # a group's layers, each once
            for split in p.splits:
                ctx.acts[split], cache[split] = _extract_held(held, backbone, p.data[split], needed, settings,
                                                              job.seed, p.precision, log)
                log(f"{split}: {cache[split]} {ctx.acts[split].path}")
        t_inputs = time.time() - t0
        if rank != 0 and task.reads == "activations":
            # Under torchrun the ranks shared the extraction; a probe of the features is rank 0's.
            return Outcome(job, "ran", out, [], task)
        raw = task.run(ctx)
        if not raw:
            raise BenchError(f"task {job.task!r} produced no results")
        records, run_info = _stamp(job, settings, backbone, p.identity, p.layers, p.options, p.data, ctx.acts, cache,
                                   raw)
        run_info["seconds"] = {"inputs": round(t_inputs, 3), "total": round(time.time() - t0, 3)}
        if rank != 0:  # under torchrun, rank 0 writes the results file
            return Outcome(job, "ran", out, [dict(r, file=str(out)) for r in records], task)
        if ctx.predictions:  # written first: a results file that exists implies its predictions do
            from bench.paired import write_predictions

            run_info["predictions"] = write_predictions(out, run_info["run"], p.data, p.identity["data"],
                                                        ctx.predictions)
        path = write_results(out, run_info, records)
        return Outcome(job, "ran", path, [dict(r, file=str(path)) for r in records], task)


def _stamp(job: Job, settings: Settings, backbone: Backbone, identity: dict, layers: list[str], options: dict,
           data: dict[str, SplitData], acts: dict, cache: dict, raw: list[dict]) -> tuple[list[dict], dict]:
    """Records with the provenance stamped on, and the results file's ``run`` header."""
    import torch

    named = job.options.to_dict()
    named["weights"] = recorded_weights(named["weights"], job.options.weights, settings.results_dir)
    config = {"backbone_options": named, "task_options": options, "layers": layers,
              "batch_size": settings.batch_size, "device": settings.device, "data_root": settings.data_root,
              "precision": identity.get("precision", "fp32"),
              "threads": torch.get_num_threads()}  # CPU threads the run computed with: provenance, not identity
    stamp = {
        "backbone": backbone.name, "fingerprint": backbone.fingerprint, "weights": backbone.weights,
        "step": backbone.step, "tag": settings.tag, "run": run_id(identity), "dataset": job.dataset,
        "task": job.task, "seed": job.seed, "limit": settings.limit, "config": config,
        "versions": versions(), "git_commit": git_commit(), "time": now(),
    }
    # Depth order for tables: the selection's order, then layers the task added (a concatenation).
    order = {name: i for i, name in enumerate(layers)}
    for r in raw:
        order.setdefault(r.get("layer"), len(order))
    records = [dict(stamp, **r, layer_index=order[r.get("layer")]) for r in raw]
    run_info = {
        **stamp,
        "identity": identity,
        "backbone_provenance": backbone.provenance(),
        "splits": {s: {"rows": len(d), "activations": str(acts[s].path) if s in acts else None,
                       "cache": cache.get(s, "model"), "data": d.info} for s, d in data.items()},
    }
    return records, run_info


def _extract_held(held: contextlib.ExitStack, backbone, data, layers, settings: Settings, seed: int, precision: str,
                  log) -> tuple:
    """``extract`` with the file it gives held for reading (``bench.cache.reading``, kept in
    ``held``), so ``bench cache prune`` leaves it until the results file names it. The lock on the
    file the cache would make is taken before extracting; one on a reused file with more layers
    after, and a file pruned in between is extracted again."""
    from bench.cache import reading

    expected = cache_path(activation_identity(backbone, data, backbone.check_layers(layers), settings.limit, seed, precision),
                          settings.cache_dir)
    held.enter_context(reading(expected, log))
    for _ in range(3):
        acts, how = extract(backbone, data, layers, limit=settings.limit, seed=seed, cache_dir=settings.cache_dir,
                            batch_size=settings.batch_size, device=settings.device, precision=precision,
                            quiet=settings.quiet, log=log)
        if acts.path != expected:
            held.enter_context(reading(acts.path, log))
        if acts.path.is_file():
            return acts, how
        log(f"{acts.path} was removed (bench cache prune?) before this run could read it; extracting it again")
    raise BenchError(f"{acts.path} keeps being removed before this run can read it; stop the other process "
                     "pruning the cache, then rerun")
