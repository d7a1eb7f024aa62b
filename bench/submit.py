"""Hand a sweep's jobs to a cluster scheduler through submitit (``bench run --submit slurm``).

Each job of the sweep (or of its ``--shard``) becomes one submitit job, all of them one Slurm job
array; this process waits for them, prints each run's table as it finishes, and combines the
studies here (numpy and plots, no model). A job computes exactly what ``bench run`` would, in its
own process on the node it lands on, into the same results folder and activation cache, so both
must be on a filesystem the nodes share. ``local`` is submitit's local executor: each job in its
own process on this machine, at once; it tests the cluster path without a cluster.

submitit is an optional dependency (``pip install 'igpt-bench[cluster]'``): a scheduler rather
than one of our own, and nothing else imports it.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import traceback
from dataclasses import replace
from pathlib import Path

from bench.errors import BenchError

BACKENDS = ("slurm", "local")
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's local executor kills a job after 2 minutes unless told otherwise
POLL_S = {"slurm": 15.0, "local": 0.5}  # how often to ask whether jobs have finished


def _submitit():
    try:
        import submitit
    except ImportError:
        raise BenchError("--submit needs submitit, an optional dependency: pip install 'igpt-bench[cluster]'") from None
    return submitit


def parse_params(pairs) -> dict:
    """``-S KEY=VALUE`` pairs (or a dict) as submitit's executor parameters; a value is read as
    JSON where it parses (``4``, ``2.5``, ``true``, ``["module load cuda"]``), else kept as text
    (``gpu``, ``02:00:00``)."""
    if pairs is None:
        return {}
    if isinstance(pairs, dict):
        items = list(pairs.items())
    elif isinstance(pairs, (list, tuple)) and all(isinstance(p, str) for p in pairs):
        items = []
        for pair in pairs:
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise BenchError(f"--submit-option {pair!r} is not KEY=VALUE; e.g. -S timeout_min=120 or "
                                 "-S slurm_partition=gpu")
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = value
            items.append((key.strip(), parsed))
    else:
        raise BenchError("submit_options takes {key: value} or a list of 'key=value' texts (e.g. "
                         "{'timeout_min': 120})")
    for key, _ in items:
        if not isinstance(key, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            raise BenchError(f"--submit-option {key!r} is not a submitit parameter name (such as timeout_min, "
                             "gpus_per_node, slurm_partition)")
    return dict(items)


def device_name(device) -> str:
    """``--device`` for jobs that run elsewhere: checked for form only, and resolved (``auto``:
    a GPU where the job's node has one) on the node."""
    if isinstance(device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        return device
    raise BenchError(f"--device must be auto, cpu or cuda[:N], got {device!r}")


def check(backend, params: dict) -> None:
    """Everything ``--submit`` needs, checked before any work: the backend's name, submitit,
    the scheduler's commands, and every parameter (on an executor in a scratch folder)."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise BenchError(f"--submit {backend!r} is not one of {', '.join(BACKENDS)} (local: submitit's executor on "
                         "this machine, for testing)")
    _submitit()
    with tempfile.TemporaryDirectory() as scratch:
        _executor(backend, Path(scratch), params)


def _executor(backend: str, folder: Path, params: dict):
    submitit = _submitit()
    try:
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=backend)
    except RuntimeError as e:  # the scheduler's commands are not on this machine
        raise BenchError(f"--submit {backend}: this machine has no {backend} commands ({_first_line(e)}); submit "
                         "from a machine of the cluster (a login node), or try the path with --submit local") from None
    defaults = {"name": "bench"}
    if backend == "local":
        defaults["timeout_min"] = LOCAL_TIMEOUT_MIN
    try:
        executor.update_parameters(**{**defaults, **params})
    except (NameError, ValueError, TypeError, AssertionError) as e:
        raise BenchError(f"--submit-option: {_first_line(e)} (submitit's parameters: timeout_min, cpus_per_task, "
                         "gpus_per_node, mem_gb, slurm_partition, slurm_account, ...)") from None
    return executor


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def runner(backend: str, params: dict, threads: int | None = None, log=None):
    """A runner for ``bench.sweep.execute``: submit every job at once (a Slurm job array), then
    yield ``(job, outcome, failure)`` as each finishes. ``threads``: the CPU threads each job
    computes with (None: the count its node's affinity and quota give). Ctrl-C cancels the jobs
    still queued or running."""
    from bench.sweep import Failure

    def run(jobs, settings):
        log_ = log or (lambda msg: None)
        if not jobs:
            return
        if backend == "slurm" and "timeout_min" not in params and "slurm_time" not in params:
            log_("note: no -S timeout_min=MINUTES given: Slurm gives each job submitit's default limit (5 minutes)")
        folder = Path(settings.results_dir).resolve() / ".submitit"
        from bench.files import check_writable

        check_writable(folder / "probe", "--results folder")
        executor = _executor(backend, folder, params)
        remote = replace(settings, log=None, quiet=True)
        with executor.batch():
            handles = [executor.submit(work, job, remote, threads) for job in jobs]
        by_handle = {id(h): job for h, job in zip(handles, jobs)}
        log_(f"submitted {len(handles)} jobs to {backend} (logs: {folder})")
        submitit = _submitit()
        try:
            for handle in submitit.helpers.as_completed(handles, poll_frequency=POLL_S[backend]):
                job = by_handle[id(handle)]
                try:
                    outcome, failure = handle.result()
                except Exception as e:  # noqa: BLE001 - the scheduler's failure (time limit, killed, lost node)
                    yield job, None, Failure(job, f"the {backend} job {handle.job_id} did not finish "
                                                  f"({_first_line(e)}); its log: {handle.paths.stderr}", False)
                    continue
                if failure is not None:
                    message, user_error = failure
                    yield job, None, Failure(job, message, user_error)
                else:
                    yield job, outcome, None
        except BaseException:
            for handle in handles:
                if not handle.done():
                    handle.cancel(check=False)
            raise

    return run


def work(job, settings, threads):
    """One job on the node it was given: ``(outcome, None)``, or ``(None, (message, user_error))``
    for a failure the sweep reports as it would its own (the traceback of a bug goes to the log)."""
    from bench.job import run_job
    from bench.runtime import pick_device, using_threads

    try:
        settings = replace(settings, device=pick_device(settings.device), log=_to_log)
        with using_threads(threads):
            return run_job(job, settings), None
    except Exception as e:  # noqa: BLE001 - reported as the sweep reports its own jobs' failures
        from bench.sweep import failure_of

        if not isinstance(e, BenchError):
            traceback.print_exc()
        return None, failure_of(e)


def _to_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
