"""`bench backbones`, `bench tasks`, `bench datasets`: what the registries hold."""

from __future__ import annotations

import click

from bench.cli.options import CONTEXT, SEED, console, image_size_option, pretrained_option, weights_option
from bench.errors import BenchError


@click.group(context_settings=CONTEXT)
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
    console().print(t)


@backbones.command("show", context_settings=CONTEXT)
@click.argument("name")
@click.option("--dataset", "-d", default=None, help="Build for this dataset's images (default: 3x224x224 input).")
@click.option("--data-root", type=click.Path(file_okay=False), default=None, help="Folder holding the dataset files.")
@pretrained_option
@weights_option
@image_size_option
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
    console().print(t)
    facts = summary(model, spec)
    click.echo(f"parameters: {facts['parameters']:,}; forward FLOPs per image to the last layer: "
               f"{facts['flops_per_image']:,} ({facts['flops_per_image'] / 1e9:.3g} GFLOPs)")


@click.group(context_settings=CONTEXT)
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
    console().print(t)
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
    console().print(t)


@click.group(context_settings=CONTEXT)
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
