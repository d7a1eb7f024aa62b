"""The correlation study (Image GPT, Figure 3): across generative checkpoints, does better sample
quality go with better linear-probe accuracy?

A *study* task (``study = True``): it reads no model and no activations itself. For every
checkpoint of the sweep the runner runs its ``components`` as ordinary jobs (``sample-quality``
and ``linear-probe`` on every layer, each skipped when its results file exists), then hands all
their records to ``combine``, which writes one study file:

- per checkpoint and layer: val and test top-1 and the layer's relative depth (``kind: layer``);
- per checkpoint: bits/dim and the sample metrics (``kind: quality``), and the best single layer by
  val top-1 with its test top-1 (``kind: best``); its ``caution`` says when that choice is shaky: a
  val split under 1000 images, or a runner-up layer within one binomial standard error;
- per quality measure, against the best layer's test top-1 (``kind: stat``; ``scope`` says which):
  Pearson r and Spearman ρ over all checkpoints; Spearman ρ within each model size (where there are
  several); where every checkpoint knows its step, the partial Spearman ρ given the training step
  (the ranks of quality and accuracy each regressed on the rank of the step, then correlated) and
  Pearson r across sizes at matched steps (each value minus the mean of the checkpoints saved at
  its step, over steps that two or more checkpoints share, where any are). Each
  has a bootstrap 95% percentile interval that resamples whole checkpoints (at matched steps: whole
  steps, so a resample keeps its pairs), its ``n``, the measure's direction (``better``: lower for
  bits/dim, FD and KID; higher for precision and recall), whether its sign ``agrees`` with the
  paper's claim (better quality, higher accuracy), and a ``caution``: fewer than 6 points, an
  interval that spans 0 or is missing, or a study that cannot separate step from quality;
- per quality measure, whether the checkpoints can separate training step from quality
  (``kind: separation``). They cannot when the quality is nearly a function of the step,
  |Spearman ρ(step, quality)| >= 0.9, and no step has checkpoints that differ in it by 10% or more of
  its range over the study (or no step is shared): then "better quality" and "more training" are
  one variable here, and the pooled correlations cannot tell quality from training.

Checkpoints are grouped into model sizes (``igpt 8x128``) for the plots, one line per size as in
the paper.
"""

from __future__ import annotations

import numpy as np

from bench.errors import BenchError
from bench.layers import is_group
from tasks.base import Option, Task, choice, int_range
from tasks.sample_quality import DEFAULT_N, AtMost, parse_extractor, parse_n, show_n

QUALITY = {"bits_per_dim": "lower", "fd": "lower", "kid": "lower", "precision": "higher", "recall": "higher"}
MIN_POINTS = 3
MAX_RESAMPLES = 100_000  # each resample holds a row per checkpoint in several arrays
MAX_BOOTSTRAP_CELLS = 50_000_000  # resamples x checkpoints: about 4 GiB at the bootstrap's peak
FEW_POINTS = 6  # fewer points than this: the study says so beside each statistic
SMALL_VAL = 1000  # a best layer chosen on fewer val images is flagged with its standard error
CONFOUNDED_RHO = 0.9  # |ρ(step, quality)| at or above: quality is nearly a function of the step...
CONFOUNDED_GAP = 0.1  # ...unless checkpoints at one step differ by this share of the quality's range
SCOPES = ("all checkpoints", "within size", "partial given step", "matched steps")
KINDS = ("layer", "best", "quality", "stat", "separation")  # the records a study file holds
METHODS = ("pearson", "spearman")


class Correlation(Task):
    name = "correlation"
    needs_classes = True
    description = "study over checkpoints: sample quality vs best-layer probe accuracy (Pearson, Spearman, CIs)"
    reads = "model"
    requires_generative = True
    study = True
    options = {
        "n": Option(AtMost(DEFAULT_N), parse_n, "samples per checkpoint for FD, KID, precision/recall "
                    f"(sample-quality's n; auto, the default: min({DEFAULT_N}, the split's size))", show_n),
        "split": Option("val", choice("train", "val", "test"),
                        "the split of bits/dim and the real images (sample-quality's split)"),
        "extractor": Option(parse_extractor("classifier"), parse_extractor,
                            "sample-quality's extractor: classifier, pixels or inception:PATH"),
        "bootstrap": Option(10000, int_range(1, MAX_RESAMPLES),
                            f"bootstrap resamples for the 95% intervals, 1..{MAX_RESAMPLES}"),
    }

    def components(self, options: dict) -> dict[str, dict]:
        """{task: options} run on every checkpoint before ``combine``."""
        return {"sample-quality": {"n": options["n"], "split": options["split"], "extractor": str(options["extractor"])},
                "linear-probe": {}}

    def check_points(self, count: int, options: dict | None = None) -> None:
        """Before any work: enough checkpoints to correlate, and a bootstrap that fits in memory
        (each resample holds a number per checkpoint in several arrays at once)."""
        if count < MIN_POINTS:
            raise BenchError(f"a correlation needs at least {MIN_POINTS} checkpoints, got {count}; pass more "
                             "--weights (e.g. a quoted glob 'RUN/checkpoints/*')")
        resamples = (options or {}).get("bootstrap", 0)
        if resamples * count > MAX_BOOTSTRAP_CELLS:
            raise BenchError(f"-o bootstrap={resamples} over {count} checkpoints holds {resamples * count:,} numbers "
                             f"per array; lower bootstrap to at most {MAX_BOOTSTRAP_CELLS // count}")

    def combine(self, points: list[dict], options: dict, seed: int) -> list[dict]:
        """``points``: per checkpoint {"label", "size", "backbone", "weights", "step", "records"} where
        records are its components' records. Returns the study's records (see the module doc)."""
        self.check_points(len(points))
        out, best_test, quality = [], [], {q: [] for q in QUALITY}
        for p in points:
            records, test_top1, measures = _checkpoint(p)
            out += records
            best_test.append(test_top1)
            for q in QUALITY:
                quality[q].append(measures.get(q, np.nan))
        y = np.array(best_test)
        sizes = np.array([str(p["size"]) for p in points])
        steps = [p["step"] for p in points]
        steps = np.array(steps, float) if all(s is not None for s in steps) else None
        for q, better in QUALITY.items():
            out += _statistics(q, better, np.array(quality[q]), y, sizes, steps, options["bootstrap"], seed)
        return [dict(r, study="correlation") for r in out]


    def warnings(self, records: list[dict]) -> list[str]:
        """Lines the runner logs after ``combine``: the measures whose checkpoints cannot separate
        training step from quality (the pooled correlations then measure training as much as quality)."""
        mixed = [r["quality"] for r in records if r["kind"] == "separation" and r["separable"] is False]
        if not mixed:
            return []
        return [f"correlation: these checkpoints cannot separate training step from {', '.join(mixed)} "
                f"(|ρ(step, quality)| >= {CONFOUNDED_RHO} and no step's checkpoints differ by {CONFOUNDED_GAP:.0%} "
                "of its range); read the partial and matched-step rows, or add sizes that differ at equal steps"]


def _checkpoint(p: dict) -> tuple[list[dict], float, dict]:
    """One checkpoint's records (layers, best layer, quality), its best layer's test top-1 and its
    quality measures."""
    head = {"point": p["label"], "size": p["size"], "backbone": p["backbone"], "weights": p["weights"],
            "step": p["step"]}
    probe = [r for r in p["records"] if r["task"] == "linear-probe" and r["metric"] == "top1"
             and not is_group(str(r["layer"]))]
    order = list(dict.fromkeys(r["layer"] for r in sorted(probe, key=lambda r: r["layer_index"])))
    depth = {layer: i / max(1, len(order) - 1) for i, layer in enumerate(order)}
    got = {(r["layer"], r["split"]): r for r in probe}
    out = []
    for layer in order:
        for split in ("val", "test"):
            if (layer, split) in got:
                out.append({**head, "kind": "layer", "layer": layer, "depth": depth[layer], "split": split,
                            "metric": "top1", "value": float(got[(layer, split)]["value"])})
    val = sorted(((float(got[(layer, "val")]["value"]), -i, layer) for i, layer in enumerate(order)
                  if (layer, "val") in got), reverse=True)
    if not val or not all((layer, "test") in got for layer in order):
        raise BenchError(f"checkpoint {p['label']}: its linear-probe results lack val or test top-1; "
                         "rerun with --rerun")
    chosen = val[0][2]  # best val top-1; the shallowest on a tie
    selection = _selection(got[(chosen, "val")], val[1] if len(val) > 1 else None)
    for split in ("val", "test"):
        r = got[(chosen, split)]
        out.append({**head, "kind": "best", "layer": chosen, "depth": depth[chosen], "split": split,
                    "metric": "top1", "value": float(r["value"]), "stderr": _stderr(r), **selection})
    measures = {}
    for r in p["records"]:
        if r["task"] == "sample-quality" and r["metric"] in QUALITY:
            measures[r["metric"]] = float(r["value"])
            out.append({**head, "kind": "quality", "layer": "model", "split": r["split"], "metric": r["metric"],
                        "value": float(r["value"]), "extractor": r.get("extractor"), "better": QUALITY[r["metric"]]})
    return out, float(got[(chosen, "test")]["value"]), measures


def _stderr(record: dict) -> float | None:
    """A top-1's binomial standard error in points: the record's, else from its value and n."""
    if record.get("stderr") is not None:
        return float(record["stderr"])
    n, p = record.get("n"), float(record["value"]) / 100
    return 100 * float(np.sqrt(p * (1 - p) / n)) if n else None


def _selection(best: dict, runner_up: tuple | None) -> dict:
    """How sure the choice of the best layer is: its val n and standard error, the runner-up and
    the gap to it, and a ``caution`` where the val split is small or the runner-up within 1 SE."""
    se, n = _stderr(best), best.get("n")
    out = {"val_n": n, "val_stderr": se, "runner_up": None, "gap": None, "caution": None}
    caution = []
    if n is not None and n < SMALL_VAL:
        caution.append(f"val split of {n} images (SE {se:.1f} points)" if se is not None
                       else f"val split of {n} images")
    if runner_up is not None:
        gap = float(best["value"]) - runner_up[0]
        out.update(runner_up=runner_up[2], gap=gap)
        if se is not None and gap <= se:
            caution.append(f"runner-up {runner_up[2]} within 1 SE ({gap:.1f} points)")
    out["caution"] = "; ".join(caution) or None
    return out


def agrees(better: str, value) -> bool | None:
    """Whether a correlation against accuracy has the paper's sign (better quality, higher
    accuracy): negative where lower is better, positive where higher is; None when undefined."""
    if value is None or not np.isfinite(value) or value == 0:
        return None
    return bool(value < 0) if better == "lower" else bool(value > 0)


def caution(stat: dict, confounded: bool = False) -> str | None:
    """What a reader must know before trusting a statistic (``value``, ``lo``, ``hi``, ``n``): too
    few points, an interval missing or spanning 0, step and quality confounded; None when nothing."""
    notes = []
    if stat["value"] is None:
        notes.append("undefined")
    if stat["n"] < FEW_POINTS:
        notes.append(f"n < {FEW_POINTS}")
    if stat["value"] is not None and stat["lo"] is None:
        notes.append("no interval")
    elif stat["lo"] is not None and stat["lo"] <= 0 <= stat["hi"]:
        notes.append("interval spans 0")
    if confounded:
        notes.append("step and quality confounded")
    return "; ".join(notes) or None


def _statistics(q: str, better: str, x: np.ndarray, y: np.ndarray, sizes: np.ndarray, steps: np.ndarray | None,
                resamples: int, seed: int) -> list[dict]:
    """A quality measure's ``stat`` records (see the module doc) and, where steps are known, its
    ``separation`` record."""
    keep = ~np.isnan(x)
    if not keep.any():  # a measure no checkpoint has
        return []
    x, y, sizes = x[keep], y[keep], sizes[keep]
    steps = steps[keep] if steps is not None else None
    out, confounded = [], False
    if steps is not None and keep.sum() >= MIN_POINTS:
        sep = separation(x, steps)
        confounded = sep["separable"] is False
        out.append({"kind": "separation", "layer": "best", "split": "test", "metric": "step_spearman",
                    "quality": q, "better": better, **sep})
    base = {"kind": "stat", "layer": "best", "split": "test", "quality": q, "better": better}
    found = [("all checkpoints", None, m, correlate(x, y, m, resamples, seed)) for m in ("pearson", "spearman")]
    if len(set(sizes)) > 1:
        found += [("within size", size, "spearman", correlate(x[sizes == size], y[sizes == size], "spearman",
                                                              resamples, seed)) for size in dict.fromkeys(sizes)]
    if steps is not None:
        found.append(("partial given step", None, "spearman", partial_correlate(x, y, steps, resamples, seed)))
        matched = matched_correlate(x, y, steps, resamples, seed)
        if matched["groups"]:  # no step shared by two checkpoints: nothing to match
            found.append(("matched steps", None, "pearson", matched))
    for scope, size, method, stat in found:
        mixes_steps = confounded and scope in ("all checkpoints", "within size")
        out.append({**base, "metric": method, "scope": scope, "size": size, **stat,
                    "agrees": agrees(better, stat["value"]), "caution": caution(stat, mixes_steps)})
    return out


def separation(x: np.ndarray, steps: np.ndarray) -> dict:
    """Whether checkpoints can separate training step from the quality ``x`` (the rule in the
    module doc): ρ(step, x), the largest gap in ``x`` among checkpoints of one step and its share of
    the range of ``x``, the steps shared, and ``separable`` (None when ρ is undefined)."""
    from scipy import stats

    x, steps = np.asarray(x, float), np.asarray(steps, float)
    span = float(np.ptp(x))
    shared = [s for s in np.unique(steps) if (steps == s).sum() > 1]
    gap = max((float(np.ptp(x[steps == s])) for s in shared), default=None)
    share = gap / span if gap is not None and span > 0 else None
    rho = float(stats.spearmanr(steps, x)[0]) if np.ptp(steps) > 0 and span > 0 else None
    separable = None if rho is None else not (abs(rho) >= CONFOUNDED_RHO and (share is None or share < CONFOUNDED_GAP))
    return {"value": rho, "gap": gap, "gap_share": share, "shared_steps": len(shared), "separable": separable}


def correlate(x, y, method: str, resamples: int, seed: int) -> dict:
    """Pearson r or Spearman ρ of paired points, with a paired bootstrap 95% percentile interval.

    The point estimate is scipy's. The interval is computed here rather than by
    ``scipy.stats.bootstrap`` because with a handful of points some resamples repeat one point
    (or tie every rank), where the coefficient is undefined; scipy then returns no interval,
    while here those resamples are dropped and the count that remained is recorded."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < MIN_POINTS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"value": None, "lo": None, "hi": None, "n": n, "resamples": 0}
    value = float((stats.pearsonr if method == "pearson" else stats.spearmanr)(x, y)[0])
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    xs, ys = x[idx], y[idx]
    if method == "spearman":
        xs, ys = stats.rankdata(xs, axis=1), stats.rankdata(ys, axis=1)
    return {"value": value, **_interval(_rowwise_pearson(xs, ys)), "n": n}


def partial_correlate(x, y, z, resamples: int, seed: int) -> dict:
    """Partial Spearman ρ of ``x`` and ``y`` given ``z``: the Pearson r of the residuals of
    rank(x) and rank(y) after each is regressed (with an intercept) on rank(z); with a bootstrap
    95% percentile interval over resampled points (ranks recomputed in each resample)."""
    from scipy import stats

    x, y, z = (np.asarray(a, float) for a in (x, y, z))
    n = len(x)
    if n < MIN_POINTS + 1 or min(np.ptp(x), np.ptp(y), np.ptp(z)) == 0:  # residuals need 2 degrees of freedom
        return {"value": None, "lo": None, "hi": None, "n": n, "resamples": 0}
    ranks = [stats.rankdata(a)[None] for a in (x, y, z)]
    value = float(_partial_rows(*ranks)[0])
    if not np.isfinite(value):
        return {"value": None, "lo": None, "hi": None, "n": n, "resamples": 0}
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    rows = [stats.rankdata(a[idx], axis=1) for a in (x, y, z)]
    return {"value": value, **_interval(_partial_rows(*rows)), "n": n}


def matched_correlate(x, y, steps, resamples: int, seed: int) -> dict:
    """Pearson r across checkpoints saved at the same step: of each value minus the mean of its
    step's checkpoints, over the steps two or more checkpoints share (the correlation with step held
    fixed as a category). The bootstrap resamples whole steps, so each resample keeps its matches;
    ``groups`` counts the steps."""
    x, y, steps = (np.asarray(a, float) for a in (x, y, steps))
    shared = [s for s in np.unique(steps) if (steps == s).sum() > 1]
    n = int(sum((steps == s).sum() for s in shared))
    none = {"value": None, "lo": None, "hi": None, "n": n, "groups": len(shared), "resamples": 0}
    if n - len(shared) < 2:  # deviations from each step's mean: too few left to correlate
        return none
    sums = np.zeros((3, len(shared)))
    for g, s in enumerate(shared):
        dx, dy = x[steps == s] - x[steps == s].mean(), y[steps == s] - y[steps == s].mean()
        sums[:, g] = dx @ dy, dx @ dx, dy @ dy
    if sums[1].sum() <= 0 or sums[2].sum() <= 0:
        return none
    value = float(sums[0].sum() / np.sqrt(sums[1].sum() * sums[2].sum()))
    if len(shared) < 2:
        return {**none, "value": value}
    counts = np.random.default_rng(seed).multinomial(len(shared), np.full(len(shared), 1 / len(shared)), resamples)
    xy, xx, yy = counts @ sums[0], counts @ sums[1], counts @ sums[2]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where((xx > 0) & (yy > 0), xy / np.sqrt(xx * yy), np.nan)
    return {**none, "value": value, **_interval(r)}


def _interval(r: np.ndarray) -> dict:
    """The 95% percentile interval of bootstrap statistics, the undefined ones dropped and counted."""
    r = r[np.isfinite(r)]
    if not len(r):
        return {"lo": None, "hi": None, "resamples": 0}
    lo, hi = np.percentile(r, [2.5, 97.5])
    return {"lo": float(lo), "hi": float(hi), "resamples": int(len(r))}


def _partial_rows(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Row-wise Pearson r of the residuals of ``x`` and ``y`` after least squares on ``z`` with an
    intercept; NaN where ``z`` is constant or explains a residual away."""
    def residual(a):
        a = a - a.mean(1, keepdims=True)
        zz = (zc * zc).sum(1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            res = a - (a * zc).sum(1, keepdims=True) / zz * zc
        small = (res * res).sum(1) <= 1e-12 * (a * a).sum(1)
        res[small] = np.nan
        return res

    zc = z - z.mean(1, keepdims=True)
    return _rowwise_pearson(residual(x), residual(y))


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(1) / den, np.nan)
