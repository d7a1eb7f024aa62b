"""Sweeps: backbones × weights × datasets × tasks × seeds in one command, the way CLIP_benchmark
loops models × datasets.

``plan`` checks every name and expands every ``--weights`` glob before any work, so a typo in the
fifth backbone is reported before the first extraction. ``execute`` runs the jobs in order under
one progress bar; a job that fails is reported and the sweep goes on. A study task (``study =
True``, ``bench.study``) becomes its component jobs, shared with the sweep's own jobs where they
are the same, and runs after them. ``dry_run`` says what ``execute`` would run, skip and refuse,
without writing anything.

``shard`` keeps a deterministic share of a sweep (``--shard K/N``), so N processes on N machines
over one results folder and cache run the sweep between them; the locks keep any result from being
computed twice. ``execute`` takes a ``runner`` that hands the jobs elsewhere (``bench.submit``).
"""

from __future__ import annotations

import glob
import itertools
import json
import numbers
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from backbones.base import BackboneOptions, resolve
from bench.errors import BenchError
from bench.job import Job, Outcome, Settings, run_job
from bench.registry import DATASETS, TASKS
from tasks.base import Task

GLOB_CHARS = re.compile(r"[*?\[]")


def expand_weights(patterns, log=None) -> list[str]:
    """Each pattern as given, or, when it holds a glob, every match in natural order (so
    ``RUN/checkpoints/*`` lists checkpoints by step). A glob that matches nothing is an error; a
    path given (or matched) twice runs once, and ``log`` says so."""
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
    unique = list(dict.fromkeys(out))
    if log and len(unique) < len(out):
        twice = sorted({w for w in out if out.count(w) > 1})
        log(f"--weights {', '.join(twice)} given more than once: run once")
    return unique


def _natural_key(path: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", Path(path).as_posix())]


MAX_SEEDS = 1000  # seeds of one sweep: more is a typo (0..4294967295), not a study


def seed_list(value) -> list[int]:
    """The seeds of a sweep, in order, each once: an int, text ``"3"`` or an inclusive range
    ``"0..4"`` (0, 1, 2, 3, 4, as the shell's ``{0..4}``), a Python ``range``, or a list of those."""
    from bench.datasets import MAX_SEED

    if value is None:
        return [0]
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out: list[int] = []
    for item in items:
        if isinstance(item, str):
            out += _parse_seeds(item.strip(), MAX_SEED)
            continue
        for seed in item if isinstance(item, range) else [item]:
            if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
                raise BenchError(f"--seed {seed!r} is not a seed; seeds are integers in 0..{MAX_SEED}, or a range "
                                 "such as 0..4")
            out.append(int(seed))
            if len(out) > MAX_SEEDS:
                break
    out = list(dict.fromkeys(out))
    if not out:
        raise BenchError("name at least one seed (--seed 0, or a range such as --seed 0..4)")
    if len(out) > MAX_SEEDS:
        raise BenchError(f"--seed asks for {len(out)} seeds; one sweep takes at most {MAX_SEEDS} (e.g. --seed 0..9)")
    return out


def _parse_seeds(text: str, max_seed: int) -> list[int]:
    first, dots, last = text.partition("..")
    bounds = [first, last] if dots else [first]
    if not all(re.fullmatch(r"\d{1,20}", b.strip()) for b in bounds):
        raise BenchError(f"--seed {text!r} is not a seed or a range of seeds; give an integer in 0..{max_seed}, or a "
                         "range such as 0..4 (both ends included)")
    lo, hi = int(first), int(last) if dots else int(first)
    for bound in (lo, hi):
        if bound > max_seed:
            raise BenchError(f"--seed {text!r}: {bound} is past the largest seed, {max_seed}")
    if hi < lo:
        raise BenchError(f"--seed {text!r} is an empty range; write the smaller seed first, e.g. {hi}..{lo}")
    if hi - lo >= MAX_SEEDS:
        raise BenchError(f"--seed {text!r} asks for {hi - lo + 1} seeds; one sweep takes at most {MAX_SEEDS}")
    return list(range(lo, hi + 1))


def split_task_options(tasks: list[str], pairs) -> dict[str, dict]:
    """``-o KEY=VALUE`` pairs (or a {key: value} dict) shared out to the tasks that declare KEY;
    a key that no task declares is an error naming the tasks' options."""
    items = list(pairs.items()) if isinstance(pairs, dict) else [Task.split_pair(p) for p in pairs]
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
    share: tuple[int, int] | None = None  # (K, N) when this is shard K of N of a larger sweep
    total: int | None = None  # jobs and studies of the whole sweep, when sharded
    others: tuple = ()  # other shards' jobs that a study of this share combines (see ``shard``)


def plan(*, backbones, datasets, tasks, weights=(), pretrained: bool = False, image_size: int | None = None,
         task_options=(), seeds=0, settings: Settings) -> Sweep:
    """Every job of backbones × weights × datasets × tasks × seeds (``seed_list``'s forms), with
    every name checked first."""
    seeds = seed_list(seeds)
    backbones, datasets, tasks = (_as_list(v, what) for v, what in
                                  ((backbones, "backbone"), (datasets, "dataset"), (tasks, "task")))
    for name in backbones:  # --weights / --pretrained only where the backbone declares it loads them
        resolve(name, pretrained=pretrained, weights=bool(weights))
    for name in datasets:
        DATASETS.get(name)
    for name in tasks:
        TASKS.get(name)
    from bench.records import check_tag

    check_tag(settings.tag)
    per_task = split_task_options(tasks, task_options)
    for name in tasks:  # values are checked before any work too
        TASKS.get(name)().parse_options(per_task[name])
    weight_list = expand_weights(_as_list(weights, None), settings.log) if weights else [None]
    plain = [t for t in tasks if not getattr(TASKS.get(t), "study", False)]
    jobs = [Job(backbone=b, dataset=d, task=t, task_options=per_task[t],
                options=BackboneOptions(pretrained=pretrained, weights=w, image_size=image_size, seed=s))
            for b, w, d, t, s in itertools.product(backbones, weight_list, datasets, plain, seeds)]
    studies = []
    from bench.study import StudyJob, check_components, expand

    for t, d, s in itertools.product([t for t in tasks if t not in plain], datasets, seeds):
        study = expand(t, per_task[t], backbones, weight_list, d, pretrained=pretrained, image_size=image_size,
                       seed=s, log=settings.log)
        check_components(study, settings)
        points = []
        for members in study.points:  # a member the sweep runs anyway is that same job
            points.append(tuple(_same_or_new(job, jobs) for job in members))
        studies.append(StudyJob(study.task, study.dataset, study.options, tuple(points), study.seed))
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


MAX_SHARDS = 100_000


def parse_shard(value) -> tuple[int, int] | None:
    """``--shard K/N`` as ``(K, N)``: text ``"K/N"`` or a pair of ints, with 0 <= K < N (the
    numbering of ``$SLURM_ARRAY_TASK_ID`` in an array ``0-(N-1)``); None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d{1,9})\s*/\s*(\d{1,9})\s*", value)
        if not m:
            raise BenchError(f"--shard {value!r} is not K/N; give this process's share as K/N with 0 <= K < N, "
                             "e.g. 0/4 ... 3/4")
        k, n = int(m[1]), int(m[2])
    elif (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)):
        k, n = int(value[0]), int(value[1])
    else:
        text = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise BenchError(f"shard takes 'K/N' or a pair (K, N) of integers with 0 <= K < N, got {text}")
    if not 1 <= n <= MAX_SHARDS:
        raise BenchError(f"--shard {k}/{n}: N is the number of shards, 1..{MAX_SHARDS}")
    if not 0 <= k < n:
        raise BenchError(f"--shard {k}/{n}: K counts from 0 and stays below N (the shards of {n} are 0/{n} .. "
                         f"{n - 1}/{n})")
    return k, n


def unit_key(unit) -> str:
    """What a job (or study) is, as stable text: its task and parsed task options, backbone,
    dataset and options (weights as given, seed); a study's holds its components'. Shards are
    dealt in this order, so every process of a sharded sweep deals the same way whatever is done
    already (and however an option is spelled), and a backbone's jobs of several tasks, which
    share activation files, tend to share a shard."""
    from bench.study import StudyJob

    if isinstance(unit, StudyJob):
        fields = [unit.task, unit.options, unit.dataset, unit.seed, [[unit_key(j) for j in jobs] for jobs in unit.points]]
    else:
        options = TASKS.get(unit.task)().parse_options(unit.task_options)
        fields = [unit.task, options, unit.backbone, unit.dataset, asdict(unit.options)]
    return json.dumps(fields, sort_keys=True, default=str)


def shard(sweep: Sweep, share: tuple[int, int] | None) -> Sweep:
    """Shard K of N: the jobs and studies sorted by ``unit_key``, every Nth from the Kth, in the
    sweep's order. The N shards are disjoint and together the whole sweep, however many of its
    results exist already.

    A study's components are jobs like any other, dealt to any shard; the shard that draws the
    study runs, after its own jobs, the components still missing (``others``: another shard's
    job, which the locks let it wait for or do itself, never twice), then combines them, so the
    study is written once every shard has finished."""
    if share is None:
        return sweep
    k, n = share
    units = sorted([*sweep.jobs, *sweep.studies], key=unit_key)
    mine = {id(unit) for i, unit in enumerate(units) if i % n == k}
    studies = [s for s in sweep.studies if id(s) in mine]
    others: dict[int, Job] = {}
    for study in studies:
        for job in (job for jobs in study.points for job in jobs if id(job) not in mine):
            others.setdefault(id(job), job)
    jobs = [job for job in sweep.jobs if id(job) in mine] + list(others.values())
    return Sweep(jobs, sweep.settings, studies, share=share, total=len(units), others=tuple(others.values()))


@dataclass
class Failure:
    job: Job  # or a bench.study.StudyJob
    message: str
    user_error: bool  # a BenchError (exit 2) rather than a bug (exit 1)


def failure_lines(failures: list[Failure], total: int, names: int = 3) -> list[tuple[int, str, str]]:
    """One ``(count, who, what)`` per distinct message, in order of first appearance: ``who`` is the
    job (count 1) or ``"4 of 9 jobs"``, ``what`` the message, naming the jobs that share it unless
    it is every job's. A sweep that fails the same way everywhere says it once."""
    groups: dict[str, list[Failure]] = {}
    for f in failures:
        groups.setdefault(f.message, []).append(f)
    lines = []
    for message, group in groups.items():
        if len(group) == 1:
            lines.append((1, group[0].job.describe(), message))
            continue
        where = ""
        if len(group) < total:
            shown = "; ".join(f.job.describe() for f in group[:names])
            more = f" and {len(group) - names} more" if len(group) > names else ""
            where = f" (in: {shown}{more})"
        lines.append((len(group), f"{len(group)} of {total} jobs", message + where))
    return lines


def execute(sweep: Sweep, on_outcome=lambda outcome: None, on_failure=lambda failure: None, runner=None
            ) -> tuple[list[Outcome], list[Failure]]:
    """Run every job, then every study. A single job's error propagates (one command, one error);
    in a sweep each failure is reported through ``on_failure`` and the rest go on.

    ``runner(jobs, settings)``, where given, computes the jobs elsewhere (``bench.submit``): it
    yields ``(job, outcome, failure)`` as each finishes, one of the two None. By default they run
    here, in order. Studies combine their components here either way."""
    from bench.runtime import progress_bar
    from bench.study import run_study

    settings = sweep.settings
    if runner is None and len(sweep.jobs) == 1 and not sweep.studies:
        outcome = run_job(sweep.jobs[0], settings)
        on_outcome(outcome)
        return [outcome], []
    outcomes, failures, done = [], [], {}
    total = len(sweep.jobs) + len(sweep.studies)
    with progress_bar(f"sweep of {total} jobs", total, settings.quiet) as bar:
        for job, outcome, failure in (runner or _here)(sweep.jobs, settings):
            if failure is not None:
                failures.append(failure)
                on_failure(failure)
            else:
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


def _here(jobs: list[Job], settings: Settings):
    """The default runner: each job in this process, in order."""
    for job in jobs:
        failures = []
        outcome = _guarded(lambda job=job: run_job(job, settings), job, failures, lambda failure: None)
        yield job, outcome, failures[0] if failures else None


@dataclass
class Planned:
    """What ``execute`` would do with one job or study: "run", "skip" (a finished results file with
    its identity is there), or "refuse" (a check fails; ``message`` says which)."""

    job: Job  # or a bench.study.StudyJob
    status: str
    path: Path | None
    message: str = ""
    user_error: bool = True  # a refusal by a BenchError (exit 2) rather than a bug (exit 1)


OTHERS_NOTE = "another shard's job, which a study of this shard needs: run here only if not done by then"


def dry_run(sweep: Sweep) -> list[Planned]:
    """What ``execute`` would do, job by job in its order: every check a job makes before its work
    and every identity computed (``bench.job.prepare``), but nothing extracted, trained or written."""
    from bench.files import check_writable
    from bench.job import prepare
    from bench.records import finished_run, run_id
    from bench.study import target

    settings = sweep.settings
    planned, ids = [], {}
    others = {id(job) for job in sweep.others}
    for job in sweep.jobs:
        try:
            p = prepare(job, settings)
            skip = not settings.rerun and finished_run(p.out, p.identity) is not None
            if not skip:
                check_writable(p.out, "--results folder")  # a probe that leaves no file behind
        except BenchError as e:
            planned.append(Planned(job, "refuse", None, str(e)))
            continue
        except Exception as e:  # noqa: BLE001 - reported as execute would
            planned.append(Planned(job, "refuse", None, f"internal error: {type(e).__name__}: {e}", False))
            continue
        ids[id(job)] = run_id(p.identity)
        planned.append(Planned(job, "skip" if skip else "run", p.out, OTHERS_NOTE if id(job) in others else ""))
    for study in sweep.studies:
        missing = sum(id(job) not in ids for jobs in study.points for job in jobs)
        if missing:
            planned.append(Planned(study, "refuse", None, f"{missing} of its component runs would be refused"))
            continue
        identity, out = target(study, [[ids[id(job)] for job in jobs] for jobs in study.points], settings)
        skip = not settings.rerun and finished_run(out, identity) is not None
        planned.append(Planned(study, "skip" if skip else "run", out))
    return planned


def _guarded(work, job, failures: list, on_failure):
    """``work()``, or None after recording its failure: one broken job must not end the sweep."""
    try:
        return work()
    except Exception as e:  # noqa: BLE001 - KeyboardInterrupt still ends the sweep
        failures.append(Failure(job, *failure_of(e)))
    on_failure(failures[-1])
    return None


def failure_of(e: Exception) -> tuple[str, bool]:
    """How a sweep reports a job's exception: ``(message, user_error)``; a BenchError is the
    user's, anything else a bug named by its type."""
    if isinstance(e, BenchError):
        return str(e), True
    return f"internal error: {type(e).__name__}: {e}", False
