"""Pictures of results (matplotlib, drawn off-screen), made from the tidy frame of ``bench.runs``:

- ``probe_depth``: linear-probe test top-1 by layer with error bars (the spread over seeds, else the
  binomial standard error), one line per run, the layer chosen by val marked (the paper's unimodal
  curve); runs of a single layer (``pixels``) as horizontal reference lines; layer names on the x
  axis when one run has several layers, relative depth when several do;
- ``low_data``: test top-1 against labels per class (log scale), mean ± std over seeds, one line
  per run at its layer with the best mean val top-1;
- ``learning_curves``: fine-tuning's training loss and val top-1 per epoch, one line per run (and
  per learning rate of a run that chose it from a list);
- the plots of a study's records are ``bench.study_plots``.

Each returns a matplotlib Figure, or None when the frame holds nothing of its kind; ``figures``
collects them with the study plots, and ``write_all`` saves the ones there are as PNG files.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from bench.runs import best_layers, curve_rows, pool_seeds, run_label, single_layer, spread


def pyplot():
    """matplotlib's pyplot on the off-screen Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index)


def _single_layer_probe_rows(df: pd.DataFrame) -> pd.DataFrame:
    rows = df[(df.task == "linear-probe") & (df.metric == "top1")]
    return rows[single_layer(rows.layer) & ~curve_rows(rows)]


def _error(rows: pd.DataFrame) -> pd.Series:
    """Error bars: the standard deviation over seeds where rows pool several runs or are means over
    seeds, else their binomial standard error (0 where neither is known)."""
    over_seeds = spread(rows)
    if "seed_std" in rows.columns:
        over_seeds = rows.seed_std.where(rows.seed_std.notna(), over_seeds)
    return pd.to_numeric(over_seeds.where(over_seeds.notna(), rows.stderr), errors="coerce").fillna(0.0)


def probe_depth(df: pd.DataFrame):
    """Test top-1 of every single layer against its depth, with error bars; runs that differ only
    in their seed as one line (their mean, the std over seeds as bars); runs of one layer
    (``pixels``) as horizontal reference lines. One run of several layers: its layer names on the x
    axis; more: relative depth (0 = first, 1 = last layer)."""
    single = _single_layer_probe_rows(df)
    chosen = best_layers(single)
    rows = pool_seeds(single)
    if "best" in rows.columns:  # pooled runs: the layer chosen most often over their seeds
        chosen = pd.concat([chosen, rows[rows.best.eq(True)].drop_duplicates("file")
                            .set_index("file").layer])
        chosen = chosen[~chosen.index.duplicated(keep="last")]
    test = rows[rows.split == "test"]
    layers = test.groupby("file", sort=False).layer.nunique()
    curves = [f for f in layers.index if layers[f] >= 2]
    if not curves:
        return None
    plt = pyplot()
    labels = run_label(rows, within=("dataset", "task"))
    if "seed_n" in rows.columns:  # pooled runs name their seeds
        seeds = rows[rows.seed_n.notna()].drop_duplicates("file").set_index("file").seed_label
        labels = labels.where(~labels.index.isin(seeds.index), labels + " · seeds " + seeds.reindex(labels.index))
    named = len(curves) == 1
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for file in curves:
        run = test[test.file == file].sort_values("layer_index")
        x = list(range(len(run))) if named else [i / (len(run) - 1) for i in range(len(run))]
        name = f"{labels[file]} · {run.dataset.iloc[0]}"
        line = ax.errorbar(x, run.value.astype(float), yerr=_error(run), marker="o", markersize=3, capsize=2,
                           label=name).lines[0]
        if chosen.get(file) in set(run.layer):
            i = list(run.layer).index(chosen.get(file))
            ax.plot(x[i], float(run.value.iloc[i]), marker="*", markersize=14, color=line.get_color(),
                    markeredgecolor="black", linestyle="none")
        if named:
            ax.set_xticks(x, [str(v) for v in run.layer], rotation=45 if len(x) > 12 else 0, fontsize=8)
    for i, file in enumerate(f for f in layers.index if layers[f] == 1):
        run = test[test.file == file]
        value, err = float(run.value.iloc[0]), float(_error(run).iloc[0])
        style = ["--", ":", "-."][i % 3]
        layer = "" if run.layer.iloc[0] == run.backbone.iloc[0] else f" ({run.layer.iloc[0]})"
        ref = ax.axhline(value, color="0.35", linestyle=style, linewidth=1.2,
                         label=f"{labels[file]}{layer} · {run.dataset.iloc[0]}: {value:.2f}")
        if err:
            ax.axhspan(value - err, value + err, color=ref.get_color(), alpha=0.12, linewidth=0)
    if named:
        ax.set_xlabel("layer")
    title = "Linear probe accuracy by layer (★ = layer chosen on val; bars: ± standard error or std over seeds)"
    return finish_depth_axes(fig, ax, title, relative=not named)


def finish_depth_axes(fig, ax, title: str, relative: bool = True):
    """Labels, grid and legend of an accuracy-by-depth plot; returns ``fig``."""
    if relative:
        ax.set_xlabel("relative depth of the layer (0 = first, 1 = last)")
    ax.set_ylabel("linear probe test top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    entries = len(ax.get_legend_handles_labels()[1])
    if entries > 8:  # a long legend inside would hide the curves
        width, height = fig.get_size_inches()
        fig.set_size_inches(width + 4, max(height, 0.2 * entries))
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    else:
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
    plt = pyplot()
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
    """Fine-tuning: training loss (left) and val top-1 (right) per epoch, a line per run and, where
    a run chose its learning rate from a list, per rate (its records carry ``lr``)."""
    rows = df[curve_rows(df) & _column(df, "epoch").notna()]
    if rows.empty:
        return None
    plt = pyplot()
    labels = run_label(df, within=("dataset", "task"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    rows = rows.assign(_lr=pd.to_numeric(_column(rows, "lr"), errors="coerce"))
    for (file, rate), run in rows.groupby(["file", "_lr"], sort=False, dropna=False):
        label = labels[file] + ("" if pd.isna(rate) else f" lr={rate:g}")
        loss = run[(run.split == "train") & (run.metric == "loss")].sort_values("epoch")
        acc = run[(run.split == "val") & (run.metric == "top1")].sort_values("epoch")
        if len(loss):
            left.plot(loss.epoch.astype(float), loss.value.astype(float), marker="o", markersize=3, label=label)
        if len(acc):
            right.plot(acc.epoch.astype(float), acc.value.astype(float), marker="o", markersize=3, label=label)
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


def _draw(df: pd.DataFrame, plots: dict) -> dict:
    out = {}
    for name, draw in plots.items():
        fig = draw(df)
        if fig is not None:
            out[name] = fig
    return out


def figures(df: pd.DataFrame) -> dict:
    """{name: Figure} for every kind of plot the frame has data for."""
    from bench.study_plots import STUDY_PLOTS

    return _draw(df, {**PLOTS, **STUDY_PLOTS})


def study_figures(df: pd.DataFrame) -> dict:
    """The plots of a study's records."""
    from bench.study_plots import STUDY_PLOTS

    return _draw(df, STUDY_PLOTS)


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    pyplot().close(fig)
    return buf.getvalue()


def write_figures(figs: dict, folder: str | Path) -> list[Path]:
    """Save {name: Figure} as ``<folder>/<name>.png`` (written atomically)."""
    from bench.files import atomic_write_bytes

    return [atomic_write_bytes(Path(folder) / f"{name}.png", png_bytes(fig)) for name, fig in figs.items()]


def write_all(df: pd.DataFrame, folder: str | Path) -> list[Path]:
    """Save each plot the frame has data for as ``<folder>/<name>.png``."""
    return write_figures(figures(df), folder)
