"""Records -> tidy pandas DataFrame -> terminal table, Markdown or CSV; side-by-side compare."""

from __future__ import annotations

import math

import pandas as pd

from bench.records import collect, read_results

TIDY = ["backbone", "dataset", "task", "layer", "split", "metric", "value", "stderr"]


def frame(records: list[dict]) -> pd.DataFrame:
    """A tidy frame (one number per row), in depth order of layers within each run."""
    if not records:
        return pd.DataFrame(columns=TIDY)
    df = pd.DataFrame.from_records(records)
    for c in TIDY + ["seed", "limit", "layer_index", "fingerprint"]:
        if c not in df.columns:
            df[c] = None
    df = df.sort_values(["dataset", "task", "backbone", "layer_index", "split", "metric"], kind="stable")
    return df.reset_index(drop=True)


def load(paths) -> pd.DataFrame:
    recs = []
    for f in collect(paths):
        recs += read_results(f)
    return frame(recs)


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5):
            return f"{v:.0e}"
        return f"{v:.2f}"
    return str(v)


def run_table(records: list[dict], columns: dict[tuple[str, str], str]) -> pd.DataFrame:
    """One row per layer with the task's (split, metric) columns; a '*' marks the best val layer."""
    df = frame(records)
    columns = dict(columns)
    for split, metric in df[["split", "metric"]].drop_duplicates().itertuples(index=False):
        columns.setdefault((split, metric), f"{split} {metric}")
    columns = {k: v for k, v in columns.items() if ((df.split == k[0]) & (df.metric == k[1])).any()}
    rows = []
    for layer, g in df.groupby("layer", sort=False):
        row = {"layer": layer}
        for (split, metric), header in columns.items():
            hit = g[(g.split == split) & (g.metric == metric)]
            row[header] = hit.value.iloc[0] if len(hit) else None
        rows.append(row)
    out = pd.DataFrame(rows)
    first_key = next(iter(columns), None)
    first = columns.get(first_key)
    if first_key and first_key[1] == "top1" and len(out) > 1 and out[first].notna().any():
        best = out[first].astype(float).idxmax()
        out.loc[best, "layer"] = f"{out.loc[best, 'layer']} *"
    return out


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def render(df: pd.DataFrame, fmt_name: str = "table", title: str | None = None, console=None) -> str | None:
    """Print ``df`` as a rich table (returns None) or return Markdown / CSV text."""
    if fmt_name == "md":
        return to_markdown(df)
    if fmt_name == "csv":
        return df.to_csv(index=False)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in df.columns:
        numeric = pd.api.types.is_numeric_dtype(df[c]) or c in ("value", "stderr", "delta")
        t.add_column(str(c), justify="right" if numeric else "left")
    for _, r in df.iterrows():
        t.add_row(*(fmt(r[c]) for c in df.columns))
    if console is None:
        import sys

        # A pipe or file gets the whole table rather than columns squeezed to 80 characters.
        console = Console() if sys.stdout.isatty() else Console(width=max(100, len(df.columns) * 14))
    console.print(t)
    return None


def tidy_view(df: pd.DataFrame) -> pd.DataFrame:
    return df[TIDY + ["seed"]].copy()


def best_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Per (backbone, dataset, task, seed): the layer with the best val top-1 and its test top-1."""
    out = []
    keys = ["backbone", "dataset", "task", "seed"]
    top = df[df.metric == "top1"]
    for k, g in top.groupby(keys, sort=False, dropna=False):
        val = g[g.split == "val"]
        if not len(val):
            continue
        layer = val.loc[val.value.astype(float).idxmax(), "layer"]
        for _, r in g[g.layer == layer].iterrows():
            out.append({**r.to_dict(), "layer": f"best by val ({layer})", "layer_index": 10**6})
    return pd.DataFrame(out)


def compare(a: pd.DataFrame, b: pd.DataFrame, name_a: str = "A", name_b: str = "B") -> pd.DataFrame:
    """Side by side on (dataset, task, layer, split, metric), with B - A deltas; the best-by-val
    rows let runs with different layers meet on one line."""
    keys = ["dataset", "task", "layer", "split", "metric"]

    def prep(df):
        df = pd.concat([df, best_rows(df)], ignore_index=True)
        df = df.copy()
        df.loc[df.layer.astype(str).str.startswith("best by val"), "layer"] = "best by val"
        return df.drop_duplicates(keys, keep="last")[keys + ["value", "layer_index"]]

    pa, pb = prep(a), prep(b)
    m = pa.merge(pb, on=keys, how="outer", suffixes=(f" {name_a}", f" {name_b}"))
    m["order"] = m[[f"layer_index {name_a}", f"layer_index {name_b}"]].min(axis=1)
    m = m.sort_values(["dataset", "task", "order", "split", "metric"], kind="stable")
    m["delta"] = m[f"value {name_b}"] - m[f"value {name_a}"]
    return m[keys + [f"value {name_a}", f"value {name_b}", "delta"]].reset_index(drop=True)
