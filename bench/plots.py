"""Pictures of results (matplotlib, drawn off-screen), made from the tidy frame of ``bench.report``:

- ``probe_depth``: linear-probe test top-1 against relative layer depth, one line per run, the layer
  chosen by val marked (the paper's unimodal curve);
- ``low_data``: test top-1 against labels per class (log scale), mean ± std over seeds, one line
  per run at its layer with the best mean val top-1;
- ``learning_curves``: fine-tuning's training loss and val top-1 per epoch, one line per run.

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
    ax.set_xlabel("relative depth of the layer (0 = first, 1 = last)")
    ax.set_ylabel("linear probe test top-1 (%)")
    ax.set_title("Linear probe accuracy by layer (★ = layer chosen on val)")
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


PLOTS = {"probe-depth": probe_depth, "low-data": low_data, "finetune-curves": learning_curves}


def figures(df: pd.DataFrame) -> dict:
    """{name: Figure} for every kind of plot the frame has data for."""
    out = {}
    for name, draw in PLOTS.items():
        fig = draw(df)
        if fig is not None:
            out[name] = fig
    return out


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _pyplot().close(fig)
    return buf.getvalue()


def write_all(df: pd.DataFrame, folder: str | Path) -> list[Path]:
    """Save each plot the frame has data for as ``<folder>/<name>.png`` (written atomically)."""
    from bench.records import atomic_write_bytes

    folder = Path(folder)
    return [atomic_write_bytes(folder / f"{name}.png", png_bytes(fig)) for name, fig in figures(df).items()]
