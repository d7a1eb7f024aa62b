"""The `bench` command line: click for parsing, rich for output.

Every mistake a user can make ends in one line on stderr and exit code 2; ``--debug`` shows the
traceback of anything else.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

import click

from bench.distributed import is_main, launch
from bench.errors import BenchError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


SEED = click.IntRange(0, 2**32 - 1)  # what numpy and scikit-learn take (bench.datasets.MAX_SEED)


class Number(click.FloatRange):
    """A float range that refuses NaN and infinities (click's comparisons let NaN through)."""

    def convert(self, value, param, ctx):
        import math

        v = super().convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return v


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def _quiet(ctx) -> bool:
    return bool(ctx.find_root().params.get("quiet", False))


def _log(ctx):
    if _quiet(ctx):
        return lambda msg: None
    return lambda msg: _console(True).print(msg, style="dim", soft_wrap=True, markup=False, highlight=False)


def backbone_options(f):
    """Options that say which backbone and weights; the same on every command that builds one."""

    @click.option("--backbone", "-b", required=True, help="Backbone name: pixels, any timm model (resnet18, timm/convnext_atto), or a plugin's.")
    @click.option("--pretrained", is_flag=True, help="timm: load timm's pretrained weights (from the local Hugging Face cache when offline).")
    @click.option("--weights", type=click.Path(), default=None, help="Weights: a .safetensors or state-dict .pth file (read with weights_only=True), or an ImageGPT folder.")
    @click.option("--image-size", type=click.IntRange(min=1, max=1024), default=None, help="Resize images to this square size before the backbone (default: the backbone's choice).")
    @click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for random init, --limit subsets and the task.")
    @functools.wraps(f)
    def wrapper(*args, backbone, pretrained, weights, image_size, seed, **kw):
        from backbones.base import BackboneOptions

        opts = BackboneOptions(pretrained=pretrained, weights=weights, image_size=image_size, seed=seed)
        return f(*args, backbone=backbone, backbone_options=opts, seed=seed, **kw)

    return wrapper


def data_options(f):
    @click.option("--dataset", "-d", required=True, help="Dataset name; see `bench datasets list`.")
    @click.option("--data-root", type=click.Path(file_okay=False), default=None, help="Folder holding the dataset files (else $BENCH_DATA_ROOT, else the system place).")
    @click.option("--limit", type=click.IntRange(min=1), default=None, help="Use a stratified subset of at most N rows per split, for quick runs.")
    @functools.wraps(f)
    def wrapper(*args, **kw):
        return f(*args, **kw)

    return wrapper


def precision_option(f):
    return click.option("--precision", type=click.Choice(["fp32", "bf16", "auto"]), default="fp32", show_default=True,
                        help="Extraction forward: fp32, or bf16 autocast (pays on GPUs and on CPUs with AVX512-BF16 "
                             "or AMX; features are stored as float32 and kept apart from fp32 ones); auto: bf16 on a "
                             "GPU.")(f)


def runtime_options(f):
    @click.option("--batch-size", type=click.IntRange(min=1, max=65536), default=256, show_default=True, help="Images per forward pass.")
    @click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
    @functools.wraps(f)
    def wrapper(*args, device, **kw):
        from bench.runtime import pick_device

        if kw.get("submit") == "slurm":  # jobs handed to a cluster pick their device on their node
            from bench.submit import device_name

            return f(*args, device=device_name(device), **kw)
        return f(*args, device=pick_device(device), **kw)

    return wrapper


def threads_option(f):
    """``--threads`` on a command that computes: the count is resolved (a bad $BENCH_THREADS is a
    one-line error) and applied once, before the command's work, and put back after it."""
    from bench.runtime import MAX_THREADS

    @click.option("--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None,
                  help="CPU threads to compute with (default: $BENCH_THREADS, else $OMP_NUM_THREADS, else the CPUs "
                       "this process may use, by its affinity and cgroup quota; under torchrun, shared among the "
                       "node's processes).")
    @functools.wraps(f)
    def wrapper(*args, threads, **kw):
        from bench.runtime import using_threads

        with using_threads(threads, "--threads"):
            return f(*args, **kw)

    return wrapper


@click.group(context_settings=CONTEXT)
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or notes.")
@click.version_option(package_name="igpt-bench", prog_name="bench")
def cli(debug, quiet):
    """Evaluate image representations: extract layer activations, probe them, tabulate.

    \b
    Example:
      bench run --backbone resnet18 --task linear-probe --dataset digits
    """


# -- listing ------------------------------------------------------------------------------------

@cli.group(context_settings=CONTEXT)
def backbones():
    """List backbones and show their layers.

    \b
    Example:
      bench backbones list 'resnet*'
      bench backbones show resnet18 --dataset digits
    """


@backbones.command("list", context_settings=CONTEXT)
@click.argument("pattern", required=False)
def backbones_list(pattern):
    """List backbone names matching PATTERN (fnmatch wildcards, e.g. 'resnet*').

    \b
    Example:
      bench backbones list 'convnext_*'
    """
    from rich.table import Table

    from bench.registry import BACKBONES, match

    t = Table("name", "source", "about")
    for name in BACKBONES.names():
        obj = BACKBONES.get(name)
        if getattr(obj, "family", False):
            for member in obj.list_names(pattern):
                t.add_row(member, name, "")
        elif match([name], pattern):
            t.add_row(name, BACKBONES.source(name), getattr(obj, "description", ""))
    if not t.row_count:
        raise BenchError(f"no backbone matches {pattern!r}; try a wider pattern such as '*{pattern}*'")
    _console().print(t)


@backbones.command("show", context_settings=CONTEXT)
@click.argument("name")
@click.option("--dataset", "-d", default=None, help="Build for this dataset's images (default: 3x224x224 input).")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help="Folder holding the dataset files.")
@click.option("--pretrained", is_flag=True, help="timm: load timm's pretrained weights.")
@click.option("--weights", type=click.Path(), default=None, help="Weights file (.safetensors or state-dict .pth) or ImageGPT folder.")
@click.option("--image-size", type=click.IntRange(min=1, max=1024), default=None, help="Input size the backbone resizes to.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for random init.")
def backbones_show(name, dataset, data_root, pretrained, weights, image_size, seed):
    """Show every exportable layer of backbone NAME with its feature width.

    \b
    Example:
      bench backbones show resnet18 --dataset fashion-mnist
    """
    from rich.table import Table

    from backbones.base import BackboneOptions, DataSpec, create_backbone, summary

    if dataset:
        from bench.datasets import load_split

        spec = DataSpec.of(load_split(dataset, "train", data_root, limit=1).images)
    else:
        spec = DataSpec(3, 224, 224)
    model = create_backbone(name, spec, BackboneOptions(pretrained, weights, image_size, seed))
    info = model.layer_info() if hasattr(model, "layer_info") else {
        layer: {"width": width} for layer, width in model.layer_widths().items()}
    cols = ["layer"] + sorted({k for v in info.values() for k in v}, key=lambda k: k != "width")
    t = Table(*cols, title=f"{name} on {dataset or 'a 3x224x224 input'} (fingerprint {model.fingerprint[:12]})")
    for layer in model.layers:
        t.add_row(layer, *(str(info[layer].get(c, "")) for c in cols[1:]))
    _console().print(t)
    facts = summary(model, spec)
    click.echo(f"parameters: {facts['parameters']:,}; forward FLOPs per image to the last layer: "
               f"{facts['flops_per_image']:,} ({facts['flops_per_image'] / 1e9:.3g} GFLOPs)")


@cli.group(context_settings=CONTEXT)
def tasks():
    """List tasks and show their options.

    \b
    Example:
      bench tasks show linear-probe
    """


@tasks.command("list", context_settings=CONTEXT)
def tasks_list():
    """List the registered tasks and their options.

    \b
    Example:
      bench tasks list
    """
    from bench.registry import TASKS

    _registry_table(TASKS, "options (-o KEY=VALUE)", lambda obj: ", ".join(
        f"{k}={v.show(v.default)}" for k, v in getattr(obj, "options", {}).items()))


@tasks.command("show", context_settings=CONTEXT)
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown"]), default="table", show_default=True,
              help="A terminal table, or the Markdown table the docs pages embed.")
def tasks_show(name, fmt):
    """Show task NAME: what it reads, its splits, and every option with its default and meaning.

    \b
    Example:
      bench tasks show linear-probe
    """
    from bench.registry import TASKS

    rows = option_rows(TASKS.get(name))
    if fmt == "markdown":
        click.echo("| option | default | meaning |\n|---|---|---|")
        for key, default, meaning in rows:
            cell = meaning.replace("|", "\\|")
            click.echo(f"| `{key}` | `{default}` | {cell} |")
        return
    from rich.table import Table

    task = TASKS.get(name)
    t = Table("option (-o KEY=VALUE)", "default", "meaning",
              title=f"{name}: {getattr(task, 'description', '')}")
    for row in rows:
        t.add_row(*row)
    _console().print(t)
    click.echo(f"reads: {getattr(task, 'reads', 'activations')}; splits: {', '.join(getattr(task, 'splits', ()))}")


def option_rows(task) -> list[tuple[str, str, str]]:
    """(option, default as a user types it, help line) for each option a task declares, in order."""
    return [(key, opt.show(opt.default), opt.help) for key, opt in getattr(task, "options", {}).items()]


def _registry_table(registry, extra_header, extra):
    from rich.table import Table

    t = Table("name", "about", extra_header)
    for name in registry.names():
        obj = registry.get(name)
        t.add_row(name, getattr(obj, "description", ""), extra(obj) if extra else registry.source(name))
    _console().print(t)


@cli.group(context_settings=CONTEXT)
def datasets():
    """List datasets.

    \b
    Example:
      bench datasets list
    """


@datasets.command("list", context_settings=CONTEXT)
def datasets_list():
    """List the registered datasets.

    \b
    Example:
      bench datasets list
    """
    from bench.registry import DATASETS

    _registry_table(DATASETS, "source", None)


# -- work ---------------------------------------------------------------------------------------

@cli.command(context_settings=CONTEXT)
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
                       batch_size=batch_size, device=device, precision=precision, quiet=_quiet(ctx), log=_log(ctx))
    if is_main():  # under torchrun, rank 0 reports
        click.echo(f"{acts.how}: {acts.path} ({acts.n_rows} rows; layers {', '.join(acts.layers)})")


@cli.command(context_settings=CONTEXT)
@click.option("--backbone", "-b", "backbone_names", multiple=True, required=True,
              help="Backbone name (repeatable: a sweep): pixels, any timm model (resnet18), igpt, igpt-8x512, a plugin's.")
@click.option("--pretrained", is_flag=True, help="timm: load timm's pretrained weights (from the local Hugging Face cache when offline).")
@click.option("--weights", "weights", multiple=True,
              help="Weights file or folder (repeatable); a quoted glob such as 'RUN/checkpoints/*' runs every match, in step order.")
@click.option("--image-size", type=click.IntRange(min=1, max=1024), default=None, help="Resize images to this square size before the backbone (default: the backbone's choice).")
@click.option("--seed", "seeds", multiple=True, default=["0"], show_default=True, metavar="N|A..B",
              help="Seed for random init, --limit subsets and the task; repeatable, or a range (0..4: seeds 0 to 4), "
                   "one run per seed.")
@click.option("--task", "-t", "task_names", multiple=True, required=True, help="Task name (repeatable); see `bench tasks list`.")
@click.option("--dataset", "-d", "dataset_names", multiple=True, required=True, help="Dataset name (repeatable); see `bench datasets list`.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help="Folder holding the dataset files (else $BENCH_DATA_ROOT, else the system place).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use a stratified subset of at most N rows per split, for quick runs.")
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
    from bench.report import frame, render, run_table, study_tables

    share = sweep.parse_shard(shard)
    runner = None
    if submit:
        from bench import submit as submitting

        params = submitting.parse_params(submit_options)
        submitting.check(submit, params)
        runner = submitting.runner(submit, params, ctx.params.get("threads"), _log(ctx))
    elif submit_options:
        raise BenchError("--submit-option goes with --submit slurm (or --submit local)")
    settings = Settings(layers=layers, data_root=data_root, limit=limit, tag=tag, batch_size=batch_size,
                        device=device, precision=precision, results_dir=results_dir, rerun=rerun, quiet=_quiet(ctx),
                        log=_log(ctx))
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
            _log(ctx)(line)
        if not mine:
            return
    if dry_run:
        _show_plan(sweep.dry_run(plan), ctx)
        return
    many_seeds = len({job.seed for job in plan.jobs}) > 1

    def show(outcome):
        if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 prints
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


@cli.group(context_settings=CONTEXT)
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
    from bench.report import render

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


@cli.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt_name", type=click.Choice(["table", "md", "csv", "html"]), default="table", show_default=True,
              help="Output format; html: one self-contained page with summary tables and the plots embedded.")
@click.option("--best", is_flag=True, help="Mark each run's layer with the best val top-1 (a '*'; a 'best' column in CSV).")
@click.option("--summary", "wide", is_flag=True,
              help="The summary (the default but for CSV): per dataset and task one row per run and layer, a column "
                   "per split and metric, runs that differ only in seed as mean ± std with their seeds (n), the best "
                   "layer marked; as in the HTML page.")
@click.option("--long", "long_form", is_flag=True,
              help="The tidy long form instead: one row per number (backbone, weights, step, layer, split, metric, "
                   "value, stderr, seed, …); what CSV gives by default.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the report to this file (default: print it).")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), default=None,
              help="Also write PNG plots into this folder: accuracy by layer depth, low-data curves, fine-tune curves.")
@click.option("--per-class", "per_class", is_flag=True,
              help="Add per-class test top-1 and a confusion matrix of each run's layer chosen by val (from the "
                   "predictions kept beside its results file); with --plot or html, confusion-matrix plots too.")
def report(paths, fmt_name, best, wide, long_form, out, plot_dir, per_class):
    """Render results files (or folders of them): per dataset and task a table of run × layer.

    Runs are ordered by what they are (checkpoints by step); runs that differ only in their seed
    are one row per layer, mean ± std over the seeds, with how often each layer was chosen.
    --long (and CSV) gives one row per number instead.

    \b
    Example:
      bench report bench-results/
      bench report bench-results/ --format md
      bench report bench-results/ --long --best
      bench report bench-results/ --format html --out report.html --plot plots/
    """
    from bench import api
    from bench.report import render_all, render_summary

    if wide and long_form:
        raise BenchError("--summary and --long ask for two layouts; choose one")
    wide = wide or (not long_form and fmt_name != "csv")
    if out:
        from bench.files import check_writable

        if fmt_name == "table":
            raise BenchError("--out writes md, csv or html; add --format md (or csv, html)")
        check_writable(out, "--out")
    if plot_dir:
        from bench.files import check_writable

        check_writable(Path(plot_dir) / "probe-depth.png", "--plot folder")
    df = api.report(*paths, best=best)
    if per_class:
        from bench.paired import confusion_figures, per_class_tables, render_tables

        classes, confusion = per_class_tables(df), confusion_figures(df) if fmt_name == "html" or plot_dir else {}
    if fmt_name == "html":
        from bench.html import page

        text = page(df, extra=classes, extra_figures=confusion) if per_class else page(df)
    else:
        text = render_summary(df, fmt_name) if wide else render_all(df, fmt_name)
        if per_class:
            more = render_tables(classes, fmt_name)  # printed here for ``table``
            text = "\n".join(t.rstrip("\n") + "\n" for t in (text, more) if t) or None
    if plot_dir:
        from bench.plots import write_all, write_figures

        written = write_all(df, plot_dir) + (write_figures(confusion, plot_dir) if per_class else [])
        for path in written or ["(no data to plot)"]:
            click.echo(f"plot: {path}", err=True)
    if out:
        from bench.files import atomic_write_bytes

        click.echo(f"wrote {atomic_write_bytes(out, (text or '').encode())}")
    elif text is not None:
        click.echo(text.rstrip("\n"))


@cli.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt_name", type=click.Choice(["table", "md", "csv"]), default="table", show_default=True, help="Output format.")
@click.option("--paired", "paired_only", is_flag=True,
              help="Only the paired table (with --format csv, it instead of the side-by-side one: a CSV holds one table).")
@click.option("--layers", "layer_pair", default=None,
              help="A,B: pair layer B against layer A within each run instead (one run is enough), e.g. --layers h2,h4.")
@click.option("--against", default=None, help="The run every Δ is against (a run id, results file or run label; default: the first in run order).")
@click.option("--all-metrics", is_flag=True, help="Also compare the settings tasks chose (L2 strength, k, epoch).")
def compare(paths, fmt_name, paired_only, layer_pair, against, all_metrics):
    """Put two or more runs (results files, or folders of them) side by side, with deltas
    against the first and the layer each run's val top-1 chose; then, on the same test examples,
    each run against the first: McNemar's exact p and a 95% paired-bootstrap interval of the
    difference (* where p < 0.05; runs on other examples keep their unpaired numbers and say why).

    \b
    Example:
      bench compare bench-results/pixels__digits__*.json bench-results/resnet18__digits__*.json
      bench compare bench-results/igpt__digits__linear-probe__*.json --layers h2,h4
    """
    from bench import api
    from bench.paired import PAIRED_TITLE, paired_view, parse_layer_pair
    from bench.report import render

    pair = parse_layer_pair(layer_pair)
    sides = None if paired_only or pair is not None else api.compare_tables(*paths, against=against,
                                                                             all_metrics=all_metrics)
    pairs = None if fmt_name == "csv" and sides is not None else api.paired(*paths, layers=pair, against=against)
    texts = []
    for title, side in sides or []:
        text = render(side if fmt_name == "csv" else side.drop(columns=["dataset", "task"]), fmt_name, title=title)
        texts.append(text if fmt_name == "csv" or text is None else f"### {title}\n\n{text}" if fmt_name == "md"
                     else text)
    if pairs is not None and len(pairs):
        text = render(pairs if fmt_name == "csv" else paired_view(pairs), fmt_name, title=PAIRED_TITLE)
        texts.append(f"### {PAIRED_TITLE}\n\n{text}" if fmt_name == "md" else text)
    elif pairs is not None and sides is None:
        raise BenchError("nothing to pair: no linear-probe, knn or finetune runs among them")
    text = "\n\n".join(t.rstrip("\n") for t in texts if t is not None)
    if text:
        click.echo(text)


@cli.command(context_settings=CONTEXT)
@backbone_options
@click.option("--n", "n", type=int, default=64, show_default=True, help="How many images to sample (1..1024).")
@click.option("--temperature", type=Number(0.01, 100), default=1.0, show_default=True, help="Softmax temperature, 0.01..100 (--top-k 1 for the likeliest color).")
@click.option("--top-k", type=int, default=None, help="Sample only among the K most likely colors (1..palette size).")
@click.option("--cols", type=click.IntRange(min=1), default=8, show_default=True, help="Images per row of the grid.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="PNG file for the grid.")
@runtime_options
@threads_option
@click.pass_context
def sample(ctx, backbone, backbone_options, seed, n, temperature, top_k, cols, out, batch_size, device):
    """Draw unconditional samples from a generative backbone into a PNG grid.

    \b
    Example:
      bench sample -b igpt --weights runs/tiny --n 64 --temperature 1.0 --top-k 8 --out samples.png
    """
    from bench.generate import sample_png

    click.echo(f"wrote {sample_png(backbone, backbone_options, n, temperature, top_k, cols, out, device)}")


@cli.command(context_settings=CONTEXT)
@backbone_options
@data_options
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True, help="Split to take images from.")
@click.option("--n", "n", type=int, default=8, show_default=True, help="How many images to complete (1..256).")
@click.option("--keep-rows", type=int, required=True, help="Rows of each image the model keeps (1..height-1).")
@click.option("--samples", type=int, default=4, show_default=True, help="Completions per image (1..32).")
@click.option("--temperature", type=Number(0.01, 100), default=1.0, show_default=True, help="Softmax temperature, 0.01..100 (--top-k 1 for the likeliest color).")
@click.option("--top-k", type=int, default=None, help="Sample only among the K most likely colors.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="PNG file: original | kept rows | completions per row.")
@runtime_options
@threads_option
@click.pass_context
def complete(ctx, backbone, backbone_options, seed, dataset, data_root, limit, split, n, keep_rows, samples,
             temperature,
             top_k, out, batch_size, device):
    """Complete the top rows of real images, as in the Image GPT blog.

    Each row of the grid: the original, what the model was shown, then its completions.

    \b
    Example:
      bench complete -b igpt --weights runs/tiny -d digits --n 8 --keep-rows 4 --samples 4 --out completions.png
    """
    from bench.generate import completion_png

    path = completion_png(backbone, backbone_options, dataset, split, data_root, limit, n, keep_rows, samples,
                          temperature,
                          top_k, out, device)
    click.echo(f"wrote {path}")


def _int_list(ctx, param, value):
    if not value:
        return ()
    try:
        return tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of step numbers") from None


@cli.command(context_settings=CONTEXT)
@click.option("--backbone", "-b", required=True, help="iGPT shape to train: igpt-tiny, igpt-mini, igpt-wide, igpt-s, ...")
@data_options
@click.option("--steps", type=click.IntRange(min=1), required=True, help="Optimizer steps in all.")
@click.option("--batch-size", type=click.IntRange(min=1, max=65536), default=32, show_default=True, help="Images per step (over all processes).")
@click.option("--lr", type=Number(0, 1, min_open=True), default=3e-3, show_default=True, help="Peak learning rate (AdamW, betas 0.9/0.95).")
@click.option("--warmup", type=click.IntRange(min=0), default=100, show_default=True, help="Linear warm-up steps before the cosine decay.")
@click.option("--weight-decay", type=Number(0, 10), default=0.01, show_default=True, help="AdamW weight decay on matrices and embeddings.")
@click.option("--grad-clip", type=Number(0, 1e6), default=1.0, show_default=True, help="Clip the gradient norm to this (0: off).")
@click.option("--save-at", default="", callback=_int_list, help="Comma-separated steps to checkpoint at (the last step always is).")
@click.option("--colors", type=click.IntRange(min=2, max=4096), default=None, help="Palette size (default 512 for RGB, 16 for grayscale).")
@click.option("--image-size", type=click.IntRange(min=1, max=128), default=None, help="Train at this square size (default: the dataset's).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for init, palette and data order.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run folder: settings, palette, log, checkpoints.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
# The choices are backbones.igpt.train.PRECISIONS, spelled out so that start-up imports no torch.
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="Training forward in bf16 autocast (weights and optimizer stay fp32); auto: bf16 on a GPU, fp32 on a CPU. "
                   "bf16 also pays on CPUs with AVX512-BF16 or AMX.")
@click.option("--compile/--no-compile", "compile_", default=False, show_default=True,
              help="Run the training step through torch.compile (pays on a GPU; the first step compiles; "
                   "a run may resume with or without it).")
@click.pass_context
@threads_option
def pretrain(ctx, backbone, dataset, data_root, limit, steps, batch_size, lr, warmup, weight_decay, grad_clip,
             save_at, colors, image_size, seed, out, device, precision, compile_):
    """Pretrain an Image GPT on a dataset (next-pixel prediction over a k-means palette).

    Rerunning the same command continues from the last checkpoint. Under `torchrun
    --nproc_per_node K` it trains with DistributedDataParallel.

    \b
    Example:
      bench pretrain -b igpt-tiny -d digits --steps 2000 --save-at 500,1000 --out runs/tiny
    """
    from backbones.igpt.train import TrainConfig
    from backbones.igpt.train import pretrain as do_pretrain
    from bench.runtime import pick_device

    cfg = TrainConfig(backbone=backbone, dataset=dataset, steps=steps, batch_size=batch_size, lr=lr,
                      warmup=warmup, weight_decay=weight_decay, grad_clip=grad_clip, save_at=save_at,
                      seed=seed, limit=limit, colors=colors, image_size=image_size, data_root=data_root,
                      precision=precision)
    final = do_pretrain(cfg, out, device=pick_device(device), quiet=_quiet(ctx), log=_log(ctx), compile=compile_)
    if final is not None and is_main():  # under torchrun, rank 0 reports
        click.echo(f"checkpoint: {final}")


@cli.command(context_settings=CONTEXT)
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default="bench-results", show_default=True, help="Folder for the run, the results JSON and the completions PNG.")
@click.option("--steps", type=click.IntRange(min=2), default=1200, show_default=True, help="Pretraining steps of the tiny iGPT (about 80 s on 2 cores).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for everything.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.pass_context
@threads_option
def demo(ctx, results_dir, steps, seed, device):
    """Pretrain a tiny iGPT on digits, probe it beside pixels and ResNet-18, draw completions.

    \b
    Example:
      bench demo --results bench-results
    """
    from pathlib import Path

    from bench.demo import demo as do_demo
    from bench.files import check_writable
    from bench.report import render
    from bench.runtime import pick_device

    check_writable(Path(results_dir) / "x.json", "--results folder")
    result = do_demo(results_dir, steps, seed, pick_device(device), _quiet(ctx), _log(ctx))
    click.echo(f"iGPT run: {result.run_dir}\ncompletions: {result.completions}")
    render(result.table, "table", title="linear probe on digits (* = best val layer of each backbone)")


@cli.group(context_settings=CONTEXT)
def benchmark():
    """Measure our implementations against named references, in one run.

    \b
    Example:
      bench benchmark probe --backbone pixels --dataset fashion-mnist --limit 5000
    """


@benchmark.command("probe", context_settings=CONTEXT)
@backbone_options
@data_options
@click.option("--layers", default="all", show_default=True, help="Comma-separated layer names, or 'all'.")
@click.option("--option", "-o", "task_options", multiple=True, help="linear-probe option KEY=VALUE (l2_grid, max_iter, patience).")
@runtime_options
@threads_option
@click.pass_context
def benchmark_probe(ctx, backbone, backbone_options, seed, dataset, data_root, limit, layers, task_options, batch_size,
                    device):
    """Our linear probe vs scikit-learn lbfgs looped over the same grid: accuracy and speed ratio.

    \b
    Example:
      bench benchmark probe -b pixels -d fashion-mnist --limit 5000
    """
    from bench.benchmark import probe_benchmark
    from bench.report import render

    table = probe_benchmark(backbone, backbone_options, dataset, layers=layers, task_options=task_options,
                            data_root=data_root,
                            limit=limit, batch_size=batch_size, device=device, quiet=_quiet(ctx), log=_log(ctx))
    rows = f" ({limit} rows a split at most)" if limit else ""
    render(table, "table", title=f"linear probe vs sklearn lbfgs · {backbone} · {dataset}{rows}")


@benchmark.command("pretrain", context_settings=CONTEXT)
@click.option("--backbone", "-b", default="igpt-wide", show_default=True, help="iGPT shape to time.")
@click.option("--image-size", type=click.IntRange(min=1, max=64), default=14, show_default=True, help="Square image size (tokens = size²).")
@click.option("--colors", type=click.IntRange(min=2, max=4096), default=16, show_default=True, help="Palette size.")
@click.option("--batch-size", type=click.IntRange(min=1, max=65536), default=16, show_default=True, help="Images per step.")
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True, help="Timed steps of each precision.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--compile", "compile_", is_flag=True, help="Also time both precisions through torch.compile.")
@threads_option
def benchmark_pretrain(backbone, image_size, colors, batch_size, steps, device, compile_):
    """Pretraining step time under bf16 autocast (and torch.compile) vs fp32, same init and batch: speed ratio.

    \b
    Example:
      bench benchmark pretrain -b igpt-wide --image-size 14 --batch-size 16
    """
    from bench.benchmark import pretrain_benchmark
    from bench.report import render
    from bench.runtime import pick_device

    device = pick_device(device)
    table = pretrain_benchmark(backbone, image_size, colors, batch_size, steps, device, compile_)
    render(table, "table", title=f"pretraining step · {backbone} · {image_size}x{image_size}, {colors} colors, "
                              f"batch {batch_size} · {device}")


@benchmark.command("sample", context_settings=CONTEXT)
@backbone_options
@click.option("--n", "n", type=click.IntRange(min=1, max=1024), default=16, show_default=True, help="Images to sample (1..1024).")
@runtime_options
@threads_option
def benchmark_sample(backbone, backbone_options, seed, n, batch_size, device):
    """KV-cached sampling vs recomputing the whole prefix at every step: same tokens, speed ratio.

    \b
    Example:
      bench benchmark sample -b igpt --weights runs/tiny --n 16
    """
    from backbones.base import DataSpec
    from bench.benchmark import sample_benchmark
    from bench.generate import generative_backbone
    from bench.report import render

    model = generative_backbone(backbone, backbone_options, DataSpec(1, 1, 1), device)
    render(sample_benchmark(model, n, seed), "table",
           title=f"sampling {n} images of {model.height}x{model.width} · {backbone} · {device}")


@benchmark.command("knn", context_settings=CONTEXT)
@click.option("--n-train", type=click.IntRange(min=1), default=54000, show_default=True, help="Rows of the bank (train features).")
@click.option("--n-query", type=click.IntRange(min=1), default=10000, show_default=True, help="Query rows.")
@click.option("--dim", type=click.IntRange(min=1), default=256, show_default=True, help="Feature width.")
@click.option("--classes", type=click.IntRange(min=2), default=10, show_default=True, help="Number of classes.")
@click.option("-k", "ks", default="10,20,50,100,200", show_default=True, help="Comma-separated neighbour counts (ours: all from one search; sklearn: the largest).")
@click.option("--temperature", type=Number(0, 100, min_open=True), default=0.07, show_default=True, help="Vote weight exp(similarity / temperature).")
@click.option("--block-size", type=click.IntRange(min=1), default=32768, show_default=True, help="Bank rows compared with 256 queries at a time (ours).")
@click.option("--no-sklearn", is_flag=True, help="Time ours only.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the synthetic features.")
@click.option("--device", default="cpu", show_default=True, help="auto, cpu or cuda[:N] (ours).")
@threads_option
def benchmark_knn(n_train, n_query, dim, classes, ks, temperature, block_size, no_sklearn, seed, device):
    """Our blocked cosine kNN vs scikit-learn brute force on synthetic features: time, memory, agreement.

    \b
    Example:
      bench benchmark knn --n-train 54000 --n-query 10000 --dim 256
    """
    from bench.benchmark import knn_benchmark
    from bench.report import render
    from bench.runtime import pick_device
    from tasks.knn import parse_ks

    try:
        k_values = parse_ks(ks)
    except ValueError as e:
        raise click.BadParameter(f"{ks!r}: {e}", param_hint="-k") from None
    if k_values[-1] > n_train:
        raise click.BadParameter(f"{k_values[-1]} neighbours asked of a bank of {n_train} rows; use -k values of at most --n-train", param_hint="-k")
    device = pick_device(device)
    table = knn_benchmark(n_train, n_query, dim, classes, k_values, temperature, block_size, seed, device,
                          sklearn=not no_sklearn)
    render(table, "table", title=f"cosine kNN · {n_train} x {dim} bank, {n_query} queries, {classes} classes · {device}")


@cli.command(context_settings=CONTEXT)
@click.option("--quick", is_flag=True, help="Small sizes: a smoke test of every row (minutes on 2 cores).")
@click.option("--only", "only", multiple=True, type=click.Choice(["extract", "flops", "probe", "sample", "memory", "gpu"]),
              help="Run only these groups of rows (repeatable).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the machine and every row to this JSON file.")
@click.option("--profile", is_flag=True,
              help="Also run our side of each row once more under torch's profiler and print where its time "
                   "goes: the top operators (kernels on a GPU) by self time, as shares of that call's wall time.")
@click.option("--busy", is_flag=True,
              help="Run every row beside a process that keeps one of our CPUs busy, as on a shared machine "
                   "(Linux); the same targets hold.")
@click.pass_context
@threads_option
def perf(ctx, quick, only, json_out, profile, busy):
    """Our fast paths against the references, in one process: each row's two times, their ratio,
    the target, and a correctness check of the fast path against the reference.

    transformers is optional (pip install -e '.[perf]'); without it its rows say so.

    \b
    Example:
      bench perf --quick
      bench perf --json perf.json
      bench perf --only probe --profile
      bench perf --busy --only sample --only probe
    """
    import json

    from bench import perf as perf_rows
    from bench.report import render

    if json_out:
        from bench.files import check_writable

        check_writable(Path(json_out), "--json")
    info, rows = perf_rows.run(quick=quick, only=set(only), log=_log(ctx), profile=profile, busy=busy)
    click.echo(" · ".join(f"{k} {v}" for k, v in info.items() if v is not None))
    render(perf_rows.table(rows, quick), "table", title=perf_rows.title(quick, info["busy cpu"]))
    if profile:
        profiled = perf_rows.profile_table(rows)
        if profiled.empty:
            click.echo("--profile: none of these rows ran anything here to profile")
        else:
            render(profiled, "table", title="where our time goes: one more call of our side under torch's profiler "
                                            "(self time; share of that call's wall time, the profiler's own cost included)")
    if json_out:
        from bench.files import atomic_write_bytes

        doc = {"machine": info, "quick": quick, "busy": busy, "rows": perf_rows.as_dicts(rows)}
        click.echo(f"wrote {atomic_write_bytes(json_out, (json.dumps(doc, indent=1) + chr(10)).encode())}")
    failed = [r for r in rows if r.ok is False]
    if failed:
        raise BenchError(f"{len(failed)} correctness check(s) failed: " + "; ".join(f"{r.row} ({r.setting}): {r.check}"
                                                                                    for r in failed))


GLOBAL_FLAGS = ("--debug", "--quiet", "-q")


def global_flags_first(argv: list[str]) -> list[str]:
    """Move the global flags to the front wherever they stand (``bench run … --quiet``), up to a
    ``--`` that ends the options."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in argv[:end] if a not in GLOBAL_FLAGS] + argv[end:]


def one_line(text: str) -> str:
    """An error message as one line: control characters a user's value brought in (a newline in a
    path) are shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def say_error(line: str, code: int) -> None:
    """A user error's one line on stderr. Under torchrun every process meets the same error (the
    checks are alike on each, and an error during the work is shared by all): rank 0 prints it,
    saying how to read the launcher's report that follows, and every rank puts it in the
    launcher's error file, so that report names it for each process instead of a bare exit code."""
    import json
    import time

    rank, world = launch()
    recorded = False
    if world > 1 and os.environ.get("TORCHELASTIC_ERROR_FILE"):
        with contextlib.suppress(OSError):
            Path(os.environ["TORCHELASTIC_ERROR_FILE"]).write_text(json.dumps(
                {"message": {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}}))
            recorded = True
    if recorded and rank == 0:
        line += (f" [torchrun: the {world} processes stop alike (exit {code}); the launcher's ChildFailedError "
                 "report below repeats this line per process]")
    if rank == 0 or not recorded:  # a launcher without an error file: each process says it
        click.echo(line, err=True)


def main(argv=None) -> None:
    """Entry point: one-line errors with exit code 2, tracebacks only with --debug."""
    argv = global_flags_first(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in argv or os.environ.get("BENCH_DEBUG") == "1"
    from bench.runtime import keep_freed_memory

    keep_freed_memory()
    import signal

    def terminated(signum, frame):  # a scheduler's SIGTERM ends a run as Ctrl-C does: locks let go
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    if not [a for a in argv if a not in GLOBAL_FLAGS]:  # a bare `bench`: its help, not an error
        click.echo(cli.get_help(click.Context(cli, info_name="bench")))
        sys.exit(0)
    try:
        if any("\x00" in a for a in argv):
            raise BenchError("an argument holds a NUL character, which no path or value may; retype it")
        rv = cli.main(args=argv, prog_name="bench", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except BenchError as e:
        if debug:
            raise
        say_error(f"error: {one_line(str(e))}", e.exit_code)
        sys.exit(e.exit_code)
    except click.exceptions.UsageError as e:
        if debug:
            raise
        where = f"`{e.ctx.command_path} --help`" if e.ctx else "`bench --help`"
        say_error(f"error: {one_line(e.format_message())} (see {where})", 2)
        sys.exit(2)
    except click.exceptions.Abort:  # click's form of Ctrl-C (and of our SIGTERM)
        click.echo("interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except OSError as e:
        if debug or e.filename is None:  # not about a path the user gave: a bug, with its traceback
            raise
        # A path the checks before the work did not foresee (a name too long, a permission, a full
        # disk): the system's words about that path, as a user error.
        click.echo(one_line(f"error: {e.filename}: {e.strerror or e}; check the path, its permissions and free "
                            "space"), err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the last line of defence
        if debug:
            raise
        click.echo(one_line(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)"),
                   err=True)
        sys.exit(1)

