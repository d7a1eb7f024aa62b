"""Per-example predictions of classifying runs, and what they allow: paired comparisons and per-class tables.

A classifying task (linear-probe, knn, finetune) hands the runner the class it predicted for every
val and test row of each layer (``RunContext.keep_predictions``). The runner writes them, before the
results file, to ``<results stem>.predictions.npz`` beside it, and names that file with its sha256
in the results file's ``run`` header (``predictions``): a results file that names one implies it
exists and belongs to it. The file holds, per split, the data digest of the split (the results
identity's, which covers its images, labels and sample indices), the sample indices, the true
labels and one array of predicted classes per layer, as small integers.

Two runs are *paired* on a split when their digests of it are equal: the same examples in the same
order. Then, per pair of layers:

- McNemar's exact test: of the examples exactly one run gets right, how many each got; the two-sided
  binomial p-value of that split under "either is as likely" (``scipy.stats.binomtest``);
- a paired-bootstrap 95% interval of the difference in top-1 (B − A, in points): examples are
  resampled with replacement, the same ones for both runs.

Runs on other examples (another ``--limit`` or ``--seed`` subset, another carve-out) keep their
unpaired numbers and say why they are not paired; runs written before predictions were kept say so.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError

PREDICTIONS_FORMAT = "igpt-bench/predictions"
PREDICTIONS_VERSION = 1
ALPHA = 0.05  # a paired difference with p below this is marked significant
RESAMPLES = 10_000


# -- the predictions file ------------------------------------------------------------------------

def predictions_path(results: str | Path) -> Path:
    """``<results stem>.predictions.npz`` beside the results file."""
    return Path(results).with_suffix(".predictions.npz")


def _small(values: np.ndarray) -> np.ndarray:
    """Class ids in the smallest integer type that holds them."""
    values = np.asarray(values)
    top = int(values.max()) if len(values) else 0
    low = int(values.min()) if len(values) else 0
    return values.astype(np.result_type(np.min_scalar_type(top), np.min_scalar_type(low)))


def write_predictions(results: str | Path, run: str, data: dict, digests: dict, kept: dict) -> dict:
    """Write ``kept`` ({(split, layer): predicted classes}) for the results file ``results`` of run
    ``run``, with each split's sample indices and labels (``data[split]``) and digest
    (``digests[split]``), atomically; returns the header entry that names it: {file, sha256}."""
    from bench.files import atomic_write_bytes

    splits: dict[str, dict] = {}
    arrays = {}
    for (split, layer), predicted in kept.items():
        entry = splits.setdefault(split, {"digest": digests[split], "layers": []})
        arrays[f"pred/{split}/{len(entry['layers'])}"] = _small(predicted)
        entry["layers"].append(layer)
    for split in splits:
        arrays[f"indices/{split}"] = np.asarray(data[split].indices, dtype=np.int64)
        arrays[f"labels/{split}"] = _small(data[split].labels)
    meta = {"format": PREDICTIONS_FORMAT, "version": PREDICTIONS_VERSION, "run": run, "splits": splits}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.array(json.dumps(meta)), **arrays)
    blob = buffer.getvalue()
    path = atomic_write_bytes(predictions_path(results), blob)
    return {"file": path.name, "sha256": hashlib.sha256(blob).hexdigest()}


@dataclass(frozen=True)
class SplitPredictions:
    """One split of a run's predictions: which examples (``digest``, ``indices``), their true
    ``labels``, and per layer the predicted class of each."""

    digest: str
    indices: np.ndarray
    labels: np.ndarray
    predicted: dict  # layer -> np.ndarray

    def correct(self, layer: str) -> np.ndarray:
        return self.predicted[layer] == self.labels


def read_predictions(results: str | Path) -> tuple[dict[str, SplitPredictions] | None, str]:
    """The predictions the results file ``results`` names: ({split: SplitPredictions}, ''), or
    (None, why there are none) for a file written before they were kept, a missing one or one that
    is not the file the results name."""
    results = Path(results)
    try:
        run = json.loads(results.read_text()).get("run") or {}
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
        return None, f"{results.name} is not readable ({e})"
    named = run.get("predictions")
    if not isinstance(named, dict) or "file" not in named:
        return None, "no predictions (written before they were kept; run it again with --rerun)"
    path = results.with_name(str(named["file"]))
    try:
        blob = path.read_bytes()
    except OSError:
        return None, f"{path.name} is missing (keep it beside its results file, or run again with --rerun)"
    if hashlib.sha256(blob).hexdigest() != named.get("sha256"):
        return None, f"{path.name} is not the file {results.name} was written with (run it again with --rerun)"
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            splits = {split: SplitPredictions(
                digest=entry["digest"], indices=z[f"indices/{split}"], labels=z[f"labels/{split}"].astype(np.int64),
                predicted={layer: z[f"pred/{split}/{i}"].astype(np.int64) for i, layer in enumerate(entry["layers"])})
                for split, entry in meta["splits"].items()}
    except (ValueError, KeyError, TypeError, OSError) as e:
        return None, f"{path.name} is damaged ({e}); run it again with --rerun"
    if meta.get("format") != PREDICTIONS_FORMAT or meta.get("run") != run.get("run"):
        return None, f"{path.name} is not the predictions of run {run.get('run')}"
    return splits, ""


# -- the statistics --------------------------------------------------------------------------------

@dataclass(frozen=True)
class McNemar:
    a_only: int  # examples only A gets right
    b_only: int  # examples only B gets right
    p: float  # exact two-sided p-value


def mcnemar(a_correct, b_correct) -> McNemar:
    """McNemar's exact test on paired right/wrong outcomes: under "A and B are as good", each of
    the ``a_only + b_only`` discordant examples is B's with probability 1/2."""
    from scipy.stats import binomtest

    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if a_only + b_only == 0 else float(binomtest(b_only, a_only + b_only, 0.5).pvalue)
    return McNemar(a_only, b_only, p)


def paired_bootstrap(a_correct, b_correct, level: float = 0.95, resamples: int = RESAMPLES,
                     seed: int = 0) -> tuple[float, float]:
    """The percentile interval of top-1 B − A (in points) over ``resamples`` resamplings of the
    examples with replacement (the same examples for both runs); the same for a seed.

    A resample's difference depends only on how many of its examples only B, only A, or both or
    neither got right, so the three counts are drawn from their multinomial: the same distribution
    as drawing rows, at a cost that does not grow with the number of examples."""
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    n = len(a)
    if n == 0:
        return float("nan"), float("nan")
    b_only, a_only = int((b & ~a).sum()), int((a & ~b).sum())
    counts = np.random.default_rng(seed).multinomial(n, [b_only / n, a_only / n, (n - a_only - b_only) / n],
                                                     size=resamples)
    diffs = 100.0 * (counts[:, 0] - counts[:, 1]) / n
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


# -- paired comparison of runs ---------------------------------------------------------------------

PAIRED_COLUMNS = ["dataset", "task", "compared", "A", "layer A", "B", "layer B", "split", "n", "top1 A", "top1 B", "Δ",
                  "Δ low", "Δ high", "A only", "B only", "p", "significant", "note"]


def _scored(df: pd.DataFrame) -> pd.DataFrame:
    """The val and test top-1 rows of single runs (no study, curve or low-data budget rows)."""
    from bench.runs import curve_rows, study_rows

    rows = df[(df.metric == "top1") & df.split.isin(["val", "test"]) & ~curve_rows(df) & ~study_rows(df)]
    if "shots" in rows.columns:
        rows = rows[rows.shots.isna()]
    return rows


def _layers_of(rows: pd.DataFrame, file: str) -> list[str]:
    run = rows[rows.file == file]
    return list(dict.fromkeys(run.sort_values("layer_index", kind="stable").layer))


def parse_layer_pair(text: str | None) -> tuple[str, str] | None:
    """``"h2,h4"`` -> ("h2", "h4"); None stays None."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise BenchError(f"--layers {text!r} must name two different layers A,B; e.g. --layers h2,h4")
    return parts[0], parts[1]


def paired_table(df: pd.DataFrame, layers: tuple[str, str] | None = None, against: str | None = None,
                 split: str = "test") -> pd.DataFrame:
    """Paired differences on ``split`` (columns ``PAIRED_COLUMNS``; Δ = top-1 B − A in points).

    Without ``layers``: per (dataset, task), every other run against the first in run order (or
    ``against``: a run id, results file or run label), as ``bench compare``'s Δ: the layers each
    chose by val top-1 ("best by val"), then every layer both runs have. With ``layers`` (A, B):
    layer B against layer A within each run. The unpaired columns (top-1 A and B, Δ) are always
    there; the paired ones only where both sides kept predictions of the same examples, ``note``
    says why not elsewhere."""
    from bench.runs import best_layers, run_label, run_order

    rows = _scored(df)
    order = run_order(df)
    files = sorted(dict.fromkeys(rows.file), key=lambda f: order.get(f, len(order)))
    if not files:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    labels = run_label(df)
    named = [f for f in files if against is not None and against in _names(df, f, labels[f])]
    if against is not None and not named:
        raise BenchError(f"--against {against!r} names none of the runs; give a run id, a results file or a run "
                         "label as the report prints it")
    best = best_layers(df)
    loaded: dict[str, tuple] = {}

    def predictions(file):
        if file not in loaded:
            loaded[file] = read_predictions(file)
        return loaded[file]

    if layers is not None:
        for file in files:
            missing = [layer for layer in layers if layer not in _layers_of(rows, file)]
            if missing:
                raise BenchError(f"{Path(file).name} has no layer {missing[0]!r}; its layers: "
                                 f"{', '.join(_layers_of(rows, file))}")
    out = []
    for (dataset, task), group in rows.groupby(["dataset", "task"], sort=False):
        runs = [f for f in files if (group.file == f).any()]
        if layers is not None:
            pairs = [(f, layers[0], f, layers[1], "two layers") for f in runs]
        else:
            pairs = []
            first = next((f for f in runs if f in named), runs[0])
            for other in (f for f in runs if f != first):
                if first in best.index and other in best.index:
                    pairs.append((first, best[first], other, best[other], "layers chosen by val"))
                mine, theirs = _layers_of(group, first), _layers_of(group, other)
                shared = [layer for layer in mine if layer in theirs]
                if not (mine == theirs == shared == [best.get(first)]):  # one layer each: the row above
                    pairs += [(first, layer, other, layer, "same layer") for layer in shared]
        for file_a, layer_a, file_b, layer_b, compared in pairs:
            row = {"dataset": dataset, "task": task, "compared": compared, "A": labels[file_a], "layer A": layer_a,
                   "B": labels[file_b], "layer B": layer_b, "split": split}
            row.update(_compare(group, predictions, file_a, layer_a, file_b, layer_b, split))
            out.append(row)
    table = pd.DataFrame(out, columns=PAIRED_COLUMNS)
    for column in ("n", "A only", "B only"):
        table[column] = pd.array(table[column], dtype="Int64")
    return table


def _names(df: pd.DataFrame, file: str, label: str) -> set:
    """What ``against`` may name a run by: its results file (path, name or stem), run id or label."""
    path = Path(file)
    return {file, path.name, path.stem, label, *map(str, df.run[df.file == file].unique()[:1])}


def _recorded(group: pd.DataFrame, file: str, layer: str, split: str) -> float | None:
    hit = group[(group.file == file) & (group.layer == layer) & (group.split == split)]
    return float(hit.value.iloc[0]) if len(hit) else None


def _compare(group, predictions, file_a, layer_a, file_b, layer_b, split) -> dict:
    top_a, top_b = _recorded(group, file_a, layer_a, split), _recorded(group, file_b, layer_b, split)
    row = {"top1 A": top_a, "top1 B": top_b, "Δ": None if top_a is None or top_b is None else top_b - top_a,
           "significant": False, "note": ""}  # n: the paired examples, set only where there are
    sides = []
    for side, file, layer in (("A", file_a, layer_a), ("B", file_b, layer_b)):
        kept, why = predictions(file)
        if kept is None:
            row["note"] = f"{side}: {why}"
            return row
        if split not in kept or layer not in kept[split].predicted:
            row["note"] = f"{side}: no {split} predictions of layer {layer} kept"
            return row
        sides.append(kept[split])
    a, b = sides
    if a.digest != b.digest:
        sizes = f"{len(a.labels)} vs {len(b.labels)}" if len(a.labels) != len(b.labels) else "as many, others"
        row["note"] = f"not paired: other {split} examples ({sizes}: another --limit, --seed or data)"
        return row
    a_right, b_right = a.correct(layer_a), b.correct(layer_b)
    test = mcnemar(a_right, b_right)
    lo, hi = paired_bootstrap(a_right, b_right)
    top_a, top_b = 100.0 * a_right.mean(), 100.0 * b_right.mean()
    row.update({"n": len(a_right), "top1 A": top_a, "top1 B": top_b, "Δ": top_b - top_a, "Δ low": lo, "Δ high": hi,
                "A only": test.a_only, "B only": test.b_only, "p": test.p, "significant": test.p < ALPHA})
    return row


PAIRED_TITLE = "paired, on the same test examples: Δ = top-1 B − A, its 95% bootstrap CI, McNemar's exact p (* < 0.05)"


def paired_view(table: pd.DataFrame) -> pd.DataFrame:
    """``paired_table`` for people: the interval as one ``[low, high]`` cell, p with a * where significant,
    the note only where some row has one."""
    def interval(r):
        return "—" if pd.isna(r["Δ low"]) else f"[{r['Δ low']:+.2f}, {r['Δ high']:+.2f}]"

    def p_value(r):
        return "—" if pd.isna(r["p"]) else f"{r['p']:.2g}" + (" *" if r["significant"] else "")

    view = table.drop(columns=["Δ low", "Δ high", "p", "significant", "note", "split"])
    view.insert(view.columns.get_loc("Δ") + 1, "95% CI", [interval(r) for _, r in table.iterrows()])
    view["McNemar p"] = [p_value(r) for _, r in table.iterrows()]
    if (table.note != "").any():
        view["note"] = table.note.values
    return view


# -- per-class accuracy and confusion matrices -----------------------------------------------------

@dataclass(frozen=True)
class Chosen:
    """One run's layer chosen by val, with its test predictions (``kept`` None: why not, in ``why``)."""

    file: str
    label: str
    layer: str
    kept: SplitPredictions | None
    why: str


def _chosen(df: pd.DataFrame) -> dict[tuple[str, str], list[Chosen]]:
    """Per (dataset, task) of classifying runs: each run's chosen layer and its test predictions."""
    from bench.runs import best_layers, run_label

    rows = _scored(df)
    best, labels = best_layers(df), run_label(df)
    out: dict[tuple[str, str], list[Chosen]] = {}
    for (dataset, task), group in rows.groupby(["dataset", "task"], sort=False):
        for file in dict.fromkeys(group.file):
            if file not in best.index:
                continue
            layer = best[file]
            kept, why = read_predictions(file)
            test = None
            if kept is not None:
                test = kept.get("test")
                if test is None or layer not in test.predicted:
                    test, why = None, f"no test predictions of layer {layer} kept"
            out.setdefault((dataset, task), []).append(Chosen(file, labels[file], layer, test, why))
    return out


def _n_classes(runs: list[Chosen]) -> int:
    return 1 + max(int(max(r.kept.labels.max(), r.kept.predicted[r.layer].max())) for r in runs)


def per_class_tables(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Per (dataset, task): per-class test top-1 of each run's layer chosen by val (rows: classes,
    then ``all``, whose value is the run's test top-1; ``n``: test examples of the class), then a
    confusion matrix per run (rows: true class, columns: predicted class, counts)."""
    from sklearn.metrics import confusion_matrix

    out = []
    for (dataset, task), runs in _chosen(df).items():
        have = [r for r in runs if r.kept is not None]
        left_out = [f"{r.label}: {r.why}" for r in runs if r.kept is None]
        title = f"per-class test top-1 · {task} · {dataset} (each run's layer chosen by val)"
        if left_out:
            title += "; left out: " + "; ".join(left_out)
        if not have:
            out.append((title, pd.DataFrame({"note": ["no run here kept predictions"]})))
            continue
        classes = list(range(_n_classes(have)))
        same = len({r.kept.digest for r in have}) == 1
        table = pd.DataFrame({"class": [str(c) for c in classes] + ["all"]})
        matrices = []
        for i, r in enumerate(have):
            cm = confusion_matrix(r.kept.labels, r.kept.predicted[r.layer], labels=classes)
            counts = cm.sum(axis=1)
            accuracy = [100.0 * cm[c, c] / counts[c] if counts[c] else float("nan") for c in classes]
            name = f"{r.label} · {r.layer}"
            if i == 0 or not same:  # the examples per class: one column when every run scored the same ones
                table["n" if same else f"n {name}"] = pd.array(list(counts) + [int(counts.sum())], dtype="Int64")
            table[name] = accuracy + [100.0 * np.trace(cm) / max(int(counts.sum()), 1)]
            matrix = pd.DataFrame(cm, columns=[str(c) for c in classes])
            matrix.insert(0, "true \\ predicted", [str(c) for c in classes])
            matrices.append((f"confusion matrix · {name} · {task} · {dataset} · test (rows: true class, "
                             "columns: predicted)", matrix))
        out += [(title, table), *matrices]
    return out


def confusion_figures(df: pd.DataFrame) -> dict:
    """{``confusion-<task>-<dataset>``: Figure}: a confusion matrix per run (its layer chosen by
    val, on test), side by side; for ``--plot`` and the HTML page."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    figures = {}
    for (dataset, task), runs in _chosen(df).items():
        have = [r for r in runs if r.kept is not None]
        if not have:
            continue
        classes = list(range(_n_classes(have)))
        cols = min(len(have), 3)
        rows = -(-len(have) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False)
        for ax, r in zip(axes.flat, have):
            ConfusionMatrixDisplay.from_predictions(r.kept.labels, r.kept.predicted[r.layer], labels=classes, ax=ax,
                                                    colorbar=False, include_values=len(classes) <= 20)
            top1 = 100.0 * float(r.kept.correct(r.layer).mean())
            ax.set_title(f"{r.label} · {r.layer}\ntest top-1 {top1:.2f}%", fontsize=9)
        for ax in list(axes.flat)[len(have):]:
            ax.set_visible(False)
        fig.suptitle(f"confusion matrices · {task} · {dataset} (layer chosen by val, test)", fontsize=10)
        fig.tight_layout()
        figures[f"confusion-{task}-{dataset}"] = fig
    return figures


# -- rendering -------------------------------------------------------------------------------------

def render_tables(tables: list[tuple[str, pd.DataFrame]], fmt_name: str = "table") -> str | None:
    """Titled tables: printed (``table``; returns None), or Markdown / CSV text (a title line each)."""
    from bench.render import render

    texts = []
    for title, table in tables:
        text = render(table, fmt_name, title=title)
        if text is not None:
            texts.append(f"{title}\n{text}" if fmt_name == "csv" else f"### {title}\n\n{text}")
    return "\n\n".join(t.rstrip("\n") for t in texts) + "\n" if texts else None
