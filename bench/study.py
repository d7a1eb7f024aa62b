"""Studies: tasks that combine other tasks' results over many checkpoints (``study = True`` on the
task class, e.g. ``correlation``).

``expand`` turns a study over backbones × weights of one dataset into its component jobs, the
ordinary jobs of ``bench.job`` (one per checkpoint and component task, each skipped when its
results file exists), and one ``StudyJob``; ``check`` refuses, before any work, what the study
cannot compare. ``run_study`` gathers the members' records, hands them to the task's ``combine``
and writes one results file ``study__<dataset>__<task>[__<tag>]__<id>.json`` whose identity is the
members' run ids and the study's options: a second call with nothing new recomputes nothing. The
study's plots go into its artifacts folder beside that file.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backbones.base import BackboneOptions, resolve
from bench.errors import BenchError
from bench.identity import study_identity
from bench.job import Job, Outcome, Settings
from bench.provenance import git_commit, now, versions
from bench.records import finished_run, run_id, write_results
from bench.registry import TASKS


@dataclass(frozen=True)
class StudyJob:
    """A study of one dataset: per checkpoint (a point) the component jobs that feed it."""

    task: str
    dataset: str
    options: dict  # the study's own parsed options
    points: tuple  # of tuples of Jobs: one tuple of component jobs per checkpoint
    seed: int = 0  # the study's own and its component jobs' (one study per seed of a sweep)

    def describe(self) -> str:
        return f"{self.task} study · {len(self.points)} checkpoints · {self.dataset} · seed {self.seed}"


def expand(task_name: str, task_options: dict, backbones: list[str], weights: list, dataset: str, *,
           pretrained: bool, image_size: int | None, seed: int, log=None) -> StudyJob:
    """The study's component jobs for every distinct backbone × weights (``distinct``), checked for
    what cannot be mixed; the study and its components share ``seed``."""
    task = TASKS.get(task_name)()
    options = task.parse_options(task_options)
    pairs, same = distinct([(b, w) for b in backbones for w in weights])
    twins: dict[str, list[str]] = {}
    for twin, first in same:
        twins.setdefault(first, []).append(twin)
    try:
        task.check_points(len(pairs), options)
    except BenchError as e:
        if not same:
            raise
        said = "; ".join(f"{', '.join(t)} {'is' if len(t) == 1 else 'are'} {first}" for first, t in twins.items())
        raise BenchError(f"{e} (counting the same weights files once: {said})") from None
    for first, t in twins.items():
        (log or (lambda msg: None))(f"{task.name}: --weights {', '.join(t)} {'holds' if len(t) == 1 else 'hold'} "
                                    f"the same files as {first}; counted once")
    check(task, pairs)
    points = tuple(
        tuple(Job(backbone=b, dataset=dataset, task=component, task_options=dict(component_options),
                  options=BackboneOptions(pretrained=pretrained, weights=w, image_size=image_size, seed=seed))
              for component, component_options in task.components(options).items())
        for b, w in pairs)
    return StudyJob(task_name, dataset, options, points, seed)


def check_components(study: StudyJob, settings: Settings) -> None:
    """The components' checks that need only the data (``Task.check``: sizes, budgets, classes),
    made once for the whole study before any of its runs: the data is the same for every
    checkpoint, so they would fail alike on each, after the others' work."""
    from bench.datasets import load_split

    for job in study.points[0]:
        task = TASKS.get(job.task)()
        options = task.parse_options(job.task_options)
        task.check(options, {split: load_split(job.dataset, split, settings.data_root, settings.limit, job.seed)
                             for split in task.splits_for(options)})


def distinct(pairs: list[tuple[str, str | None]]) -> tuple[list, list[tuple[str, str]]]:
    """The (backbone, weights) pairs without those that hold the same weights files as an earlier
    one, and (dropped weights, the earlier weights) for each dropped. One checkpoint named twice (a
    symlink, a copy, ``dir/./step-x``, a run folder and its latest checkpoint) is one point of a
    study, not two that agree by construction. Files are compared by size and their first and last
    MiB, and in full only where those agree, so that checkpoints of one run cost no full read."""
    from backbones.base import path_digest

    kept, same, seen = [], [], {}  # seen: (backbone, quick key) -> [(full digest or None, weights)]
    for backbone, weights in pairs:
        folder = _weights_path(weights)
        quick = _quick_digest(folder) if folder is not None else None
        if quick is None:
            kept.append((backbone, weights))
            continue
        twin = None
        for i, (full, other) in enumerate(seen.get((backbone, quick), [])):
            if folder == _weights_path(other):
                twin = other
                break
            full = full or path_digest(_weights_path(other))
            seen[(backbone, quick)][i] = (full, other)
            if path_digest(folder) == full:
                twin = other
                break
        if twin is None:
            kept.append((backbone, weights))
            seen.setdefault((backbone, quick), []).append((None, weights))
        else:
            same.append((weights, twin))
    return kept, same


def _weights_path(weights) -> Path | None:
    """The file or folder ``--weights`` loads, symlinks and ``.`` resolved: a pretraining run folder
    (one holding ``checkpoints/``) stands for its latest checkpoint, as it does when loaded. None
    for no weights or a name that is not a local path (a hub id)."""
    if weights is None or not Path(weights).exists():
        return None
    path = Path(weights).resolve()
    if path.is_dir() and (path / "checkpoints").is_dir():
        saved = sorted(p for p in (path / "checkpoints").glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
        path = saved[-1] if saved else path
    return path


def _quick_digest(path: Path) -> str | None:
    """A cheap key of a weights file or folder: each file's relative path, size and first and last
    MiB. Equal keys are confirmed by a full digest; None when the files cannot be read (the run says why)."""
    import hashlib

    h = hashlib.sha256()
    try:
        files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
        for f in files:
            size = f.stat().st_size
            h.update(f"{f.relative_to(path) if f != path else ''}\0{size}\n".encode())
            with f.open("rb") as handle:
                h.update(handle.read(1 << 20))
                if size > 2 << 20:
                    handle.seek(size - (1 << 20))
                    h.update(handle.read(1 << 20))
    except OSError:
        return None
    return h.hexdigest()


def check(task, pairs: list[tuple[str, str | None]]) -> None:
    """Generative backbones only, and one palette and one training dataset across the checkpoints
    (bits/dim and samples compare only under one palette)."""
    infos = []
    for backbone, weights in pairs:
        cls = resolve(backbone)
        if task.requires_generative and not getattr(cls, "generative", False):
            raise BenchError(f"task {task.name!r} needs a generative backbone (e.g. igpt); {backbone!r} is not one")
        info = cls.weights_info(weights) if hasattr(cls, "weights_info") else {}
        infos.append((f"{backbone}{f' --weights {weights}' if weights else ''}", info))
    with_palette = [(name, info["palette"]) for name, info in infos if info.get("palette") is not None]
    for name, palette in with_palette[1:]:
        first, reference = with_palette[0]
        if not same_palette(reference, palette):
            raise BenchError(f"{task.name} mixes checkpoints of different palettes: {first} ({_describe(reference)}) "
                             f"and {name} ({_describe(palette)}); study them apart, or pretrain them with the same "
                             "dataset and --colors")
    datasets = {}
    for name, info in infos:
        if info.get("dataset") is not None:
            datasets.setdefault(info["dataset"], name)
    if len(datasets) > 1:
        (a, first), (b, second) = list(datasets.items())[:2]
        raise BenchError(f"{task.name} mixes checkpoints of different training datasets: {first} ({a}) and {second} "
                         f"({b}); study each dataset's checkpoints apart")


def same_palette(a, b) -> bool:
    """One palette: as many colors of as many channels, the centers within half an 8-bit level
    (k-means refits of one dataset differ in the last bits with the thread count)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.abs(a - b).max() <= 1 / 255)


def _describe(palette) -> str:
    palette = np.asarray(palette)
    return f"{palette.shape[0]} colors, first {np.round(palette[0], 3).tolist()}"


def target(study: StudyJob, members: list[list[str]], settings: Settings) -> tuple[dict, Path]:
    """The study's identity and results file, from the run ids of its members (a list per point)."""
    identity = study_identity(study=study.task, dataset=study.dataset, options=study.options, members=members,
                              seed=study.seed, tag=settings.tag)
    tag = f"__{settings.tag}" if settings.tag else ""
    return identity, Path(settings.results_dir) / f"study__{study.dataset}__{study.task}{tag}__{run_id(identity)}.json"


def run_study(study: StudyJob, outcomes: dict[int, Outcome], settings: Settings) -> Outcome:
    """Combine the members' records (``outcomes``: id(job) -> Outcome) into the study's results
    file, unless a finished one with the same identity exists."""
    t0 = time.time()
    task = TASKS.get(study.task)()
    points = []
    for jobs in study.points:
        got = [outcomes[id(job)] for job in jobs]
        records = [r for o in got for r in o.records]
        first = records[0]
        points.append({"label": _label(first), "size": _size(got), "backbone": first["backbone"],
                       "weights": first.get("weights"), "step": first.get("step"), "records": records,
                       "run": [r["run"] for r in (o.records[0] for o in got)]})
    labels = [p["label"] for p in points]
    for p in points:  # labels name the points in tables and plots: never two alike
        if labels.count(p["label"]) > 1:
            p["label"] += f" [{p['run'][0][:6]}]"
    identity, out = target(study, [p["run"] for p in points], settings)
    if not settings.rerun:
        done = finished_run(out, identity)
        if done is not None:
            (settings.log or (lambda m: None))(f"skipped (done already; --rerun to redo): {out}")
            return Outcome(study, "skipped", out, done, task)
    raw = task.combine(points, study.options, study.seed)
    for note in task.warnings(raw) if hasattr(task, "warnings") else ():  # what a reader must not miss
        (settings.log or (lambda m: None))(f"warning: {note}")
    stamp = {"task": study.task, "dataset": study.dataset, "tag": settings.tag, "seed": study.seed,
             "limit": settings.limit, "run": run_id(identity)}
    records = [dict(stamp, **r) for r in raw]
    for i, r in enumerate(records):
        r.setdefault("layer_index", i)
    run_info = {**stamp, "identity": identity, "members": [o.path.name for jobs in study.points
                                                           for o in (outcomes[id(j)] for j in jobs)],
                "versions": versions(), "git_commit": git_commit(), "time": now(),
                "seconds": {"total": round(time.time() - t0, 3)}}
    _plots([dict(r, file=str(out)) for r in records], out.with_suffix(""))  # the results file is written last
    path = write_results(out, run_info, records)
    return Outcome(study, "ran", path, [dict(r, file=str(path)) for r in records], task)


def _label(record: dict) -> str:
    """``<run folder>@step<N>`` for a checkpoint of a pretraining run (``fm-wide@step625``), else
    ``<backbone>@<weights name>``."""
    step, weights, name = record.get("step"), record.get("weights"), record["backbone"]
    parts = Path(str(weights)).parts if weights else ()
    if step is not None and len(parts) >= 3 and parts[-2] == "checkpoints":
        return f"{parts[-3]}@step{step}"
    if step is not None:
        return f"{name}@step{step}"
    return f"{name}@{Path(str(weights)).name}" if weights else name


def _size(outcomes: list[Outcome]) -> str:
    """A checkpoint's model size (``igpt 8x128``: blocks x width) from its results file's provenance."""
    for o in outcomes:
        try:
            run = json.loads(Path(o.path).read_text())["run"]
            model = run["backbone_provenance"]["config"]["model"]
            return f"{run['backbone']} {model['n_layer']}x{model['n_embd']}"
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return outcomes[0].records[0]["backbone"]


def _plots(records: list[dict], folder: Path) -> None:
    from bench.plots import study_figures, write_figures
    from bench.runs import frame

    write_figures(study_figures(frame(records)), folder)
