"""One self-contained HTML page of results: per dataset and task a table (run × layer, the best
layer marked, ± where numbers are means over seeds), then the plots, embedded as PNG data, so the
file can be mailed or opened anywhere with no other file beside it."""

from __future__ import annotations

import base64
import html
import math

import pandas as pd

from bench.render import fmt
from bench.report import summary_tables

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #1d2433; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th { background: #dfe8f5; text-align: left; }
th, td { border: 1px solid #b8c4d6; padding: 0.25em 0.6em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #fff3c4; font-weight: 600; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
.note { color: #5a6478; font-size: 0.85em; }
"""


def _cell(value, spread=None) -> str:
    text = fmt(value)
    if spread is not None and not (isinstance(spread, float) and math.isnan(spread)):
        text += f" ± {fmt(spread)}"
    return html.escape(text)


def table_html(table: pd.DataFrame) -> str:
    """A summary table (``bench.report.summary``) as HTML: ``± x`` columns merge into their
    value column; the best rows are highlighted and starred."""
    columns = [c for c in table.columns if c not in ("best", "dataset", "task") and not str(c).startswith("± ")]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    rows = []
    for _, r in table.iterrows():
        cells = []
        for c in columns:
            value = r[c]
            if c == "layer" and r.get("best"):
                cells.append(f"<td>{html.escape(str(value))} ★</td>")
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                cells.append(f'<td class="num">{_cell(value, r.get(f"± {c}"))}</td>')
            else:
                cells.append(f"<td>{_cell(value)}</td>")
        rows.append(f'<tr class="{"best" if r.get("best") else ""}">{"".join(cells)}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def page(df: pd.DataFrame, title: str = "igpt-bench report", extra: tuple | list = (),
         extra_figures: dict | None = None) -> str:
    """The page: summary tables, then ``extra`` (title, table) pairs, then the plots and ``extra_figures``."""
    from bench.plots import figures, png_bytes
    from bench.provenance import now

    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p class='note'>{df.file.nunique()} runs · made {now()} · ★ = the run's layer chosen by val "
             "top-1 · ± = standard deviation over seeds</p>"]
    for title, table in [*summary_tables(df), *extra]:
        parts.append(f"<h2>{html.escape(title)}</h2>{table_html(table)}")
    for name, fig in {**figures(df), **(extra_figures or {})}.items():
        data = base64.b64encode(png_bytes(fig)).decode()
        parts.append(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
