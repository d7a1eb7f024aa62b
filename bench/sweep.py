"""Sweeps: backbones × weights × datasets × tasks in one command, the way CLIP_benchmark loops
models × datasets.

``plan`` checks every name and expands every ``--weights`` glob before any work, so a typo in the
fifth backbone is reported before the first extraction. ``execute`` runs the jobs in order under
one progress bar; a job that fails is reported and the sweep goes on. A study task (``study =
True``, ``bench.study``) becomes its component jobs, shared with the sweep's own jobs where they
are the same, and runs after them.
"""

from __future__ import annotations

import glob
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from backbones.base import BackboneOptions, resolve
from bench.errors import BenchError
from bench.job import Job, Outcome, Settings, run_job
from bench.registry import DATASETS, TASKS
from tasks.base import Task

GLOB_CHARS = re.compile(r"[*?\[]")


def expand_weights(patterns) -> list[str]:
    """Each pattern as given, or, when it holds a glob, every match in natural order (so
    ``RUN/checkpoints/*`` lists checkpoints by step). A glob that matches nothing is an error."""
    out: list[str] = []
    for pattern in patterns:
        pattern = str(pattern)
        if not GLOB_CHARS.search(pattern):
            out.append(pattern)
            continue
        hits = [p for p in glob.glob(pattern) if not p.endswith((".tmp", ".partial"))]
        if not hits:
            raise BenchError(f"--weights {pattern!r} matches nothing; check the path (quote the glob so the "
                             "shell does not expand it)")
        out += sorted(hits, key=_natural_key)
    return list(dict.fromkeys(out))


def _natural_key(path: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", Path(path).as_posix())]


def split_task_options(tasks: list[str], pairs) -> dict[str, dict]:
    """``-o KEY=VALUE`` pairs (or a {key: value} dict) shared out to the tasks that declare KEY;
    a key that no task declares is an error naming the tasks' options."""
    items = list(pairs.items()) if isinstance(pairs, dict) else [Task._split_pair(p) for p in pairs]
    out: dict[str, dict] = {t: {} for t in tasks}
    for key, value in items:
        norm = str(key).strip().replace("-", "_")
        takers = [t for t in tasks if norm in TASKS.get(t).options]
        if not takers:
            if len(tasks) == 1:  # the task's own message (valid options, did you mean)
                TASKS.get(tasks[0])().parse_options({norm: value})
            known = sorted({o for t in tasks for o in TASKS.get(t).options})
            raise BenchError(f"no task of this run has an option {norm!r}; their options: {', '.join(known) or 'none'}")
        for t in takers:
            out[t][norm] = value
    return out


@dataclass(frozen=True)
class Sweep:
    jobs: list[Job]
    settings: Settings
    studies: list = field(default_factory=list)  # bench.study.StudyJob, run after the jobs


def plan(*, backbones, datasets, tasks, weights=(), pretrained: bool = False, image_size: int | None = None,
         task_options=(), settings: Settings) -> Sweep:
    """Every job of backbones × weights × datasets × tasks, with every name checked first."""
    backbones, datasets, tasks = (_as_list(v, what) for v, what in
                                  ((backbones, "backbone"), (datasets, "dataset"), (tasks, "task")))
    for name in backbones:
        resolve(name)
    for name in datasets:
        DATASETS.get(name)
    for name in tasks:
        TASKS.get(name)
    from bench.records import check_tag

    check_tag(settings.tag)
    per_task = split_task_options(tasks, task_options)
    for name in tasks:  # values are checked before any work too
        TASKS.get(name)().parse_options(per_task[name])
    weight_list = expand_weights(_as_list(weights, None)) if weights else [None]
    plain = [t for t in tasks if not getattr(TASKS.get(t), "study", False)]
    jobs = [Job(backbone=b, dataset=d, task=t, task_options=per_task[t],
                options=BackboneOptions(pretrained=pretrained, weights=w, image_size=image_size, seed=settings.seed))
            for b, w, d, t in itertools.product(backbones, weight_list, datasets, plain)]
    studies = []
    from bench.study import StudyJob, expand

    for t, d in itertools.product([t for t in tasks if t not in plain], datasets):
        study = expand(t, per_task[t], backbones, weight_list, d, pretrained=pretrained, image_size=image_size,
                       seed=settings.seed)
        points = []
        for members in study.points:  # a member the sweep runs anyway is that same job
            points.append(tuple(_same_or_new(job, jobs) for job in members))
        studies.append(StudyJob(study.task, study.dataset, study.options, tuple(points)))
    return Sweep(jobs, settings, studies)


def _same_or_new(job: Job, jobs: list[Job]) -> Job:
    for other in jobs:
        if repr(other) == repr(job):
            return other
    jobs.append(job)
    return job


def _as_list(value, what: str | None) -> list[str]:
    values = [value] if isinstance(value, (str, Path)) else list(value or [])
    if what and not values:
        raise BenchError(f"name at least one {what} (--{what})")
    return [str(v) for v in values]


@dataclass
class Failure:
    job: Job  # or a bench.study.StudyJob
    message: str
    user_error: bool  # a BenchError (exit 2) rather than a bug (exit 1)


def execute(sweep: Sweep, on_outcome=lambda outcome: None, on_failure=lambda failure: None
            ) -> tuple[list[Outcome], list[Failure]]:
    """Run every job in order. A single job's error propagates (one command, one error); in a
    sweep each failure is reported through ``on_failure`` and the rest go on."""
    from bench.runtime import progress_bar
    from bench.study import run_study

    settings = sweep.settings
    if len(sweep.jobs) == 1 and not sweep.studies:
        outcome = run_job(sweep.jobs[0], settings)
        on_outcome(outcome)
        return [outcome], []
    outcomes, failures, done = [], [], {}
    total = len(sweep.jobs) + len(sweep.studies)
    with progress_bar(f"sweep of {total} jobs", total, settings.quiet) as bar:
        for job in sweep.jobs:
            outcome = _guarded(lambda job=job: run_job(job, settings), job, failures, on_failure)
            if outcome is not None:
                done[id(job)] = outcome
                outcomes.append(outcome)
                on_outcome(outcome)
            bar.advance(1)
        for study in sweep.studies:
            missing = sum(id(job) not in done for jobs in study.points for job in jobs)
            if missing:
                failures.append(Failure(study, f"{missing} of its component runs failed (listed above)", True))
                on_failure(failures[-1])
            else:
                outcome = _guarded(lambda study=study: run_study(study, done, settings), study, failures, on_failure)
                if outcome is not None:
                    outcomes.append(outcome)
                    on_outcome(outcome)
            bar.advance(1)
    return outcomes, failures


def _guarded(work, job, failures: list, on_failure):
    """``work()``, or None after recording its failure: one broken job must not end the sweep."""
    try:
        return work()
    except BenchError as e:
        failures.append(Failure(job, str(e), True))
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001
        failures.append(Failure(job, f"internal error: {type(e).__name__}: {e}", False))
    on_failure(failures[-1])
    return None
