"""Records -> tidy pandas DataFrame -> terminal table, Markdown or CSV; side-by-side compare.

A results file is one run (one identity: backbone fingerprint with its weights, dataset, task,
options, layers, seed, limit, tag). Everything here groups by run, never by backbone name alone:
two checkpoints of one model are two runs. Frames hold data only; marks such as the best layer are
a boolean column that the renderer turns into a marker.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from bench.layers import is_group
from bench.records import INTEGER_METRICS, collect, read_results

TIDY = ["backbone", "weights", "step", "tag", "dataset", "task", "layer", "split", "metric", "value", "stderr",
        "seed", "limit", "run"]
OPTIONAL = ["weights", "step", "tag", "limit"]  # shown only where some run has them
MARK = " *"


def frame(records: list[dict]) -> pd.DataFrame:
    """A tidy frame (one number per row); runs in ``run_order`` (steps numerically, then weights,
    seeds, tags), layers in depth order within each run. ``file`` is the run's results file."""
    df = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=TIDY)
    for column in TIDY + ["layer_index", "fingerprint", "file"]:
        if column not in df.columns:
            df[column] = None
    df["file"] = df["file"].where(df["file"].notna(), df["run"])
    df["run"] = df["run"].where(df["run"].notna(), df["file"].map(lambda f: Path(str(f)).stem))
    for column in ("step", "shots", "epoch", "seed", "limit"):  # whole numbers, even where other records lack them
        if column in df.columns:
            df[column] = pd.array(df[column].where(df[column].notna(), None), dtype="Int64")
    df["weights"] = df["weights"].map(_short_weights)
    rank = df.file.map(run_order(df))
    depth = df.layer.map(_layer_key)
    df = df.assign(_rank=rank, _depth=depth).sort_values(
        ["dataset", "_rank", "task", "layer_index", "_depth", "split", "metric"], kind="stable", na_position="first")
    df = df.drop(columns=["_rank", "_depth"])
    return df[TIDY + [c for c in df.columns if c not in TIDY]].reset_index(drop=True)


def natural_key(text) -> tuple:
    """Text with its digit runs compared as numbers (``step50`` before ``step100``); None first."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or text is pd.NA:
        return ((0, ""),)
    return tuple((1, int(part)) if part.isdigit() else (2, part) for part in re.split(r"(\d+)", str(text)) if part)


def _layer_key(layer) -> tuple:
    """Depth order of layer names where their index is not known: ``h0 … hL``, then ``final``,
    then concatenated groups; other names naturally."""
    name = str(layer)
    if is_group(name):
        return (2, natural_key(name))
    if name == "final":
        return (1, ())
    return (0, natural_key(name))


def run_order(df: pd.DataFrame) -> pd.Series:
    """file -> rank: runs by what they are, the way a reader expects them: backbone, the pretraining
    run a checkpoint comes from, its step as a number, then weights, seed and tag (digit runs in
    names compare as numbers)."""
    per_run = df.drop_duplicates("file")
    if per_run.empty:
        return pd.Series(dtype=int)

    def key(r):
        weights = r.weights if isinstance(r.weights, str) else ""
        origin = weights.split("/")[0] if pd.notna(r.step) and "/" in weights else ""
        step = int(r.step) if pd.notna(r.step) else -1
        seed = int(r.seed) if pd.notna(r.seed) else -1
        return (natural_key(r.backbone), natural_key(origin), step, natural_key(weights), seed,
                natural_key(r.tag if isinstance(r.tag, str) else ""), str(r.file))

    keys = {r.file: key(r) for r in per_run.itertuples(index=False)}
    ordered = sorted(keys, key=keys.get)
    return pd.Series(range(len(ordered)), index=ordered)


# Settings that change no number (where it ran, in what batches): runs that differ only in these and
# the seed are repeats of one experiment.
_NOT_EXPERIMENT = ("batch_size", "device", "data_root", "threads")


def seed_groups(df: pd.DataFrame) -> pd.Series:
    """file -> a key shared by the runs that differ only in their seed (the same backbone and
    weights, dataset, task, options, layers, limit, tag and precision): repeats of one experiment."""
    import json

    per_run = df.drop_duplicates("file")
    if per_run.empty:
        return pd.Series(dtype=object)
    config = per_run["config"] if "config" in per_run.columns else pd.Series([None] * len(per_run),
                                                                             index=per_run.index)

    def key(r, cfg) -> str:
        cfg = dict(cfg) if isinstance(cfg, dict) else {}
        for name in _NOT_EXPERIMENT:
            cfg.pop(name, None)
        options = dict(cfg.get("backbone_options") or {})
        options.pop("seed", None)
        cfg["backbone_options"] = options
        values = [r.backbone, r.weights, None if pd.isna(r.step) else int(r.step), r.tag, r.dataset, r.task,
                  None if pd.isna(r.limit) else int(r.limit), cfg]
        if not cfg.get("backbone_options") and not cfg.get("task_options"):
            values.append(r.fingerprint)  # a record without its config: only the same model pools
        return json.dumps(values, sort_keys=True, default=str)

    return pd.Series([key(r, c) for r, c in zip(per_run.itertuples(index=False), config)], index=per_run.file.values)


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
    """The records of every results file under ``paths`` as one frame. One run in two files (a
    copy, or one run in two folders) is refused naming both: the tables would count it twice, as
    two seeds of one experiment."""
    from bench.errors import BenchError

    records, where = [], {}
    for path in collect(paths):
        got = read_results(path)
        run = got[0].get("run")
        if run is not None and run in where:
            raise BenchError(f"{where[run]} and {path} hold the same run ({run}): a copy, or one run in two folders; "
                             "pass each run once")
        if run is not None:
            where[run] = path
        records += got
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
    out = df.loc[~curve_rows(df), columns + extra].reset_index(drop=True)
    counts = out.metric.isin(INTEGER_METRICS) & out.value.notna()  # k, epoch: whole numbers
    out["value"] = pd.Series([int(round(v)) if count else v for v, count in zip(out.value, counts)],
                             index=out.index, dtype=object)
    return out


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


def _seed_text(seeds) -> str:
    """Seeds as a reader takes them in: ``0–4 (n=5)`` for a run of them, ``0,2,7 (n=3)`` else."""
    seeds = sorted(int(s) for s in seeds)
    if len(seeds) == 1:
        return str(seeds[0])
    body = f"{seeds[0]}–{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ",".join(map(str, seeds))
    return f"{body} (n={len(seeds)})"


def pool_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """Runs that differ only in their seed (``seed_groups``) as one: per layer, split and metric
    the mean over seeds in ``value``, the standard deviation in ``seed_std`` and the count in
    ``seed_n``; ``seed_label`` names them, ``won`` counts the seeds whose val top-1 chose each layer,
    and ``best`` marks the layer chosen most often (the better mean val top-1 on a tie). The pooled
    rows keep the first run's ``file``. Other runs pass through with their own seed."""
    if df.empty:
        return df.assign(seed_std=None, seed_n=None, seed_label=None, won=None)
    groups = df.file.map(seed_groups(df))
    keys = ["layer", "split", "metric"] + (["shots"] if "shots" in df.columns else [])
    out = []
    for _, rows in df.groupby(groups, sort=False):
        files = list(dict.fromkeys(rows.file))
        seeds = rows.drop_duplicates("file").seed
        if len(files) == 1:
            out.append(rows.assign(seed_std=None, seed_n=None, won=None,
                                   seed_label=None if seeds.isna().all() else _seed_text(seeds.dropna())))
            continue
        chosen = best_layers(rows)
        wins = chosen.value_counts()
        agg = rows.groupby(keys, sort=False, dropna=False).value.agg(
            value="mean", seed_std="std", seed_n="count").reset_index()
        template = rows.drop_duplicates(keys).drop(columns="value")  # the first run's rows come first
        pooled = template.merge(agg, on=keys, how="left", sort=False).assign(
            file=files[0], seed_label=_seed_text(seeds.dropna()) if seeds.notna().any() else None)
        pooled["won"] = [f"{int(wins.get(layer, 0))}/{len(files)}" if layer in wins.index else ""
                         for layer in pooled.layer]
        if len(wins):
            val = pooled[(pooled.metric == "top1") & (pooled.split == "val")].set_index("layer").value
            top = max(wins.index, key=lambda layer: (wins[layer], float(val.get(layer, float("-inf")))))
            pooled["best"] = (pooled.layer == top) & (pooled.layer.nunique() > 1)
        out.append(pooled[[c for c in rows.columns if c in pooled.columns] + ["seed_std", "seed_n", "seed_label", "won"]])
    return pd.concat(out, ignore_index=True)


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
    table["_layer"] = table.layer.map(_layer_key)
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

    def clashes():
        return pd.concat([per_run[list(within)], labels.rename("_label")], axis=1).duplicated(keep=False)

    seeded = clashes() & per_run.seed.notna()  # repeats of one experiment: told apart by their seed
    labels[seeded] = labels[seeded] + " seed=" + per_run.seed[seeded].astype("Int64").astype(str)
    clash = clashes()
    labels[clash] = labels[clash] + " [" + per_run.run[clash].astype(str) + "]"
    return labels


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
    rows["_key"] = [(depth.get(layer, (len(order), 0)), _layer_key(layer), _SPLIT_ORDER.get(split, 3), metric)
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
