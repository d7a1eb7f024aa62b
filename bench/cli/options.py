"""What the `bench` commands share: click settings, option decorators that every command building
a backbone (or reading a dataset, or computing) uses alike, and the console helpers.

Declared once here so that the same option reads the same on every command.
"""

from __future__ import annotations

import functools

import click

from bench.distributed import is_main

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



def console(stderr: bool = False):
    """A rich console on stdout (or stderr)."""
    from rich.console import Console

    return Console(stderr=stderr)


def is_quiet(ctx) -> bool:
    """Whether the global ``--quiet`` flag is set."""
    return bool(ctx.find_root().params.get("quiet", False))


def note_log(ctx):
    """A function that prints a dim note on stderr, or drops it under ``--quiet``."""
    if is_quiet(ctx):
        return lambda msg: None
    return lambda msg: console(True).print(msg, style="dim", soft_wrap=True, markup=False, highlight=False)


def echo_main(text: str, err: bool = False) -> None:
    """``click.echo`` on rank 0 only: under torchrun every process runs the command, one reports."""
    if is_main():
        click.echo(text, err=err)


def pretrained_option(f):
    return click.option("--pretrained", is_flag=True, help="timm: load timm's pretrained weights (from the local Hugging Face cache when offline).")(f)


def weights_option(f):
    return click.option("--weights", type=click.Path(), default=None, help="Weights: a .safetensors or state-dict .pth file (read with weights_only=True), or an ImageGPT folder.")(f)


def image_size_option(f):
    return click.option("--image-size", type=click.IntRange(min=1, max=1024), default=None, help="Resize images to this square size before the backbone (default: the backbone's choice).")(f)


def backbone_options(f):
    """Options that say which backbone and weights; the same on every command that builds one."""

    @click.option("--backbone", "-b", required=True, help="Backbone name: pixels, any timm model (resnet18, timm/convnext_atto), or a plugin's.")
    @pretrained_option
    @weights_option
    @image_size_option
    @click.option("--seed", type=SEED, default=0, show_default=True, help="Seed for random init, --limit subsets and the task.")
    @functools.wraps(f)
    def wrapper(*args, backbone, pretrained, weights, image_size, seed, **kw):
        from backbones.base import BackboneOptions

        opts = BackboneOptions(pretrained=pretrained, weights=weights, image_size=image_size, seed=seed)
        return f(*args, backbone=backbone, backbone_options=opts, seed=seed, **kw)

    return wrapper


def data_root_option(f):
    return click.option("--data-root", type=click.Path(file_okay=False), default=None, help="Folder holding the dataset files (else $BENCH_DATA_ROOT, else the system place).")(f)


def limit_option(f):
    return click.option("--limit", type=click.IntRange(min=1), default=None, help="Use a stratified subset of at most N rows per split, for quick runs.")(f)


def data_options(f):
    """Which dataset, where its files are, and how many rows of each split to use."""
    dataset = click.option("--dataset", "-d", required=True, help="Dataset name; see `bench datasets list`.")
    return dataset(data_root_option(limit_option(f)))


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
