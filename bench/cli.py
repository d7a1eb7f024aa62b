"""The `bench` command line: click for parsing, rich for output.

Every mistake a user can make ends in one line on stderr and exit code 2; ``--debug`` shows the
traceback of anything else.
"""

from __future__ import annotations

import functools
import os
import sys

import click

from bench.errors import BenchError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def _log(ctx):
    quiet = ctx.find_root().params.get("quiet", False)
    return (lambda msg: None) if quiet else (lambda msg: _console(True).print(f"[dim]{msg}[/dim]", soft_wrap=True))


def backbone_options(f):
    """Options that say which backbone and weights; the same on every command that builds one."""

    @click.option("--backbone", "-b", required=True, help="Backbone name: pixels, any timm model (resnet18, timm/convnext_atto), or a plugin's.")
    @click.option("--pretrained", is_flag=True, help="timm: load timm's pretrained weights (from the local Hugging Face cache when offline).")
    @click.option("--weights", type=click.Path(), default=None, help="Weights: a .safetensors or state-dict .pth file (read with weights_only=True), or an ImageGPT folder.")
    @click.option("--image-size", type=click.IntRange(min=1), default=None, help="Resize images to this square size before the backbone (default: the backbone's choice).")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed for random init, --limit subsets and the task.")
    @functools.wraps(f)
    def wrapper(*args, backbone, pretrained, weights, image_size, seed, **kw):
        from backbones.base import BackboneOptions

        opts = BackboneOptions(pretrained=pretrained, weights=weights, image_size=image_size, seed=seed)
        return f(*args, backbone=backbone, bopts=opts, seed=seed, **kw)

    return wrapper


def data_options(f):
    @click.option("--dataset", "-d", required=True, help="Dataset name; see `bench datasets list`.")
    @click.option("--data-root", type=click.Path(file_okay=False), default=None, help="Folder holding the dataset files (else $BENCH_DATA_ROOT, else the system place).")
    @click.option("--limit", type=click.IntRange(min=1), default=None, help="Use a stratified subset of at most N rows per split, for quick runs.")
    @functools.wraps(f)
    def wrapper(*args, **kw):
        return f(*args, **kw)

    return wrapper


def runtime_options(f):
    @click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Images per forward pass.")
    @click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
    @functools.wraps(f)
    def wrapper(*args, device, **kw):
        from bench.runtime import pick_device

        return f(*args, device=pick_device(device), **kw)

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
    from bench.registry import BACKBONES, match
    from rich.table import Table

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
@click.option("--image-size", type=click.IntRange(min=1), default=None, help="Input size the backbone resizes to.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random init.")
def backbones_show(name, dataset, data_root, pretrained, weights, image_size, seed):
    """Show every exportable layer of backbone NAME with its feature width.

    \b
    Example:
      bench backbones show resnet18 --dataset fashion-mnist
    """
    from backbones.base import BackboneOptions, DataSpec, create_backbone
    from rich.table import Table

    if dataset:
        from bench.datasets import load_split

        spec = DataSpec.of(load_split(dataset, "train", data_root, limit=1).images)
    else:
        spec = DataSpec(3, 224, 224)
    bb = create_backbone(name, spec, BackboneOptions(pretrained, weights, image_size, seed))
    info = bb.layer_info() if hasattr(bb, "layer_info") else {l: {"width": w} for l, w in bb.layer_widths().items()}
    cols = ["layer"] + sorted({k for v in info.values() for k in v}, key=lambda k: k != "width")
    t = Table(*cols, title=f"{name} on {dataset or 'a 3x224x224 input'} (fingerprint {bb.fingerprint[:12]})")
    for layer in bb.layers:
        t.add_row(layer, *(str(info[layer].get(c, "")) for c in cols[1:]))
    _console().print(t)


@cli.group(context_settings=CONTEXT)
def tasks():
    """List tasks.

    \b
    Example:
      bench tasks list
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
        f"{k}={v.default}" for k, v in getattr(obj, "options", {}).items()))


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
@click.pass_context
def extract(ctx, backbone, bopts, seed, dataset, data_root, limit, split, layers, out, batch_size, device):
    """Export pooled layer activations of a backbone on one split to HDF5.

    Reuses a finished file with the same inputs, resumes an interrupted one, and refuses a file
    made by something else.

    \b
    Example:
      bench extract --backbone resnet18 --dataset digits --split train --layers layer2,layer3
    """
    from backbones.base import DataSpec, create_backbone
    from bench.datasets import load_split
    from bench.extract import extract as do_extract

    quiet = ctx.find_root().params["quiet"]
    data = load_split(dataset, split, data_root, limit, seed)
    bb = create_backbone(backbone, DataSpec.of(data.images), bopts)
    layer_list = bb.check_layers(layers)
    act, how = do_extract(bb, data, layer_list, limit=limit, seed=seed, out=out, batch_size=batch_size,
                          device=device, quiet=quiet, log=_log(ctx))
    click.echo(f"{how}: {act.path} ({act.n_rows} rows; layers {', '.join(act.layers)})")


@cli.command(context_settings=CONTEXT)
@backbone_options
@click.option("--task", "-t", required=True, help="Task name; see `bench tasks list`.")
@data_options
@click.option("--layers", default="all", show_default=True, help="Comma-separated layer names, or 'all'.")
@click.option("--option", "-o", "task_options", multiple=True, help="Task option KEY=VALUE (repeatable); see `bench tasks list`.")
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default="bench-results", show_default=True, help="Folder for the results JSON.")
@runtime_options
@click.pass_context
def run(ctx, backbone, bopts, seed, task, dataset, data_root, limit, layers, task_options, results_dir, batch_size, device):
    """Run a task on a backbone's activations and print the results table.

    \b
    Example:
      bench run --backbone resnet18 --task linear-probe --dataset digits
      bench run -b pixels -t linear-probe -d fashion-mnist --limit 2000 -o max_iter=300
    """
    from bench.report import render, run_table
    from bench.run import run as do_run

    quiet = ctx.find_root().params["quiet"]
    task_obj, records, path = do_run(
        backbone=backbone, task=task, dataset=dataset, options=bopts, task_options=task_options,
        layers=layers, data_root=data_root, limit=limit, seed=seed, batch_size=batch_size,
        device=device, results_dir=results_dir, quiet=quiet, log=_log(ctx),
    )
    table = run_table(records, task_obj.columns)
    render(table, "table", title=f"{task} · {backbone} · {dataset}" + (f" (limit {limit})" if limit else ""))
    click.echo(f"results: {path}")


@cli.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt_name", type=click.Choice(["table", "md", "csv"]), default="table", show_default=True, help="Output format.")
@click.option("--best", is_flag=True, help="Add, per run, the layer chosen by val top-1.")
def report(paths, fmt_name, best):
    """Render results files (or folders of them) as one tidy table.

    \b
    Example:
      bench report bench-results/ --format md
    """
    import pandas as pd

    from bench.report import best_rows, load, render, tidy_view

    df = load(paths)
    if best:
        df = pd.concat([df, best_rows(df)], ignore_index=True)
    text = render(tidy_view(df), fmt_name)
    if text is not None:
        click.echo(text.rstrip("\n"))


@cli.command(context_settings=CONTEXT)
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option("--format", "fmt_name", type=click.Choice(["table", "md", "csv"]), default="table", show_default=True, help="Output format.")
def compare(a, b, fmt_name):
    """Put two runs (results files or folders) side by side, with B − A deltas.

    \b
    Example:
      bench compare bench-results/pixels__digits__linear-probe__seed0.json \\
                    bench-results/resnet18__digits__linear-probe__seed0.json
    """
    from bench.report import compare as do_compare
    from bench.report import load, render

    df = do_compare(load([a]), load([b]))
    text = render(df, fmt_name, title=f"A = {a}\nB = {b}")
    if text is not None:
        click.echo(text.rstrip("\n"))


def _generative_backbone(backbone, bopts, spec):
    from backbones.base import create_backbone

    bb = create_backbone(backbone, spec, bopts)
    if not getattr(bb, "generative", False):
        raise BenchError(f"backbone {backbone!r} cannot generate images; use an igpt backbone with --weights")
    return bb


def _png_out(out):
    from bench.store import check_writable

    if not str(out).lower().endswith(".png"):
        raise BenchError(f"--out {out} must name a .png file")
    check_writable(out, "--out")


@cli.command(context_settings=CONTEXT)
@backbone_options
@click.option("--n", "n", type=int, default=64, show_default=True, help="How many images to sample (1..1024).")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="Softmax temperature, > 0.")
@click.option("--top-k", type=int, default=None, help="Sample only among the K most likely colors (1..palette size).")
@click.option("--cols", type=click.IntRange(min=1), default=8, show_default=True, help="Images per row of the grid.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="PNG file for the grid.")
@runtime_options
@click.pass_context
def sample(ctx, backbone, bopts, seed, n, temperature, top_k, cols, out, batch_size, device):
    """Draw unconditional samples from a generative backbone into a PNG grid.

    \b
    Example:
      bench sample -b igpt --weights runs/tiny --n 64 --temperature 1.0 --top-k 8 --out samples.png
    """
    from backbones.base import DataSpec
    from bench.grid import save_grid

    if not 1 <= n <= 1024:
        raise BenchError(f"--n must lie in 1..1024, got {n}")
    if not bopts.weights:
        raise BenchError("bench sample needs --weights (a checkpoint, run folder or ImageGPT folder)")
    _png_out(out)
    bb = _generative_backbone(backbone, bopts, DataSpec(1, 1, 1)).to(device)
    images = bb.sample(n, temperature, top_k, seed)
    click.echo(f"wrote {save_grid(images, min(cols, n), out)}")


@cli.command(context_settings=CONTEXT)
@backbone_options
@data_options
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True, help="Split to take images from.")
@click.option("--n", "n", type=int, default=8, show_default=True, help="How many images to complete (1..256).")
@click.option("--keep-rows", type=int, required=True, help="Rows of each image the model keeps (1..height-1).")
@click.option("--samples", type=int, default=4, show_default=True, help="Completions per image (1..32).")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="Softmax temperature, > 0.")
@click.option("--top-k", type=int, default=None, help="Sample only among the K most likely colors.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="PNG file: original | kept rows | completions per row.")
@runtime_options
@click.pass_context
def complete(ctx, backbone, bopts, seed, dataset, data_root, limit, split, n, keep_rows, samples, temperature,
             top_k, out, batch_size, device):
    """Complete the top rows of real images, as in the Image GPT blog.

    Each row of the grid: the original, what the model was shown, then its completions.

    \b
    Example:
      bench complete -b igpt --weights runs/tiny -d digits --n 8 --keep-rows 4 --samples 4 --out completions.png
    """
    import numpy as np

    from backbones.base import DataSpec
    from bench.datasets import load_split
    from bench.grid import save_grid

    if not 1 <= n <= 256:
        raise BenchError(f"--n must lie in 1..256, got {n}")
    if not 1 <= samples <= 32:
        raise BenchError(f"--samples must lie in 1..32, got {samples}")
    _png_out(out)
    data = load_split(dataset, split, data_root, limit if limit else None, seed)
    bb = _generative_backbone(backbone, bopts, DataSpec.of(data.images)).to(device)
    idx = np.random.default_rng(seed).choice(len(data), size=min(n, len(data)), replace=False)
    originals = data.images[np.sort(idx)]
    rows = bb.completion_grid(originals, keep_rows, samples, temperature, top_k, seed)
    path = save_grid(rows.reshape(-1, *rows.shape[2:]), rows.shape[1], out)
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
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Images per step (over all processes).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3e-3, show_default=True, help="Peak learning rate (AdamW, betas 0.9/0.95).")
@click.option("--warmup", type=click.IntRange(min=0), default=100, show_default=True, help="Linear warm-up steps before the cosine decay.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.01, show_default=True, help="AdamW weight decay on matrices and embeddings.")
@click.option("--grad-clip", type=click.FloatRange(min=0), default=1.0, show_default=True, help="Clip the gradient norm to this (0: off).")
@click.option("--save-at", default="", callback=_int_list, help="Comma-separated steps to checkpoint at (the last step always is).")
@click.option("--colors", type=click.IntRange(min=2), default=None, help="Palette size (default 512 for RGB, 16 for grayscale).")
@click.option("--image-size", type=click.IntRange(min=1), default=None, help="Train at this square size (default: the dataset's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for init, palette and data order.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run folder: settings, palette, log, checkpoints.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
# The choices are backbones.igpt.train.PRECISIONS, spelled out so that start-up imports no torch.
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="Training forward in bf16 autocast (weights and optimizer stay fp32); auto: bf16 on a GPU, fp32 on a CPU. "
                   "bf16 also pays on CPUs with AVX512-BF16 or AMX.")
@click.pass_context
def pretrain(ctx, backbone, dataset, data_root, limit, steps, batch_size, lr, warmup, weight_decay, grad_clip,
             save_at, colors, image_size, seed, out, device, precision):
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
    final = do_pretrain(cfg, out, device=pick_device(device), quiet=ctx.find_root().params["quiet"], log=_log(ctx))
    if final is not None and int(__import__("os").environ.get("RANK", "0")) == 0:
        click.echo(f"checkpoint: {final}")


@cli.command(context_settings=CONTEXT)
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default="bench-results", show_default=True, help="Folder for the run, the results JSON and the completions PNG.")
@click.option("--steps", type=click.IntRange(min=2), default=1200, show_default=True, help="Pretraining steps of the tiny iGPT (about 80 s on 2 cores).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for everything.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.pass_context
def demo(ctx, results_dir, steps, seed, device):
    """Pretrain a tiny iGPT on digits, probe it beside pixels and ResNet-18, draw completions.

    \b
    Example:
      bench demo --results bench-results
    """
    import pandas as pd

    from bench.demo import demo as do_demo
    from bench.report import render, run_table
    from bench.runtime import pick_device
    from bench.store import check_writable

    check_writable(__import__("pathlib").Path(results_dir) / "x.json", "--results folder")
    records, run_dir, png = do_demo(results_dir, steps, seed, pick_device(device), ctx.find_root().params["quiet"],
                                    _log(ctx))
    cols = {("val", "top1"): "val top-1", ("test", "top1"): "test top-1", ("val", "l2"): "chosen L2"}
    parts = []
    for backbone in dict.fromkeys(r["backbone"] for r in records):
        t = run_table([r for r in records if r["backbone"] == backbone], cols)
        t.insert(0, "backbone", backbone)
        parts.append(t)
    click.echo(f"iGPT run: {run_dir}\ncompletions: {png}")
    render(pd.concat(parts, ignore_index=True), "table",
           title="linear probe on digits (* = best val layer of each backbone)")


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
@click.pass_context
def benchmark_probe(ctx, backbone, bopts, seed, dataset, data_root, limit, layers, task_options, batch_size, device):
    """Our linear probe vs scikit-learn lbfgs looped over the same grid: accuracy and speed ratio.

    \b
    Example:
      bench benchmark probe -b pixels -d fashion-mnist --limit 5000
    """
    import pandas as pd

    from bench.benchmark import compare_probes
    from bench.registry import TASKS
    from bench.report import render
    from bench.run import extract_splits

    quiet = ctx.find_root().params["quiet"]
    topts = TASKS.get("linear-probe")().parse_options(task_options)
    _, layer_list, _, acts, _ = extract_splits(
        backbone=backbone, dataset=dataset, splits=("train", "val", "test"), options=bopts, layers=layers,
        data_root=data_root, limit=limit, seed=seed, batch_size=batch_size, device=device, quiet=quiet,
        log=_log(ctx))
    rows = []
    y = {s: acts[s].labels for s in acts}
    for layer in layer_list:
        X = {s: acts[s].read(layer) for s in acts}
        res = compare_probes(X["train"], y["train"], X["val"], y["val"], X["test"], y["test"],
                             topts["l2_grid"], topts["max_iter"], topts["patience"])
        (va, te, lam, t), (sva, ste, slam, st) = res["ours"], res["sklearn"]
        rows.append({"layer": layer, "val ours": va, "val sklearn": sva, "test ours": te,
                     "test sklearn": ste, "test delta": te - ste, "L2 ours": lam, "L2 sklearn": slam,
                     "s ours": t, "s sklearn": st, "speed-up": st / t})
    render(pd.DataFrame(rows), "table", title=f"linear probe vs sklearn lbfgs · {backbone} · {dataset} ({len(y['train'])} train rows)")


@benchmark.command("pretrain", context_settings=CONTEXT)
@click.option("--backbone", "-b", default="igpt-wide", show_default=True, help="iGPT shape to time.")
@click.option("--image-size", type=click.IntRange(min=1, max=64), default=14, show_default=True, help="Square image size (tokens = size²).")
@click.option("--colors", type=click.IntRange(min=2), default=16, show_default=True, help="Palette size.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Images per step.")
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True, help="Timed steps of each precision.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
def benchmark_pretrain(backbone, image_size, colors, batch_size, steps, device):
    """Pretraining step time under bf16 autocast vs fp32, same init and batch: speed ratio.

    \b
    Example:
      bench benchmark pretrain -b igpt-wide --image-size 14 --batch-size 16
    """
    import pandas as pd

    from bench.benchmark import compare_precisions
    from bench.report import render
    from bench.runtime import pick_device

    device = pick_device(device)
    res = compare_precisions(backbone, colors, image_size, batch_size, steps, device)
    ref = res["fp32"][0]
    df = pd.DataFrame([{"precision": p, "s/step": t, "images/s": batch_size / t, "speed-up vs fp32": ref / t,
                        f"loss after {steps + 2} steps": loss} for p, (t, loss) in res.items()])
    render(df, "table", title=f"pretraining step · {backbone} · {image_size}x{image_size}, {colors} colors, "
                              f"batch {batch_size} · {device}")


@benchmark.command("sample", context_settings=CONTEXT)
@backbone_options
@click.option("--n", "n", type=click.IntRange(min=1), default=16, show_default=True, help="Images to sample.")
@runtime_options
def benchmark_sample(backbone, bopts, seed, n, batch_size, device):
    """KV-cached sampling vs recomputing the whole prefix at every step: same tokens, speed ratio.

    \b
    Example:
      bench benchmark sample -b igpt --weights runs/tiny --n 16
    """
    import time

    import numpy as np
    import pandas as pd

    from backbones.base import DataSpec
    from bench.report import render

    bb = _generative_backbone(backbone, bopts, DataSpec(1, 1, 1)).to(device)
    times, outs = {}, {}
    for name, cache in (("kv-cache", True), ("full recompute", False)):
        t = time.perf_counter()
        outs[name] = bb.sample(n, 1.0, None, seed, use_cache=cache)
        times[name] = time.perf_counter() - t
    same = bool(np.array_equal(outs["kv-cache"], outs["full recompute"]))
    df = pd.DataFrame([{"method": k, "seconds": v, "speed-up vs full": times["full recompute"] / v,
                        "same images": same} for k, v in times.items()])
    render(df, "table", title=f"sampling {n} images of {bb.height}x{bb.width} · {backbone} · {device}")


def main(argv=None) -> None:
    """Entry point: one-line errors with exit code 2, tracebacks only with --debug."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("BENCH_DEBUG") == "1"
    from bench.runtime import keep_freed_memory

    keep_freed_memory()
    try:
        rv = cli.main(args=argv, prog_name="bench", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except BenchError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.UsageError as e:
        if debug:
            raise
        where = f"`{e.ctx.command_path} --help`" if e.ctx else "`bench --help`"
        click.echo(f"error: {e.format_message()} (see {where})", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the last line of defence
        if debug:
            raise
        click.echo(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)
