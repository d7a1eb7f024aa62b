"""Pictures of results (matplotlib, drawn off-screen), made from the tidy frame of ``bench.report``:

- ``probe_depth``: linear-probe test top-1 against relative layer depth, one line per run, the layer
  chosen by val marked (the paper's unimodal curve);
- ``low_data``: test top-1 against labels per class (log scale), mean ± std over seeds, one line
  per run at its layer with the best mean val top-1;
- ``learning_curves``: fine-tuning's training loss and val top-1 per epoch, one line per run;
- ``correlation_scatter`` (a study): each quality measure against best-layer test top-1, one line
  per model size through its checkpoints in step order (the paper's Figure 3), ρ in the titles;
- ``checkpoint_depth`` (a study): test top-1 against relative depth for every checkpoint on one
  axes, a colour per model size, darker for later steps, the layer chosen by val starred.

Each returns a matplotlib Figure, or None when the frame holds nothing of its kind; ``write_all``
saves the ones there are as PNG files.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from bench.report import best_layers, curve_rows, run_label, single_layer


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index)


def _single_layer_probe_rows(df: pd.DataFrame) -> pd.DataFrame:
    rows = df[(df.task == "linear-probe") & (df.metric == "top1")]
    return rows[single_layer(rows.layer) & ~curve_rows(rows)]


def probe_depth(df: pd.DataFrame):
    """Test top-1 of every single layer against its relative depth (0 = first, 1 = last layer)."""
    rows = _single_layer_probe_rows(df)
    test = rows[rows.split == "test"]
    if test.empty or test.groupby("file").layer.nunique().max() < 2:
        return None
    plt = _pyplot()
    labels = run_label(df, within=("dataset", "task"))
    best = best_layers(rows)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for file, run in test.groupby("file", sort=False):
        run = run.sort_values("layer_index")
        if len(run) < 2:
            continue
        depth = [i / (len(run) - 1) for i in range(len(run))]
        name = f"{labels[file]} · {run.dataset.iloc[0]}"
        (line,) = ax.plot(depth, run.value.astype(float), marker="o", markersize=3, label=name)
        chosen = best.get(file)
        if chosen in set(run.layer):
            i = list(run.layer).index(chosen)
            ax.plot(depth[i], float(run.value.iloc[i]), marker="*", markersize=14, color=line.get_color(),
                    markeredgecolor="black", linestyle="none")
    return _finish_depth_axes(fig, ax, "Linear probe accuracy by layer (★ = layer chosen on val)")


def _finish_depth_axes(fig, ax, title: str):
    """Labels, grid and legend of an accuracy-by-relative-depth plot."""
    ax.set_xlabel("relative depth of the layer (0 = first, 1 = last)")
    ax.set_ylabel("linear probe test top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def low_data(df: pd.DataFrame):
    """Mean top-1 against labels per class, with the spread over seeds as error bars."""
    if "shots" not in df.columns:
        return None
    rows = df[df.shots.notna() & (df.metric == "top1")]
    if rows.empty:
        return None
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    labels = run_label(df, within=("dataset", "task"))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for file, run in rows.groupby("file", sort=False):
        # One line a run: its layer with the best mean val top-1 over the budgets.
        val = run[run.split == "val"]
        layer = val.assign(value=val.value.astype(float)).groupby("layer", sort=False).value.mean().idxmax()
        run = run[(run.split == "test") & (run.layer == layer)].sort_values("shots")
        spread = _column(run, "std").where(_column(run, "std").notna(), run.stderr)
        ax.errorbar(run.shots.astype(float), run.value.astype(float), yerr=spread.astype(float), marker="o",
                    markersize=3, capsize=3, label=f"{labels[file]} · {layer} · {run.dataset.iloc[0]}")
    ax.set_xscale("log")
    ax.set_xticks(sorted(rows.shots.astype(int).unique()))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel("test top-1 (%), mean ± std over seeds")
    ax.set_title("Low-data linear probe (each run at its best layer by val)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def learning_curves(df: pd.DataFrame):
    """Fine-tuning: training loss (left) and val top-1 (right) per epoch."""
    rows = df[curve_rows(df) & _column(df, "epoch").notna()]
    if rows.empty:
        return None
    plt = _pyplot()
    labels = run_label(df, within=("dataset", "task"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for file, run in rows.groupby("file", sort=False):
        loss = run[(run.split == "train") & (run.metric == "loss")].sort_values("epoch")
        acc = run[(run.split == "val") & (run.metric == "top1")].sort_values("epoch")
        if len(loss):
            left.plot(loss.epoch.astype(float), loss.value.astype(float), marker="o", markersize=3,
                      label=labels[file])
        if len(acc):
            right.plot(acc.epoch.astype(float), acc.value.astype(float), marker="o", markersize=3,
                       label=labels[file])
    left.set(xlabel="epoch", ylabel="training loss", title="Fine-tuning: training loss")
    right.set(xlabel="epoch", ylabel="val top-1 (%)", title="Fine-tuning: val top-1")
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _study(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["study"].notna()] if "study" in df.columns else df.iloc[:0]


def _sizes(rows: pd.DataFrame):
    """(size, colormap) pairs: one sequential colormap per model size."""
    plt = _pyplot()
    maps = ["Blues", "Oranges", "Greens", "Purples", "Reds", "Greys"]
    return [(size, plt.get_cmap(maps[i % len(maps)])) for i, size in enumerate(dict.fromkeys(rows["size"]))]


def correlation_scatter(df: pd.DataFrame):
    """Per quality measure a panel: its value against best-layer test top-1, per model size."""
    study = _study(df)
    if study.empty:
        return None
    quality = study[study.kind == "quality"]
    best = study[(study.kind == "best") & (study.split == "test")].set_index(["file", "point"]).value
    if quality.empty or best.empty:
        return None
    plt = _pyplot()
    from bench.report import QUALITY_HEADERS

    measures = list(dict.fromkeys(quality.metric))
    fig, axes = plt.subplots(1, len(measures), figsize=(3.6 * len(measures), 3.6), squeeze=False)
    stats = study[(study.kind == "stat") & (study.metric == "spearman")]
    for ax, metric in zip(axes[0], measures):
        rows = quality[quality.metric == metric]
        for size, cmap in _sizes(rows):
            run = rows[rows["size"] == size].sort_values("step", na_position="first")
            y = [best[(f, p)] for f, p in zip(run.file, run.point)]
            ax.plot(run.value.astype(float), y, marker="o", markersize=4, color=cmap(0.7), label=size)
        head = QUALITY_HEADERS.get(metric, metric)
        stat = stats[stats.quality == metric]
        title = head
        if len(stat) and pd.notna(stat.value.iloc[0]):
            s = stat.iloc[0]
            title += f"\nSpearman ρ = {s.value:.2f}"
            if pd.notna(s.lo):
                title += f" [{s.lo:.2f}, {s.hi:.2f}]"
            title += f", n = {int(s.n)}"
        ax.set(xlabel=head, title=title)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("best-layer test top-1 (%)")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def checkpoint_depth(df: pd.DataFrame):
    """Test top-1 by relative depth for every checkpoint of a study on one axes."""
    study = _study(df)
    if study.empty:
        return None
    layers = study[(study.kind == "layer") & (study.split == "test")]
    if layers.empty:
        return None
    plt = _pyplot()
    chosen = study[(study.kind == "best") & (study.split == "test")].set_index(["file", "point"]).layer
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for size, cmap in _sizes(layers):
        rows = layers[layers["size"] == size]
        points = list(dict.fromkeys(zip(rows.file, rows.point)))
        steps = rows.drop_duplicates(["file", "point"]).step.astype(float)
        order = [p for _, p in sorted(zip(steps.fillna(0), points), key=lambda t: t[0])]
        for i, (file, point) in enumerate(order):
            run = rows[(rows.file == file) & (rows.point == point)].sort_values("depth")
            shade = 0.35 + 0.6 * (i / max(1, len(order) - 1))
            last = i == len(order) - 1
            (line,) = ax.plot(run.depth.astype(float), run.value.astype(float), marker="o", markersize=3,
                              color=cmap(shade), label=f"{size} · {point}" if (i == 0 or last) else None)
            pick = run[run.layer == chosen.get((file, point))]
            if len(pick):
                ax.plot(float(pick.depth.iloc[0]), float(pick.value.iloc[0]), marker="*", markersize=11,
                        color=line.get_color(), markeredgecolor="black", linestyle="none")
    return _finish_depth_axes(fig, ax, "Accuracy by depth for every checkpoint (darker = later; ★ = chosen on val)")


PLOTS = {"probe-depth": probe_depth, "low-data": low_data, "finetune-curves": learning_curves}
STUDY_PLOTS = {"correlation-scatter": correlation_scatter, "checkpoint-depth": checkpoint_depth}


def _draw(df: pd.DataFrame, plots: dict) -> dict:
    out = {}
    for name, draw in plots.items():
        fig = draw(df)
        if fig is not None:
            out[name] = fig
    return out


def figures(df: pd.DataFrame) -> dict:
    """{name: Figure} for every kind of plot the frame has data for."""
    return _draw(df, {**PLOTS, **STUDY_PLOTS})


def study_figures(df: pd.DataFrame) -> dict:
    """The plots of a study's records."""
    return _draw(df, STUDY_PLOTS)


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _pyplot().close(fig)
    return buf.getvalue()


def write_figures(figs: dict, folder: str | Path) -> list[Path]:
    """Save {name: Figure} as ``<folder>/<name>.png`` (written atomically)."""
    from bench.records import atomic_write_bytes

    return [atomic_write_bytes(Path(folder) / f"{name}.png", png_bytes(fig)) for name, fig in figs.items()]


def write_all(df: pd.DataFrame, folder: str | Path) -> list[Path]:
    """Save each plot the frame has data for as ``<folder>/<name>.png``."""
    return write_figures(figures(df), folder)
