"""The tables of ``bench report``: the tidy view of every record, the summary (run × layer, a
column per split and metric, runs that differ only in seed pooled), a single run's table, and the
tables of a study file; ``render_all`` and ``render_summary`` print or return them.

The frame these read and its run order, seed groups and labels are ``bench.runs``; cells and
formats are ``bench.render``; runs side by side are ``bench.compare``.
"""

from __future__ import annotations

import pandas as pd

from bench.records import INTEGER_METRICS
from bench.render import render
from bench.runs import (
    OPTIONAL,
    TIDY,
    curve_rows,
    frame,
    layer_key,
    mark_best,
    pool_seeds,
    run_label,
    run_order,
    single_layer,
    spread,
    study_rows,
)


def tidy_view(df: pd.DataFrame) -> pd.DataFrame:
    """The columns a person reads: weights/step/tag/limit where some run has them, and the run id
    where the other columns do not tell the runs apart. Study records are left out (``study_tables``)."""
    df = df[~study_rows(df)]
    columns = [c for c in TIDY if c not in OPTIONAL or df[c].notna().any()]
    descriptive = [c for c in ("backbone", "weights", "step", "tag", "dataset", "task", "seed", "limit")
                   if c in columns]
    per_run = df.drop_duplicates("file")
    if len(per_run) == len(per_run.drop_duplicates(descriptive)):
        columns.remove("run")
    extra = [c for c in ("shots", "seeds", "std", "best") if c in df.columns]
    out = df.loc[~curve_rows(df), columns + extra].reset_index(drop=True)
    counts = out.metric.isin(INTEGER_METRICS) & out.value.notna()  # k, epoch: whole numbers
    out["value"] = pd.Series([int(round(v)) if count else v for v, count in zip(out.value, counts)],
                             index=out.index, dtype=object)
    return out


def summary(df: pd.DataFrame, pool: bool = True) -> pd.DataFrame:
    """One row per run × layer (× labels per class): a column per (split, metric), a ``± …``
    column beside it where the numbers are means over seeds, and ``best`` (the run's layer chosen
    by val top-1). With ``pool``, runs that differ only in their seed are one row per layer: the
    mean, ``± …`` their standard deviation, ``seed`` which seeds (n), ``won`` how often each layer
    was the one chosen. Curve and study records are left out."""
    df = mark_best(df[~curve_rows(df) & ~study_rows(df)])
    if df.empty:
        return pd.DataFrame(columns=["dataset", "task", "run", "layer", "best"])
    df = pool_seeds(df) if pool else df.assign(seed_std=None, seed_n=None, won=None,
                                               seed_label=df.seed.map(lambda s: None if pd.isna(s) else str(int(s))))
    own = spread(df)
    df = df.assign(run_name=df.file.map(run_label(df, within=("dataset", "task"))),
                   column=df.split.astype(str) + " " + df.metric.astype(str),
                   spread=df.seed_std.where(df.seed_std.notna(), own))
    keys = ["dataset", "task", "run_name", "layer"] + (["shots"] if "shots" in df.columns and df.shots.notna().any()
                                                       else [])
    if "shots" in keys:  # probe rows beside low-data rows: no budget, shown blank
        df = df.assign(shots=df.shots.astype(object).where(df.shots.notna(), ""))
    rank = df.file.map(run_order(df))
    order = df.assign(_rank=rank).groupby(keys, sort=False).agg(_rank=("_rank", "min"), _index=("layer_index", "min"))
    values = df.pivot_table(index=keys, columns="column", values="value", aggfunc="first", sort=False)
    spreads = df[df.spread.notna()].pivot_table(index=keys, columns="column", values="spread", aggfunc="first",
                                                sort=False)
    best = df.groupby(keys, sort=False).best.any()
    splits = {"val": 0, "test": 1, "train": 2}
    pairs = df[["split", "metric", "column"]].drop_duplicates("column")
    columns = [c for _, _, c in sorted(pairs.itertuples(index=False),
                                       key=lambda p: (p[1] != "top1", p[1], splits.get(p[0], 3)))]
    table = pd.DataFrame(index=values.index)
    labels = df.groupby(keys, sort=False)
    varied = df.drop_duplicates("file").seed_label.nunique() > 1 or df.seed_n.notna().any()
    table["seed"] = labels.seed_label.first() if varied else None
    for column in columns:  # pivot_table leaves out a column that is all NaN (a diverged loss): shown empty
        table[column] = values[column] if column in values.columns else float("nan")
        if column in spreads.columns:
            table[f"± {column}"] = spreads[column]
    for column in columns:
        if column.split(" ")[-1] in INTEGER_METRICS and not df.seed_n.notna().any():
            table[column] = pd.array(table[column].round(), dtype="Int64")
    table["won"] = labels.won.first().replace("", None) if df.seed_n.notna().any() else None
    table["best"] = best
    table = table.join(order).reset_index()
    table["_layer"] = table.layer.map(layer_key)
    table = table.sort_values(["dataset", "task", "_rank", "_index", "_layer"], kind="stable")
    table = table.drop(columns=["_rank", "_index", "_layer"]).rename(columns={"run_name": "run"})
    table = table[["dataset", "task", "run", "seed"] + [c for c in table.columns
                                                        if c not in ("dataset", "task", "run", "seed")]]
    return table.reset_index(drop=True)


def run_table(records: list[dict], columns: dict[tuple[str, str], str]) -> pd.DataFrame:
    """One row per layer (and labels per class, where records have ``shots``) of one run with the
    task's (split, metric) columns, and ``best`` (the best row by the first column when that is a
    val top-1)."""
    df = frame(records)
    df = df[~curve_rows(df)]
    columns = dict(columns)
    for split, metric in df[["split", "metric"]].drop_duplicates().itertuples(index=False):
        columns.setdefault((split, metric), f"{split} {metric}")
    columns = {k: v for k, v in columns.items() if ((df.split == k[0]) & (df.metric == k[1])).any()}
    keys = ["layer"] + (["shots"] if "shots" in df.columns and df.shots.notna().any() else [])
    rows = []
    for key, group in df.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        for (split, metric), header in columns.items():
            hit = group[(group.split == split) & (group.metric == metric)]
            row[header] = hit.value.iloc[0] if len(hit) else None
        rows.append(row)
    out = pd.DataFrame(rows)
    for (_, metric), header in columns.items():
        if metric in INTEGER_METRICS:
            out[header] = pd.array(pd.to_numeric(out[header]).round(), dtype="Int64")
    first_key = next(iter(columns), None)
    single = single_layer(out.layer)
    if first_key == ("val", "top1") and "shots" not in keys and single.sum() > 1:
        val = out[columns[first_key]].astype(float).where(single)
        if val.notna().any():
            out["best"] = out.index == val.idxmax()
    return out


QUALITY_HEADERS = {"bits_per_dim": "bits/dim", "fd": "FD", "kid": "KID", "precision": "precision",
                   "recall": "recall"}


def study_tables(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Per study file its tables: the checkpoints (size, step, quality measures with ↓/↑ for the
    better direction, the best layer by val with its val and test top-1, the val standard error and
    a caution where the choice is shaky); the statistics (each correlation of a quality measure with
    best-layer test top-1, its 95% bootstrap interval and n, whether it agrees with the paper and a
    caution); and, where steps are known, whether the checkpoints separate training step from quality."""
    from tasks.correlation import QUALITY, agrees, caution

    def better(rows: pd.DataFrame, quality: str) -> str:
        given = rows["better"].dropna() if "better" in rows.columns else ()
        return given.iloc[0] if len(given) else QUALITY.get(quality, "")

    def yes_no(value) -> str | None:
        return None if value is None or pd.isna(value) else "yes" if value else "no"

    def statistic(r) -> str:
        method = "Pearson r" if r.metric == "pearson" else "Spearman ρ"
        scope = r.get("scope") if isinstance(r.get("scope"), str) else "all checkpoints"
        if scope == "within size":
            return f"{method}, {r['size']}"
        if scope == "partial given step":
            return f"partial {method} given step"
        if scope == "matched steps":
            return f"{method} at matched steps ({int(r.groups)} steps)"
        return f"{method}, all checkpoints"

    out = []
    for _, study in df[study_rows(df)].groupby("file", sort=False):
        rows = []
        for point, p in study[study.kind.isin(["quality", "best"])].groupby("point", sort=False):
            first = p.iloc[0]
            row = {"size": first["size"], "step": first["step"], "checkpoint": point}
            for metric, header in QUALITY_HEADERS.items():
                hit = p[(p.kind == "quality") & (p.metric == metric)]
                if len(hit):
                    row[f"{header} {'↓' if better(hit, metric) == 'lower' else '↑'}"] = float(hit.value.iloc[0])
            best = p[p.kind == "best"]
            row["best layer"] = best.layer.iloc[0]
            row["depth"] = float(best.depth.iloc[0])
            for split in ("val", "test"):
                row[f"{split} top1"] = float(best[best.split == split].value.iloc[0])
            val = best[best.split == "val"].iloc[0]
            row["val SE"] = val.get("val_stderr")
            row["caution"] = val.get("caution")
            rows.append(row)
        points = pd.DataFrame(rows)
        points["step"] = pd.array(points["step"], dtype="Int64")
        points = points.sort_values(["size", "step"], kind="stable").reset_index(drop=True)
        points = points.drop(columns=[c for c in ("val SE", "caution") if points[c].isna().all()])
        stats = []
        for _, r in study[study.kind == "stat"].iterrows():
            ci = f"[{r.lo:.2f}, {r.hi:.2f}]" if pd.notna(r.lo) and pd.notna(r.hi) else "—"
            direction = better(study[(study.kind == "stat") & (study.quality == r.quality)], r.quality)
            value = None if pd.isna(r.value) else float(r.value)
            sign = r.get("agrees")
            if sign is None or pd.isna(sign):  # a study file written before records carried it
                sign = agrees(direction, value)
            note = r.get("caution") if isinstance(r.get("caution"), str) else None
            if not isinstance(r.get("scope"), str):  # a file from before cautions: those its numbers give
                note = caution({"value": value, "n": int(r.n), "lo": None if pd.isna(r.lo) else float(r.lo),
                                "hi": None if pd.isna(r.hi) else float(r.hi)})
            stats.append({"quality": QUALITY_HEADERS.get(r.quality, r.quality), "better": direction,
                          "statistic": statistic(r), "value": value, "95% CI": ci, "n": int(r.n),
                          "agrees with paper": yes_no(sign), "caution": note})
        name = f"{study.task.iloc[0]} · {study.dataset.iloc[0]} · {len(points)} checkpoints"
        out.append((f"{name}: checkpoints (best layer by val; ↓ lower is better, ↑ higher is better)", points))
        out.append((f"{name}: against best-layer test top-1 (the paper: better quality, higher accuracy)",
                    pd.DataFrame(stats)))
        sep = study[study.kind == "separation"]
        if len(sep):
            table = pd.DataFrame({
                "quality": [QUALITY_HEADERS.get(q, q) for q in sep.quality],
                "ρ(step, quality)": [None if pd.isna(v) else float(v) for v in sep.value],
                "largest gap at one step": [None if pd.isna(v) else float(v) for v in sep.gap],
                "gap / range": [None if pd.isna(v) else float(v) for v in sep.gap_share],
                "steps shared": [int(v) for v in sep.shared_steps],
                "separable": [yes_no(v) for v in sep.separable]})
            out.append((f"{name}: can the checkpoints separate training step from quality? (not when "
                        "|ρ(step, quality)| >= 0.9 and no step's checkpoints differ by 10% of the range)", table))
    return out


def summary_tables(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) per dataset and task: the ``summary`` rows (run × layer, a column per split
    and metric, ± over seeds, ``best``) without their all-empty columns; then each study's tables.
    What ``--summary`` prints and the HTML page shows."""
    out = []
    for (dataset, task), group in summary(df).groupby(["dataset", "task"], sort=False):
        group = group.drop(columns=["dataset", "task"])
        empty = [c for c in group.columns if group[c].isna().all() or (group[c].astype(str) == "").all()]
        if group.seed.nunique() <= 1 and not group.seed.astype(str).str.contains("n=").any():
            empty.append("seed")  # one seed throughout: nothing to tell apart
        out.append((f"{task} · {dataset}", group.drop(columns=empty)))
    return out + study_tables(df)


def _titled(tables: list[tuple[str, pd.DataFrame]], fmt_name: str) -> list[str | None]:
    """Each table rendered under its title (a Markdown heading; a plain line in CSV); printed
    tables (``table``) give None."""
    texts = []
    for title, table in tables:
        text = render(table, fmt_name, title=title)
        texts.append(None if text is None else f"{title}\n{text}" if fmt_name == "csv" else f"### {title}\n\n{text}")
    return texts


def _joined(texts: list[str | None]) -> str | None:
    texts = [t for t in texts if t is not None]
    return "\n\n".join(t.rstrip("\n") for t in texts) + "\n" if texts else None


def render_all(df: pd.DataFrame, fmt_name: str = "table") -> str | None:
    """The tidy table of the runs, then each study's tables: printed (``table``) or as text."""
    plain = df[~study_rows(df)]
    head = [render(tidy_view(plain), fmt_name)] if len(plain) else []
    return _joined(head + _titled(study_tables(df), fmt_name))


def render_summary(df: pd.DataFrame, fmt_name: str = "table") -> str | None:
    """``summary_tables``: printed (``table``) or as text."""
    return _joined(_titled(summary_tables(df), fmt_name))
