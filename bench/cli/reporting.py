"""`bench report` and `bench compare`: results files to tables, plots and paired statistics."""

from __future__ import annotations

from pathlib import Path

import click

from bench.cli.options import CONTEXT
from bench.errors import BenchError


@click.command(context_settings=CONTEXT)
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


@click.command(context_settings=CONTEXT)
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
    from bench.render import render

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
