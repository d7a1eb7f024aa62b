"""Tables as people read them: a rich terminal table, Markdown or CSV.

Numbers are shown to two decimals (very small or large ones in exponent form), a missing value as
``—``, a ``best`` column as a marker after the layer, and a ``± X`` column inside ``X`` as
``value ± spread``; CSV keeps every column as it is, for programs.
"""

from __future__ import annotations

import math

import pandas as pd

MARK = " *"


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


def _cells(df: pd.DataFrame) -> tuple[pd.DataFrame, set]:
    """Every cell as the text a person reads, and the columns to right-align. A ``± X`` column
    joins its ``X`` column as ``value ± spread``."""
    out, numeric = {}, set()
    for c in df.columns:
        if str(c).startswith("± ") and str(c)[2:] in df.columns:
            continue
        spread_col = f"± {c}"
        texts = [fmt(v) for v in df[c]]
        if spread_col in df.columns:
            texts = [t if fmt(s) == "—" else f"{t} ± {fmt(s)}" for t, s in zip(texts, df[spread_col])]
        out[c] = texts
        present = df[c].dropna()
        mostly_numbers = len(present) and pd.to_numeric(present, errors="coerce").notna().mean() > 0.5
        if pd.api.types.is_numeric_dtype(df[c]) or c in ("value", "stderr") or str(c).startswith("Δ") or (
                df[c].dtype == object and mostly_numbers and not isinstance(present.iloc[0], bool)):
            numeric.add(c)
    return pd.DataFrame(out, index=df.index, columns=list(out)), numeric


def _md_escape(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame) -> str:
    """A Markdown table ending in a newline; ``|`` in cells is escaped."""
    cells, _ = _cells(df)
    cols = list(cells.columns)
    lines = ["| " + " | ".join(_md_escape(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in cells.itertuples(index=False):
        lines.append("| " + " | ".join(_md_escape(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def render(df: pd.DataFrame, fmt_name: str = "table", title: str | None = None, console=None) -> str | None:
    """Print ``df`` as a rich table (returns None) or return Markdown / CSV text. A ``best``
    column is shown as a '*' after the layer (CSV keeps the column); a ``± X`` column is shown
    inside ``X`` as ``value ± spread`` (CSV keeps it apart)."""
    if fmt_name == "csv":
        return df.to_csv(index=False)
    df = _marked(df)
    if fmt_name == "md":
        return to_markdown(df)
    from rich.console import Console
    from rich.table import Table

    cells, numeric = _cells(df)
    t = Table(title=title)
    for c in cells.columns:
        t.add_column(str(c), justify="right" if c in numeric else "left")
    for row in cells.itertuples(index=False):
        t.add_row(*row)
    if console is None:
        import sys

        # A pipe or file gets the whole table rather than columns squeezed to 80 characters.
        console = Console() if sys.stdout.isatty() else Console(width=max(100, len(df.columns) * 14))
    console.print(t)
    return None
