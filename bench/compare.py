"""Runs side by side (``bench compare``): a column per run, runs that differ only in their seed
pooled into one (mean ± standard deviation), a Δ column per run against the first or a chosen one,
then each run's layer chosen by val top-1."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.runs import best_layers, curve_rows, layer_key, run_label, run_order, seed_groups, study_rows

# Settings a task chose and recorded beside its scores (the L2 strength, k, the epoch): shown in
# reports, left out of compare's Δ rows unless asked.
SETTING_METRICS = {"l2", "k", "epoch", "lr"}
_SPLIT_ORDER = {"val": 0, "test": 1, "train": 2}


def compare_tables(df: pd.DataFrame, against: str | None = None,
                   all_metrics: bool = False) -> list[tuple[str, pd.DataFrame]]:
    """Runs side by side, one table per (dataset, task): a column per run in ``run_order`` (runs
    that differ only in seed pooled into one, mean with ``± …`` their standard deviation), a Δ
    column per run after the first (it minus the first, or minus ``against``: a run id, results
    file or run label), then the rows of each run's layer chosen by val top-1 and which layer that
    was. Study files and training curves are left out, and so are the settings a task chose
    (``SETTING_METRICS``) unless ``all_metrics``."""
    from bench.errors import BenchError

    df = df[~study_rows(df) & ~curve_rows(df)]
    if not all_metrics:
        df = df[~df.metric.isin(SETTING_METRICS)]
    if df.empty:
        raise BenchError("nothing to compare: these files hold only studies, training curves or settings; "
                         "pass results files of `bench run` (or add --all-metrics)")
    tables, matched = [], False
    for (dataset, task), group in df.groupby(["dataset", "task"], sort=False):
        table, reference, hit = _side_by_side(group.reset_index(drop=True), against)
        matched |= hit
        note = f"Δ against {reference}" + ("" if hit or against is None else f" ({against!r} is not among them)")
        tables.append((f"{task} · {dataset}: runs side by side ({note})", table))
    if against is not None and not matched:
        raise BenchError(f"--against {against!r} names none of the runs; give a run id, a results file or a run "
                         "label as the report prints it")
    return tables


def _names(file: str, run: str, label: str) -> set:
    path = Path(str(file))
    return {str(file), path.name, path.stem, str(run), label}


def _side_by_side(group: pd.DataFrame, against: str | None) -> tuple[pd.DataFrame, str, bool]:
    """One (dataset, task)'s table for ``compare_tables``, the reference column's label, and
    whether ``against`` named one of its runs."""
    keys = ["layer", "split", "metric"] + (["shots"] if "shots" in group.columns and group.shots.notna().any() else [])
    rank = group.file.map(run_order(group))
    pool = group.file.map(seed_groups(group))
    group = group.assign(cmp_rank=rank, cmp_pool=pool)
    firsts = group.sort_values("cmp_rank", kind="stable").drop_duplicates("cmp_pool")
    counts = group.drop_duplicates("file").cmp_pool.value_counts()
    rep = group[group.file.isin(firsts.file)]
    base = run_label(rep)
    label = {row.cmp_pool: base[row.file] + (f" (n={counts[row.cmp_pool]})" if counts[row.cmp_pool] > 1 else "")
             for row in firsts.itertuples()}
    order = list(firsts.cmp_pool)
    hit = False
    if against is not None:
        for pool_key in order:
            members = group[group.cmp_pool == pool_key].drop_duplicates("file")
            if any(against in _names(r.file, r.run, label[pool_key]) | {base.get(r.file)}
                   for r in members.itertuples()):
                order.remove(pool_key)
                order.insert(0, pool_key)
                hit = True
                break
    stats = group.groupby(["cmp_pool"] + keys, sort=False, dropna=False).value.agg(["mean", "std"]).reset_index()
    position = {k: i for i, k in enumerate(order)}
    depth = group.assign(cmp_pos=group.cmp_pool.map(position)).groupby("layer", sort=False).apply(
        lambda r: min(zip(r.cmp_pos, r.layer_index.fillna(0)))).to_dict() if len(group) else {}
    rows = stats.drop_duplicates(keys)[keys].copy()
    rows["_key"] = [(depth.get(layer, (len(order), 0)), layer_key(layer), _SPLIT_ORDER.get(split, 3), metric)
                    for layer, split, metric in zip(rows.layer, rows.split, rows.metric)]
    rows = rows.sort_values("_key", kind="stable").drop(columns="_key")
    table = rows.reset_index(drop=True)
    for pool_key in order:
        mine = stats[stats.cmp_pool == pool_key].drop(columns="cmp_pool")
        merged = table[keys].merge(mine, on=keys, how="left", sort=False)
        table[label[pool_key]] = merged["mean"].values
        if counts[pool_key] > 1:
            table[f"± {label[pool_key]}"] = merged["std"].values

    best = best_layers(group)
    picks = group[group.layer == group.file.map(best)]
    extra = []
    pairs = sorted(picks.groupby(["split", "metric"], sort=False), key=lambda g: (_SPLIT_ORDER.get(g[0][0], 3), g[0][1]))
    for (split, metric), rows_ in pairs:
        if "shots" in keys and rows_.shots.notna().any():
            continue
        means = rows_.groupby("cmp_pool").value.agg(["mean", "std"])
        row = {"layer": "best by val", "split": split, "metric": metric}
        for k in order:
            if k in means.index:
                row[label[k]] = means.loc[k, "mean"]
                if counts[k] > 1:
                    row[f"± {label[k]}"] = means.loc[k, "std"]
        extra.append(row)
    if len(best):
        row = {"layer": "best by val", "split": "val", "metric": "layer chosen"}
        chosen = group.drop_duplicates("file").assign(_best=lambda d: d.file.map(best))
        for k in order:
            won = chosen[chosen.cmp_pool == k]._best.dropna()
            if len(won) == 1:
                row[label[k]] = won.iloc[0]
            elif len(won):
                tally = won.value_counts()
                row[label[k]] = ", ".join(f"{layer} {n}/{len(won)}" for layer, n in tally.items())
        extra.append(row)
    if extra:
        table = pd.concat([table, pd.DataFrame(extra)], ignore_index=True)
    columns = [label[k] for k in order]
    for column in columns[1:]:
        table[f"Δ {column}"] = (pd.to_numeric(table[column], errors="coerce")
                                - pd.to_numeric(table[columns[0]], errors="coerce"))
    table.insert(0, "task", group.task.iloc[0])
    table.insert(0, "dataset", group.dataset.iloc[0])
    return table, columns[0], hit


def compare(df: pd.DataFrame, against: str | None = None, all_metrics: bool = False) -> pd.DataFrame:
    """``compare_tables`` of runs of one dataset and task, as one table."""
    from bench.errors import BenchError

    tables = compare_tables(df, against, all_metrics)
    if len(tables) > 1:
        raise BenchError(f"these runs span {len(tables)} (dataset, task) pairs ({', '.join(t for t, _ in tables)}); "
                         "compare each pair apart, or use bench.api.compare_tables")
    return tables[0][1]
