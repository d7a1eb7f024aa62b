"""The tidy frame of results records, and what groups and orders its runs.

A results file is one run (one identity: backbone fingerprint with its weights, dataset, task,
options, layers, seed, limit, tag). Everything here groups by run, never by backbone name alone:
two checkpoints of one model are two runs. Runs are ordered the way a reader expects them (steps
as numbers, names with their digit runs as numbers), runs that differ only in their seed pool into
one, and each run gets a readable label. Frames hold data only; marks such as the best layer are a
boolean column that the renderer (``bench.render``) turns into a marker.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from bench.layers import is_group
from bench.records import collect, read_results

TIDY = ["backbone", "weights", "step", "tag", "dataset", "task", "layer", "split", "metric", "value", "stderr",
        "seed", "limit", "run"]
OPTIONAL = ["weights", "step", "tag", "limit"]  # shown only where some run has them


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
    depth = df.layer.map(layer_key)
    df = df.assign(_rank=rank, _depth=depth).sort_values(
        ["dataset", "_rank", "task", "layer_index", "_depth", "split", "metric"], kind="stable", na_position="first")
    df = df.drop(columns=["_rank", "_depth"])
    return df[TIDY + [c for c in df.columns if c not in TIDY]].reset_index(drop=True)


def natural_key(text) -> tuple:
    """Text with its digit runs compared as numbers (``step50`` before ``step100``); None first."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or text is pd.NA:
        return ((0, ""),)
    return tuple((1, int(part)) if part.isdigit() else (2, part) for part in re.split(r"(\d+)", str(text)) if part)


def layer_key(layer) -> tuple:
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


def single_layer(layers: pd.Series) -> pd.Series:
    """True where a row is of one layer, not a concatenated group (``h2+h3``)."""
    return ~layers.astype(str).map(is_group).astype(bool)


def study_rows(df: pd.DataFrame) -> pd.Series:
    """Records of a study file (``study: correlation``): tabulated by ``study_tables``."""
    if "study" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["study"].notna()


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
