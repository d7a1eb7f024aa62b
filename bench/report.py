"""Records -> tidy pandas DataFrame -> terminal table, Markdown or CSV; side-by-side compare.

A results file is one run (one identity: backbone fingerprint with its weights, dataset, task,
options, layers, seed, limit, tag). Everything here groups by run, never by backbone name alone:
two checkpoints of one model are two runs. Frames hold data only; marks such as the best layer are
a boolean column that the renderer turns into a marker.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.layers import is_group
from bench.records import collect, read_results

TIDY = ["backbone", "weights", "step", "tag", "dataset", "task", "layer", "split", "metric", "value", "stderr",
        "seed", "limit", "run"]
OPTIONAL = ["weights", "step", "tag", "limit"]  # shown only where some run has them
MARK = " *"
INTEGER_METRICS = {"k", "epoch"}  # metrics that count something: shown without decimals


def frame(records: list[dict]) -> pd.DataFrame:
    """A tidy frame (one number per row); runs in (dataset, backbone, weights, step, tag, task) order,
    layers in depth order within each run. ``file`` is the run's results file."""
    df = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=TIDY)
    for column in TIDY + ["layer_index", "fingerprint", "file"]:
        if column not in df.columns:
            df[column] = None
    df["file"] = df["file"].where(df["file"].notna(), df["run"])
    df["run"] = df["run"].where(df["run"].notna(), df["file"].map(lambda f: Path(str(f)).stem))
    for column in ("step", "shots", "epoch"):  # whole numbers, even where other records lack them
        if column in df.columns:
            df[column] = pd.array(df[column].where(df[column].notna(), None), dtype="Int64")
    df["weights"] = df["weights"].map(_short_weights)
    order = ["dataset", "backbone", "weights", "step", "tag", "task", "file", "layer_index", "split", "metric"]
    df = df.sort_values(order, kind="stable", na_position="first")
    return df[TIDY + [c for c in df.columns if c not in TIDY]].reset_index(drop=True)


def _short_weights(weights):
    """A weights path as its last two parts (``finetuned/model.safetensors``), or for a checkpoint
    of a pretraining run as ``<run>/step-0000100``, so two runs' checkpoints stay apart; labels as
    they are."""
    if not isinstance(weights, str) or "/" not in weights:
        return weights
    parts = Path(weights).parts
    if len(parts) >= 3 and parts[-2] == "checkpoints":
        return f"{parts[-3]}/{parts[-1]}"
    return "/".join(parts[-2:])


def load(paths) -> pd.DataFrame:
    records = []
    for path in collect(paths):
        records += read_results(path)
    return frame(records)


def best_layers(df: pd.DataFrame) -> pd.Series:
    """Per run (results file): the single layer with the best val top-1 (the shallowest on a
    tie); concatenated groups are extra rows, not candidates."""
    val = df[(df.metric == "top1") & (df.split == "val") & single_layer(df.layer)]
    if "shots" in df.columns:
        val = val[val.shots.isna()]
    if not len(val):
        return pd.Series(dtype=object)
    idx = val.assign(value=val.value.astype(float)).groupby("file", sort=False).value.idxmax()
    return pd.Series(val.loc[idx.values, "layer"].values, index=idx.index)


def mark_best(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a boolean ``best`` column: the rows of each run's best layer by val top-1."""
    best = best_layers(df)
    chosen = df.file.map(best)
    multi = df.groupby("file").layer.transform("nunique") > 1
    return df.assign(best=(df.layer == chosen) & multi)


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
    return df.loc[~curve_rows(df), columns + extra].reset_index(drop=True)


def single_layer(layers: pd.Series) -> pd.Series:
    """True where a row is of one layer, not a concatenated group (``h2+h3``)."""
    return ~layers.astype(str).map(is_group).astype(bool)


def study_rows(df: pd.DataFrame) -> pd.Series:
    """Records of a study file (``study: correlation``): tabulated by ``study_tables``."""
    if "study" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["study"].notna()


QUALITY_HEADERS = {"bits_per_dim": "bits/dim", "fd": "FD", "kid": "KID", "precision": "precision",
                   "recall": "recall"}


def study_tables(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Per study file two tables: its checkpoints (size, step, quality measures, the best layer by
    val with its val and test top-1) and its statistics (Pearson r and Spearman ρ of each quality
    measure against best-layer test top-1, with the 95% bootstrap interval and n)."""
    out = []
    for _, study in df[study_rows(df)].groupby("file", sort=False):
        rows = []
        for point, p in study[study.kind.isin(["quality", "best"])].groupby("point", sort=False):
            first = p.iloc[0]
            row = {"size": first["size"], "step": first["step"], "checkpoint": point}
            for metric, header in QUALITY_HEADERS.items():
                hit = p[(p.kind == "quality") & (p.metric == metric)]
                if len(hit):
                    row[header] = float(hit.value.iloc[0])
            best = p[p.kind == "best"]
            row["best layer"] = best.layer.iloc[0]
            row["depth"] = float(best.depth.iloc[0])
            for split in ("val", "test"):
                row[f"{split} top1"] = float(best[best.split == split].value.iloc[0])
            rows.append(row)
        points = pd.DataFrame(rows)
        points["step"] = pd.array(points["step"], dtype="Int64")
        points = points.sort_values(["size", "step"], kind="stable").reset_index(drop=True)
        stats = []
        for quality, q in study[study.kind == "stat"].groupby("quality", sort=False):
            row = {"quality": QUALITY_HEADERS.get(quality, quality)}
            for method, label in (("pearson", "Pearson r"), ("spearman", "Spearman ρ")):
                hit = q[q.metric == method].iloc[0]
                row[label] = hit.value
                row[f"{label} 95% CI"] = (f"[{hit.lo:.2f}, {hit.hi:.2f}]" if pd.notna(hit.lo) and pd.notna(hit.hi)
                                          else "—")
            row["n"] = int(q.n.iloc[0])
            stats.append(row)
        name = f"{study.task.iloc[0]} · {study.dataset.iloc[0]} · {len(points)} checkpoints"
        out.append((f"{name}: checkpoints (best layer by val)", points))
        out.append((f"{name}: against best-layer test top-1", pd.DataFrame(stats)))
    return out


def summary_tables(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) per dataset and task: the ``summary`` rows (run × layer, a column per split
    and metric, ± over seeds, ``best``) without their all-empty columns; then each study's tables.
    What ``--summary`` prints and the HTML page shows."""
    out = []
    for (dataset, task), group in summary(df).groupby(["dataset", "task"], sort=False):
        group = group.drop(columns=["dataset", "task"])
        empty = [c for c in group.columns if group[c].isna().all() or (group[c].astype(str) == "").all()]
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


def curve_rows(df: pd.DataFrame) -> pd.Series:
    """Per-epoch records of training curves (``curve: true``): plotted, not tabulated."""
    if "curve" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["curve"].fillna(False).astype(bool)


def spread(df: pd.DataFrame) -> pd.Series:
    """The spread over seeds of records that are means over seeds (a ``std`` field, or the
    ``stderr`` of a record that names its ``seeds``); None elsewhere."""
    out = pd.Series([None] * len(df), index=df.index, dtype=object)
    if "seeds" in df.columns:
        out = df.stderr.where(df.seeds.notna(), None)
    if "std" in df.columns:
        out = df["std"].where(df["std"].notna(), out)
    return out


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run × layer (× labels per class): a column per (split, metric), a ``± …``
    column beside it where the numbers are means over seeds, and ``best`` (the run's layer chosen
    by val top-1). Curve and study records are left out."""
    df = mark_best(df[~curve_rows(df) & ~study_rows(df)])
    if df.empty:
        return pd.DataFrame(columns=["dataset", "task", "run", "layer", "best"])
    df = df.assign(run_name=df.file.map(run_label(df, within=("dataset", "task"))),
                   column=df.split.astype(str) + " " + df.metric.astype(str), spread=spread(df))
    keys = ["dataset", "task", "run_name", "layer"] + (["shots"] if "shots" in df.columns and df.shots.notna().any()
                                                       else [])
    if "shots" in keys:  # probe rows beside low-data rows: no budget, shown blank
        df = df.assign(shots=df.shots.astype(object).where(df.shots.notna(), ""))
    order = df.groupby(keys, sort=False).layer_index.min()
    values = df.pivot_table(index=keys, columns="column", values="value", aggfunc="first", sort=False)
    spreads = df[df.spread.notna()].pivot_table(index=keys, columns="column", values="spread", aggfunc="first",
                                                sort=False)
    best = df.groupby(keys, sort=False).best.any()
    splits = {"val": 0, "test": 1, "train": 2}
    pairs = df[["split", "metric", "column"]].drop_duplicates("column")
    columns = [c for _, _, c in sorted(pairs.itertuples(index=False),
                                       key=lambda p: (p[1] != "top1", p[1], splits.get(p[0], 3)))]
    table = pd.DataFrame(index=values.index)
    for column in columns:
        table[column] = values[column]
        if column in spreads.columns:
            table[f"± {column}"] = spreads[column]
    for column in columns:
        if column.split(" ")[-1] in INTEGER_METRICS:
            table[column] = pd.array(table[column].round(), dtype="Int64")
    table["best"] = best
    table["_order"] = order
    table = table.reset_index().sort_values(["dataset", "task", "run_name", "_order"], kind="stable")
    return table.drop(columns="_order").rename(columns={"run_name": "run"}).reset_index(drop=True)


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


def run_label(df: pd.DataFrame, within: tuple[str, ...] = ()) -> pd.Series:
    """A readable name per run (file): backbone, then the step or weights, then the tag; the run
    id is added where two runs would share a name (among runs with the same ``within`` columns,
    e.g. ("dataset", "task") for one table; among all runs by default)."""
    per_run = df.drop_duplicates("file").set_index("file")

    def name(r):
        label = str(r.backbone)
        if pd.notna(r.step):
            run = str(r.weights).split("/")[0] if isinstance(r.weights, str) and "/" in r.weights else None
            label += (f" {run}" if run else "") + f"@step{int(r.step)}"  # the pretraining run's folder, when known
        elif isinstance(r.weights, str) and r.weights:
            label += f"@{Path(r.weights).name.split('.')[0]}"
        if isinstance(r.tag, str) and r.tag:
            label += f"#{r.tag}"
        return label

    labels = per_run.apply(name, axis=1)
    clash = pd.concat([per_run[list(within)], labels.rename("_label")], axis=1).duplicated(keep=False)
    labels[clash] = labels[clash] + " [" + per_run.run[clash].astype(str) + "]"
    return labels


def compare(df: pd.DataFrame, files: list[str] | None = None) -> pd.DataFrame:
    """Runs side by side: one value column per run (in ``files`` order), a Δ column per run
    after the first (it minus the first), then per (dataset, task) the rows of each run's best
    layer by val top-1, with the layer it chose. No run is dropped: a run without a row shows —."""
    files = files or list(dict.fromkeys(df.file))
    labels = run_label(df)
    columns = [labels[f] for f in files]
    keys = ["dataset", "task", "layer", "split", "metric"]
    per_layer = df.pivot_table(index=keys, columns="file", values="value", aggfunc="first", sort=False)
    order = df.groupby(keys, sort=False).layer_index.min()
    per_layer = per_layer.assign(_order=order).sort_values(["dataset", "task", "_order"], kind="stable")
    per_layer = per_layer.drop(columns="_order").reset_index()

    best = best_layers(df)
    best_rows = []
    for (dataset, task), group in df.groupby(["dataset", "task"], sort=False):
        chosen = {f: best.get(f) for f in group.file.unique() if f in best.index}
        if not chosen:
            continue
        picks = group[group.file.map(chosen) == group.layer]
        for (split, metric), rows in picks.groupby(["split", "metric"], sort=False):
            best_rows.append({"dataset": dataset, "task": task, "layer": "best by val", "split": split,
                              "metric": metric, **dict(zip(rows.file, rows.value))})
        best_rows.append({"dataset": dataset, "task": task, "layer": "best by val", "split": "val",
                          "metric": "layer chosen", **chosen})
    out = pd.concat([per_layer, pd.DataFrame(best_rows)], ignore_index=True)
    for f in files:
        if f not in out.columns:
            out[f] = None
    out = out[keys + files].rename(columns=dict(zip(files, columns)))
    for column in columns[1:]:
        numeric = pd.to_numeric(out[column], errors="coerce") - pd.to_numeric(out[columns[0]], errors="coerce")
        out[f"Δ {column}"] = numeric
    return out


def fmt(v) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5):
            return f"{v:.0e}"
        return f"{v:.2f}"
    return str(v)


def _marked(df: pd.DataFrame) -> pd.DataFrame:
    """For people: the ``best`` column becomes a marker on the layer name."""
    if "best" not in df.columns:
        return df
    df = df.copy()
    df["layer"] = [f"{layer}{MARK}" if best else layer for layer, best in zip(df.layer, df.best.fillna(False))]
    return df.drop(columns="best")


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def render(df: pd.DataFrame, fmt_name: str = "table", title: str | None = None, console=None) -> str | None:
    """Print ``df`` as a rich table (returns None) or return Markdown / CSV text. A ``best``
    column is shown as a '*' after the layer (CSV keeps the column)."""
    if fmt_name == "csv":
        return df.to_csv(index=False)
    df = _marked(df)
    if fmt_name == "md":
        return to_markdown(df)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in df.columns:
        numeric = pd.api.types.is_numeric_dtype(df[c]) or c in ("value", "stderr") or str(c).startswith("Δ")
        t.add_column(str(c), justify="right" if numeric else "left")
    for _, r in df.iterrows():
        t.add_row(*(fmt(r[c]) for c in df.columns))
    if console is None:
        import sys

        # A pipe or file gets the whole table rather than columns squeezed to 80 characters.
        console = Console() if sys.stdout.isatty() else Console(width=max(100, len(df.columns) * 14))
    console.print(t)
    return None
