"""`bench perf`: our implementations timed against their references. Alone it runs the fixed rows
(``bench.perf``); ``bench perf probe|pretrain|sample|knn`` compares one component with your backbone
or sizes (``bench.benchmark``). ``bench benchmark ...`` is the same four commands under their old name."""

from __future__ import annotations

from pathlib import Path

import click

from bench.cli.options import (
    CONTEXT,
    SEED,
    Number,
    backbone_options,
    data_options,
    is_quiet,
    note_log,
    runtime_options,
    threads_option,
)
from bench.errors import BenchError


@click.group(context_settings=CONTEXT)
def benchmark():
    """The same as `bench perf probe|pretrain|sample|knn` (the old name, kept for scripts).

    \b
    Example:
      bench benchmark probe --backbone pixels --dataset fashion-mnist --limit 5000
    """


@click.command("probe", context_settings=CONTEXT)
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
      bench perf probe -b pixels -d fashion-mnist --limit 5000
    """
    from bench.benchmark import probe_benchmark
    from bench.render import render

    table = probe_benchmark(backbone, backbone_options, dataset, layers=layers, task_options=task_options,
                            data_root=data_root,
                            limit=limit, batch_size=batch_size, device=device, quiet=is_quiet(ctx), log=note_log(ctx))
    rows = f" ({limit} rows a split at most)" if limit else ""
    render(table, "table", title=f"linear probe vs sklearn lbfgs · {backbone} · {dataset}{rows}")


@click.command("pretrain", context_settings=CONTEXT)
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
      bench perf pretrain -b igpt-wide --image-size 14 --batch-size 16
    """
    from bench.benchmark import pretrain_benchmark
    from bench.render import render
    from bench.runtime import pick_device

    device = pick_device(device)
    table = pretrain_benchmark(backbone, image_size, colors, batch_size, steps, device, compile_)
    render(table, "table", title=f"pretraining step · {backbone} · {image_size}x{image_size}, {colors} colors, "
                              f"batch {batch_size} · {device}")


@click.command("sample", context_settings=CONTEXT)
@backbone_options
@click.option("--n", "n", type=click.IntRange(min=1, max=1024), default=16, show_default=True, help="Images to sample (1..1024).")
@runtime_options
@threads_option
def benchmark_sample(backbone, backbone_options, seed, n, batch_size, device):
    """KV-cached sampling vs recomputing the whole prefix at every step: same tokens, speed ratio.

    \b
    Example:
      bench perf sample -b igpt --weights runs/tiny --n 16
    """
    from backbones.base import DataSpec
    from bench.benchmark import sample_benchmark
    from bench.generate import generative_backbone
    from bench.render import render

    model = generative_backbone(backbone, backbone_options, DataSpec(1, 1, 1), device)
    render(sample_benchmark(model, n, seed), "table",
           title=f"sampling {n} images of {model.height}x{model.width} · {backbone} · {device}")


@click.command("knn", context_settings=CONTEXT)
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
      bench perf knn --n-train 54000 --n-query 10000 --dim 256
    """
    from bench.benchmark import knn_benchmark
    from bench.render import render
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


@click.group(context_settings=CONTEXT, invoke_without_command=True)
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
    the target, and a correctness check of the fast path against the reference. With a command
    (probe, pretrain, sample, knn): that one component, with your backbone or sizes.

    transformers is optional (pip install -e '.[perf]'); without it its rows say so.

    \b
    Example:
      bench perf --quick
      bench perf --json perf.json
      bench perf --only probe --profile
      bench perf --busy --only sample --only probe
      bench perf knn --n-train 54000 --n-query 10000 --dim 256
    """
    import json

    if ctx.invoked_subcommand is not None:
        sub = ctx.invoked_subcommand
        if ctx.params.get("threads") is not None:
            raise BenchError(f"--threads of `bench perf {sub}` goes after {sub}: bench perf {sub} --threads N")
        given = [flag for flag, value in (("--quick", quick), ("--only", only), ("--json", json_out),
                                          ("--profile", profile), ("--busy", busy)) if value]
        if given:
            raise BenchError(f"{', '.join(given)} belong to the rows of `bench perf` alone, not to `bench perf "
                             f"{sub}`; drop them, or run the two separately")
        return

    from bench import perf as perf_rows
    from bench.render import render

    if json_out:
        from bench.files import check_writable

        check_writable(Path(json_out), "--json")
    info, rows = perf_rows.run(quick=quick, only=set(only), log=note_log(ctx), profile=profile, busy=busy)
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


for _command in (benchmark_probe, benchmark_pretrain, benchmark_sample, benchmark_knn):
    perf.add_command(_command)
    benchmark.add_command(_command)
