"""`bench sample`, `bench complete`, `bench pretrain` and `bench demo`: commands that train or draw from an iGPT."""

from __future__ import annotations

import click

from bench.cli.options import (
    CONTEXT,
    SEED,
    Number,
    backbone_options,
    data_options,
    echo_main,
    is_quiet,
    note_log,
    runtime_options,
    threads_option,
)


@click.command(context_settings=CONTEXT)
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


@click.command(context_settings=CONTEXT)
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


@click.command(context_settings=CONTEXT)
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
    final = do_pretrain(cfg, out, device=pick_device(device), quiet=is_quiet(ctx), log=note_log(ctx), compile=compile_)
    if final is not None:
        echo_main(f"checkpoint: {final}")


@click.command(context_settings=CONTEXT)
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
    from bench.render import render
    from bench.runtime import pick_device

    check_writable(Path(results_dir) / "x.json", "--results folder")
    result = do_demo(results_dir, steps, seed, pick_device(device), is_quiet(ctx), note_log(ctx))
    click.echo(f"iGPT run: {result.run_dir}\ncompletions: {result.completions}")
    render(result.table, "table", title="linear probe on digits (* = best val layer of each backbone)")
