"""Pictures of a study's records (``bench study``), drawn like ``bench.plots``:

- ``correlation_scatter``: a grid of panels, each quality measure against best-layer test
  top-1, one line per model size through its checkpoints in step order, points labelled by step, the
  x axis running from worse to better, ρ, agreement with the paper and cautions in the titles;
- ``checkpoint_depth``: test top-1 against relative depth for every checkpoint on one
  axes, a colour per model size, darker for later steps, the layer chosen by val starred;
- ``checkpoint_layers``: a checkpoint × layer heatmap of test top-1, a panel per size;
- ``training_step``: bits/dim and best-layer test top-1 against training step on two y axes.

Each returns a matplotlib Figure, or None when the frame holds no study records of its kind.
"""

from __future__ import annotations

import pandas as pd

from bench.plots import finish_depth_axes, pyplot
from bench.report import QUALITY_HEADERS


def _study(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["study"].notna()] if "study" in df.columns else df.iloc[:0]


def _sizes(rows: pd.DataFrame):
    """(size, colormap) pairs: one sequential colormap per model size."""
    plt = pyplot()
    maps = ["Blues", "Oranges", "Greens", "Purples", "Reds", "Greys"]
    return [(size, plt.get_cmap(maps[i % len(maps)])) for i, size in enumerate(dict.fromkeys(rows["size"]))]


def _lines(rows: pd.DataFrame):
    """A study's rows of one size split into one line per pretraining run (the label before ``@``),
    each in step order."""
    run = rows.point.astype(str).str.split("@").str[0]
    for _, line in rows.groupby(run, sort=False):
        yield line.sort_values("step", na_position="first")


def _better(study: pd.DataFrame, metric: str) -> str:
    """"lower" or "higher": the direction the study's records give a quality measure."""
    from tasks.correlation import QUALITY

    rows = study[(study.kind == "quality") & (study.metric == metric)]
    given = rows["better"].dropna() if "better" in rows.columns else ()
    return given.iloc[0] if len(given) else QUALITY.get(metric, "lower")


def _statistic(study: pd.DataFrame, metric: str, method: str, scope: str = "all checkpoints"):
    """The study's statistic record of ``metric`` by ``method`` and ``scope``, or None (a study
    file from before scopes holds the pooled ones only)."""
    stats = study[(study.kind == "stat") & (study.quality == metric) & (study.metric == method)]
    scopes = stats.scope.fillna("all checkpoints") if "scope" in stats.columns else pd.Series(
        "all checkpoints", index=stats.index)
    stats = stats[scopes == scope]
    return stats.iloc[0] if len(stats) else None


def _stat_text(s, symbol: str) -> str:
    text = f"{symbol} = {s.value:.2f}"
    if pd.notna(s.lo) and pd.notna(s.hi):
        text += f" [{s.lo:.2f}, {s.hi:.2f}]"
    return text + f", n = {int(s.n)}"


def correlation_scatter(df: pd.DataFrame):
    """Per quality measure a panel: its value against best-layer test top-1, one line per model
    size through its checkpoints in step order, each point labelled by its step. The x axis runs
    from worse to better quality (reversed where lower is better), so the paper's claim reads as a
    rising line; the titles give ρ with its interval, whether it agrees with the paper, the
    partial ρ given step and any caution."""
    study = _study(df)
    if study.empty:
        return None
    quality = study[study.kind == "quality"]
    best = study[(study.kind == "best") & (study.split == "test")].set_index(["file", "point"]).value
    if quality.empty or best.empty:
        return None
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    measures = list(dict.fromkeys(quality.metric))
    cols = min(3, len(measures))
    grid = -(-len(measures) // cols)
    fig, axes = plt.subplots(grid, cols, figsize=(5.2 * cols, 4.6 * grid), squeeze=False)
    flat = list(axes.ravel())
    for ax, metric in zip(flat, measures):
        rows = quality[quality.metric == metric]
        for size, cmap in _sizes(rows):
            label = size
            for line in _lines(rows[rows["size"] == size]):
                x = line.value.astype(float).tolist()
                y = [best[(f, p)] for f, p in zip(line.file, line.point)]
                ax.plot(x, y, marker="o", markersize=4, color=cmap(0.7), label=label)
                label = None
                for xi, yi, step, point in zip(x, y, line.step, line.point):
                    ax.annotate(str(step) if pd.notna(step) else str(point), (xi, yi), textcoords="offset points",
                                xytext=(3, 3), fontsize=6, color=cmap(0.95))
        head = QUALITY_HEADERS.get(metric, metric)
        better = _better(study, metric)
        if better == "lower":
            ax.invert_xaxis()
        ax.set_xlabel(f"{head} (lower is better; axis reversed: better →)" if better == "lower"
                      else f"{head} (higher is better →)")
        ax.set_ylabel("best-layer test top-1 (%), better ↑")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        title = [head]
        s = _statistic(study, metric, "spearman")
        if s is not None and pd.notna(s.value):
            from tasks.correlation import agrees

            sign = agrees(better, float(s.value))
            title.append(_stat_text(s, "Spearman ρ") + (" · agrees with the paper" if sign else
                                                       " · does not agree with the paper"))
            partial = _statistic(study, metric, "spearman", "partial given step")
            if partial is not None and pd.notna(partial.value):
                title.append(_stat_text(partial, "partial ρ given step"))
            if isinstance(s.get("caution"), str):
                title.append(f"caution: {s.caution}")
        ax.set_title("\n".join(title), fontsize=9)
        ax.grid(alpha=0.3)
    spare = flat[len(measures):]
    handles, names = flat[0].get_legend_handles_labels()
    for ax in spare:
        ax.axis("off")
    (spare[0] if spare else flat[0]).legend(handles, names, fontsize=8, loc="center" if spare else "best",
                                            title="model size (numbers: training step)", title_fontsize=8)
    fig.suptitle("Sample quality against best-layer linear-probe accuracy (the paper: better quality, higher "
                 "accuracy)", fontsize=11)
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
    plt = pyplot()
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
    return finish_depth_axes(fig, ax, "Accuracy by depth for every checkpoint (darker = later; ★ = chosen on val)")


def checkpoint_layers(df: pd.DataFrame):
    """A heatmap of test top-1 per checkpoint (rows, in step order) and layer (columns, in depth
    order), one panel per model size on one colour scale, the layer chosen on val boxed."""
    study = _study(df)
    layers = study[(study.kind == "layer") & (study.split == "test")] if len(study) else study
    if layers.empty:
        return None
    plt = pyplot()
    from matplotlib.patches import Rectangle

    chosen = study[(study.kind == "best") & (study.split == "test")].set_index(["file", "point"]).layer
    sizes = list(dict.fromkeys(layers["size"]))
    panels = []
    for size in sizes:
        rows = layers[layers["size"] == size]
        points = rows.drop_duplicates(["file", "point"]).sort_values(["step", "point"], na_position="first")
        names = list(rows.sort_values("depth", kind="stable").layer.drop_duplicates())
        grid = rows.pivot_table(index=["file", "point"], columns="layer", values="value", aggfunc="first")
        grid = grid.reindex(index=list(zip(points.file, points.point)), columns=names).astype(float)
        panels.append((size, grid))
    width = max(g.shape[1] for _, g in panels)
    heights = [g.shape[0] for _, g in panels]
    values = pd.concat([g.stack() for _, g in panels])
    lo, hi = float(values.min()), float(values.max())
    fig = plt.figure(figsize=(max(7.0, 0.7 * width + 3.5), 1.4 + 0.34 * sum(heights) + 0.6 * len(panels)),
                     layout="constrained")
    spec = fig.add_gridspec(len(panels), 2, height_ratios=heights, width_ratios=[40, 1])
    annotate = values.size <= 400
    for i, (size, grid) in enumerate(panels):
        ax = fig.add_subplot(spec[i, 0])
        image = ax.imshow(grid.values, aspect="auto", cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1)
        ax.set_yticks(range(len(grid)), [point for _, point in grid.index], fontsize=7)
        ax.set_xticks(range(grid.shape[1]), list(grid.columns), fontsize=7)
        ax.set_ylabel(size, fontsize=8)
        for r, key in enumerate(grid.index):
            for c, layer in enumerate(grid.columns):
                v = grid.iat[r, c]
                if annotate and pd.notna(v):
                    ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=6,
                            color="white" if v < (lo + hi) / 2 else "black")
                if chosen.get(key) == layer:
                    ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    fig.colorbar(image, cax=fig.add_subplot(spec[:, 1]), label="linear probe test top-1 (%)")
    fig.suptitle("Linear probe test top-1 by checkpoint and layer (red box = layer chosen on val)", fontsize=10)
    return fig


def training_step(df: pd.DataFrame):
    """Bits/dim (left axis, solid) and best-layer test top-1 (right axis, dashed) against training
    step, a colour per model size: whether both improve together with training."""
    study = _study(df)
    if study.empty:
        return None
    bpd = study[(study.kind == "quality") & (study.metric == "bits_per_dim") & study.step.notna()]
    best = study[(study.kind == "best") & (study.split == "test") & study.step.notna()]
    if bpd.empty or best.empty:
        return None
    plt = pyplot()
    from matplotlib.lines import Line2D

    fig, left = plt.subplots(figsize=(8.5, 4.8))
    right = left.twinx()
    handles = []
    for i, size in enumerate(dict.fromkeys(bpd["size"])):
        color = f"C{i % 10}"
        for line in _lines(bpd[bpd["size"] == size]):
            left.plot(line.step.astype(float), line.value.astype(float), marker="o", markersize=4, color=color)
        for line in _lines(best[best["size"] == size]):
            right.plot(line.step.astype(float), line.value.astype(float), marker="s", markersize=4, color=color,
                       linestyle="--")
        handles.append(Line2D([], [], color=color, label=size))
    handles += [Line2D([], [], color="0.3", marker="o", label="bits/dim (left; lower is better)"),
                Line2D([], [], color="0.3", marker="s", linestyle="--", label="best-layer test top-1 (right)")]
    left.set_xlabel("training step")
    left.set_ylabel("bits/dim (solid; lower is better ↓)")
    right.set_ylabel("best-layer test top-1 (%) (dashed; higher is better ↑)")
    left.grid(alpha=0.3)
    left.legend(handles=handles, fontsize=7, loc="center right")
    left.set_title("Bits/dim and best-layer accuracy against training step", fontsize=10)
    fig.tight_layout()
    return fig


STUDY_PLOTS = {"correlation-scatter": correlation_scatter, "checkpoint-depth": checkpoint_depth,
               "checkpoint-layers": checkpoint_layers, "training-step": training_step}
