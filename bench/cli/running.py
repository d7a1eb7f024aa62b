"""`bench extract`, `bench run` and `bench cache`: the work, and the activation cache it fills."""

from __future__ import annotations

from pathlib import Path

import click

from bench.cli.options import (
    CONTEXT,
    backbone_options,
    data_options,
    data_root_option,
    echo_main,
    image_size_option,
    is_quiet,
    limit_option,
    note_log,
    precision_option,
    pretrained_option,
    runtime_options,
    threads_option,
)
from bench.distributed import is_main
from bench.errors import BenchError


@click.command(context_settings=CONTEXT)
@backbone_options
@data_options
@click.option("--split", type=click.Choice(["train", "val", "test"]), required=True, help="Which split to extract.")
@click.option("--layers", default="all", show_default=True, help="Comma-separated layer names, or 'all'.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Activation file to write (default: the cache, keyed by fingerprint).")
@runtime_options
@threads_option
@precision_option
@click.pass_context
def extract(ctx, backbone, backbone_options, seed, dataset, data_root, limit, split, layers, out, batch_size, device,
            precision):
    """Export pooled layer activations of a backbone on one split to HDF5.

    Reuses a finished file with the same inputs, resumes an interrupted one, and refuses a file
    made by something else. Under `torchrun --nproc_per_node K` each process extracts a share of
    the rows and the first writes the one file.

    \b
    Example:
      bench extract --backbone resnet18 --dataset digits --split train --layers layer2,layer3
    """
    from bench import api

    acts = api.extract(backbone, dataset, split, layers=layers, weights=backbone_options.weights,
                       pretrained=backbone_options.pretrained, image_size=backbone_options.image_size, seed=seed, limit=limit, data_root=data_root, out=out,
                       batch_size=batch_size, device=device, precision=precision, quiet=is_quiet(ctx), log=note_log(ctx))
    echo_main(f"{acts.how}: {acts.path} ({acts.n_rows} rows; layers {', '.join(acts.layers)})")


@click.command(context_settings=CONTEXT)
@click.option("--backbone", "-b", "backbone_names", multiple=True, required=True,
              help="Backbone name (repeatable: a sweep): pixels, any timm model (resnet18), igpt, igpt-8x512, a plugin's.")
@pretrained_option
@click.option("--weights", "weights", multiple=True,
              help="Weights file or folder (repeatable); a quoted glob such as 'RUN/checkpoints/*' runs every match, in step order.")
@image_size_option
@click.option("--seed", "seeds", multiple=True, default=["0"], show_default=True, metavar="N|A..B",
              help="Seed for random init, --limit subsets and the task; repeatable, or a range (0..4: seeds 0 to 4), "
                   "one run per seed.")
@click.option("--task", "-t", "task_names", multiple=True, required=True, help="Task name (repeatable); see `bench tasks list`.")
@click.option("--dataset", "-d", "dataset_names", multiple=True, required=True, help="Dataset name (repeatable); see `bench datasets list`.")
@data_root_option
@limit_option
@click.option("--layers", default="all", show_default=True, help="Comma-separated layer names, or 'all'.")
@click.option("--option", "-o", "task_options", multiple=True, help="Task option KEY=VALUE (repeatable; goes to the tasks that have KEY); see `bench tasks list`.")
@click.option("--tag", default=None, help="A label of yours for these runs (letters, digits, . _ + -): recorded, and keeps them apart from untagged runs.")
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default="bench-results", show_default=True, help="Folder for the results JSON files.")
@click.option("--rerun", is_flag=True, help="Run again even where --results holds a finished run with the same identity.")
@click.option("--dry-run", is_flag=True, help="List the jobs the sweep would run, skip (done already) and refuse (a check fails); write nothing.")
@click.option("--shard", metavar="K/N", default=None, help="Run only share K of N (0 <= K < N) of the sweep's jobs, dealt by what each job is: N processes (a Slurm job array, N shells) over one --results folder and cache run it all; see docs/cluster.md.")
@click.option("--submit", type=click.Choice(["slurm", "local"]), default=None, help="Hand each job to Slurm through submitit (pip install 'igpt-bench[cluster]') and wait for them; local: submitit's executor on this machine, for testing.")
@click.option("--submit-option", "-S", "submit_options", multiple=True, metavar="KEY=VALUE", help="submitit executor parameter (repeatable), e.g. -S timeout_min=240 -S gpus_per_node=1 -S slurm_partition=gpu.")
@runtime_options
@threads_option
@precision_option
@click.pass_context
def run(ctx, backbone_names, pretrained, weights, image_size, seeds, task_names, dataset_names, data_root, limit,
        layers, task_options, tag, results_dir, rerun, dry_run, shard, submit, submit_options, batch_size, device,
        precision):
    """Run tasks on backbones × weights × datasets × seeds; print a table per run, write one results file each.

    A run whose results file already exists with the same identity (fingerprint with weights,
    dataset, task options, layers, seed, limit, tag) is skipped. In a sweep, a failed run is
    reported and the others go on; the exit code is 0 only when all succeeded (with --dry-run:
    when none would be refused).

    \b
    Example:
      bench run --backbone resnet18 --task linear-probe --dataset digits
      bench run -b igpt --weights 'runs/tiny/checkpoints/*' -t linear-probe -t bits-per-dim -d digits
      bench run -b pixels -b resnet18 -t linear-probe -d digits -d fashion-mnist --limit 2000
      bench run -b resnet18 -t knn -d digits --limit 500 --seed 0..4 --dry-run
      bench run -b resnet18 -t knn -d digits --seed 0..9 --shard 0/2     (and 1/2 elsewhere)
      bench run -b igpt --weights 'runs/tiny/checkpoints/*' -t correlation -d digits --submit slurm -S timeout_min=120
    """
    from bench import sweep
    from bench.job import Settings
    from bench.render import render
    from bench.report import run_table, study_tables
    from bench.runs import frame

    share = sweep.parse_shard(shard)
    runner = None
    if submit:
        from bench import submit as submitting

        params = submitting.parse_params(submit_options)
        submitting.check(submit, params)
        runner = submitting.runner(submit, params, ctx.params.get("threads"), note_log(ctx))
    elif submit_options:
        raise BenchError("--submit-option goes with --submit slurm (or --submit local)")
    settings = Settings(layers=layers, data_root=data_root, limit=limit, tag=tag, batch_size=batch_size,
                        device=device, precision=precision, results_dir=results_dir, rerun=rerun, quiet=is_quiet(ctx),
                        log=note_log(ctx))
    plan = sweep.shard(sweep.plan(backbones=backbone_names, datasets=dataset_names, tasks=task_names,
                                  weights=weights, pretrained=pretrained, image_size=image_size,
                                  task_options=task_options, seeds=seeds, settings=settings), share)
    if share:
        mine = len(plan.jobs) - len(plan.others) + len(plan.studies)
        line = f"shard {share[0]}/{share[1]}: {mine} of the sweep's {plan.total} job{'s' * (plan.total != 1)}"
        line += f", and {len(plan.others)} of other shards' that its studies need" if plan.others else ""
        if dry_run or not mine:
            click.echo(line + ("" if mine else "; nothing to do"))
        else:
            note_log(ctx)(line)
        if not mine:
            return
    if dry_run:
        _show_plan(sweep.dry_run(plan), ctx)
        return
    many_seeds = len({job.seed for job in plan.jobs}) > 1

    def show(outcome):
        if not is_main():  # under torchrun, rank 0 prints
            return
        job = outcome.job
        if getattr(outcome.task, "study", False):
            for title, table in study_tables(frame(outcome.records)):
                render(table, "table", title=title)
            click.echo(f"study{' (skipped: done already)' if outcome.status == 'skipped' else ''}: {outcome.path}")
            if outcome.path.with_suffix("").is_dir():
                click.echo(f"plots: {outcome.path.with_suffix('')}")
            return
        title = f"{job.task} · {outcome.records[0]['backbone']}"
        title += f" · step {outcome.records[0]['step']}" if outcome.records[0].get("step") is not None else ""
        title += f" · {job.dataset}" + (f" (limit {limit})" if limit else "")
        title += f" · seed {job.seed}" if many_seeds else ""
        render(run_table(outcome.records, outcome.task.columns), "table", title=title)
        click.echo(f"results{' (skipped: done already)' if outcome.status == 'skipped' else ''}: {outcome.path}")

    outcomes, failures = sweep.execute(plan, on_outcome=show, runner=runner)
    if failures:
        total = len(plan.jobs) + len(plan.studies)
        for count, who, what in sweep.failure_lines(failures, total):  # one line per way of failing
            click.echo(f"failed: {who}: {what}" if count == 1 else f"failed ({who}): {what}", err=True)
        click.echo(f"{len(failures)} of {total} runs failed (listed above); {len(outcomes)} succeeded", err=True)
        ctx.exit(2 if all(f.user_error for f in failures) else 1)


def _show_plan(planned, ctx) -> None:
    """``bench run --dry-run``: a line per job (whole, never cut to the terminal's width), a count,
    and the exit code the run would have for the refusals."""
    for p in planned:
        where = f"{p.path} ({p.message})" if p.path and p.message else p.path or p.message
        click.echo(f"{p.status:<6}  {p.job.describe()}: {where}")
    counts = {status: sum(p.status == status for p in planned) for status in ("run", "skip", "refuse")}
    click.echo(f"dry run, nothing written: would run {counts['run']}, skip {counts['skip']} (done already), refuse "
               f"{counts['refuse']}")
    refused = [p for p in planned if p.status == "refuse"]
    if refused:
        ctx.exit(2 if all(p.user_error for p in refused) else 1)


# -- the activation cache -------------------------------------------------------------------------

CACHE_HELP = "Activation cache folder (default: $BENCH_CACHE/activations, else ~/.cache/igpt-bench/activations)."


@click.group(context_settings=CONTEXT)
def cache():
    """What the activation cache holds, and removing what no results file uses.

    \b
    Example:
      bench cache list --results bench-results
      bench cache prune --results bench-results --dry-run
    """


@cache.command("list", context_settings=CONTEXT)
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None, help=CACHE_HELP)
@click.option("--results", "results_dirs", multiple=True, type=click.Path(),
              help="Results folder (repeatable) whose runs' references to count (default: bench-results, if there).")
def cache_list(cache_dir, results_dirs):
    """List the cache's activation files: backbone, dataset, split, layers, size, last use, and how
    many results files name each.

    \b
    Example:
      bench cache list --results bench-results
    """
    from bench import cache as store_cache
    from bench.render import render

    if not results_dirs and Path("bench-results").is_dir():
        results_dirs = ("bench-results",)
    found = store_cache.entries(cache_dir, results_dirs or None)
    root = store_cache.cache_root(cache_dir)
    if not found:
        click.echo(f"the cache {root} holds no activation files")
        return
    render(store_cache.table(found, bool(results_dirs)), "table", title=f"activation cache {root}")
    total = sum(e.size for e in found)
    line = f"{len(found)} files, {store_cache.human_size(total)}"
    if results_dirs:
        unused = [e for e in found if not e.references]
        line += (f"; {len(unused)} of them ({store_cache.human_size(sum(e.size for e in unused))}) named by no "
                 f"results file under {', '.join(results_dirs)} (bench cache prune removes those)")
    else:
        line += "; --results DIR counts which results files name each"
    click.echo(line)


@cache.command("prune", context_settings=CONTEXT)
@click.option("--results", "results_dirs", multiple=True, required=True, type=click.Path(),
              help="Results folder (repeatable): cache files its results files name are kept.")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None, help=CACHE_HELP)
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
def cache_prune(results_dirs, cache_dir, dry_run):
    """Remove the activation files (and partial extractions) no results file under --results
    names; a file a running job is writing or reading is kept.

    \b
    Example:
      bench cache prune --results bench-results --results old-results --dry-run
    """
    from bench import cache as store_cache

    done = store_cache.prune(results_dirs, cache_dir, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for e in done.removed:
        click.echo(f"{verb} {e.path} ({store_cache.human_size(e.size)})")
    for e in done.in_use:
        click.echo(f"kept (a running job holds it) {e.path}")
    click.echo(f"{verb} {len(done.removed)} files ({store_cache.human_size(done.freed)}); kept {len(done.referenced)} "
               f"named by results files and {len(done.in_use)} in use")
