"""The correlation study (Image GPT, Figure 3): across generative checkpoints, does better sample
quality go with better linear-probe accuracy?

A *study* task (``study = True``): it reads no model and no activations itself. For every
checkpoint of the sweep the runner runs its ``components`` as ordinary jobs (``sample-quality``
and ``linear-probe`` on every layer, each skipped when its results file exists), then hands all
their records to ``combine``, which writes one study file:

- per checkpoint and layer: val and test top-1 and the layer's relative depth (``kind: layer``);
- per checkpoint: bits/dim and the sample metrics (``kind: quality``), and the best single layer by
  val top-1 with its test top-1 (``kind: best``);
- per quality measure: Pearson r and Spearman ρ against the best layer's test top-1, with paired
  bootstrap 95% percentile intervals and the number of points (``kind: stat``).

Checkpoints are grouped into model sizes (``igpt 8x128``) for the plots, one line per size as in
the paper; the statistics pool every checkpoint of the study.
"""

from __future__ import annotations

import numpy as np

from bench.errors import BenchError
from bench.layers import is_group
from tasks.base import Option, Task, choice, positive_int
from tasks.sample_quality import _extractor, _n

QUALITY = ("bits_per_dim", "fd", "kid", "precision", "recall")
MIN_POINTS = 3


class Correlation(Task):
    name = "correlation"
    needs_classes = True
    description = "study over checkpoints: sample quality vs best-layer probe accuracy (Pearson, Spearman, CIs)"
    reads = "model"
    requires_generative = True
    study = True
    options = {
        "n": Option(1000, _n, "samples per checkpoint for FD, KID, precision/recall (sample-quality's n)"),
        "split": Option("val", choice("train", "val", "test"),
                        "the split of bits/dim and the real images (sample-quality's split)"),
        "extractor": Option(_extractor("classifier"), _extractor,
                            "sample-quality's extractor: classifier, pixels or inception:PATH"),
        "bootstrap": Option(10000, positive_int, "bootstrap resamples for the 95% intervals, a positive integer"),
    }

    def components(self, options: dict) -> dict[str, dict]:
        """{task: options} run on every checkpoint before ``combine``."""
        return {"sample-quality": {"n": options["n"], "split": options["split"], "extractor": str(options["extractor"])},
                "linear-probe": {}}

    def check_points(self, count: int) -> None:
        if count < MIN_POINTS:
            raise BenchError(f"a correlation needs at least {MIN_POINTS} checkpoints, got {count}; pass more "
                             "--weights (e.g. a quoted glob 'RUN/checkpoints/*')")

    def combine(self, points: list[dict], options: dict, seed: int) -> list[dict]:
        """``points``: per checkpoint {"label", "size", "backbone", "weights", "step", "records"} where
        records are its components' records. Returns the study's records (see the module doc)."""
        self.check_points(len(points))
        out, best_test, quality = [], [], {q: [] for q in QUALITY}
        for p in points:
            head = {"point": p["label"], "size": p["size"], "backbone": p["backbone"], "weights": p["weights"],
                    "step": p["step"]}
            probe = [r for r in p["records"] if r["task"] == "linear-probe" and r["metric"] == "top1"
                     and not is_group(str(r["layer"]))]
            order = list(dict.fromkeys(r["layer"] for r in sorted(probe, key=lambda r: r["layer_index"])))
            depth = {layer: i / max(1, len(order) - 1) for i, layer in enumerate(order)}
            value = {(r["layer"], r["split"]): float(r["value"]) for r in probe}
            for layer in order:
                for split in ("val", "test"):
                    if (layer, split) in value:
                        out.append({**head, "kind": "layer", "layer": layer, "depth": depth[layer], "split": split,
                                    "metric": "top1", "value": value[(layer, split)]})
            val = [(value[(layer, "val")], -i, layer) for i, layer in enumerate(order) if (layer, "val") in value]
            if not val or not all((layer, "test") in value for layer in order):
                raise BenchError(f"checkpoint {p['label']}: its linear-probe results lack val or test top-1; "
                                 "rerun with --rerun")
            chosen = max(val)[2]  # best val top-1; the shallowest on a tie
            for split in ("val", "test"):
                out.append({**head, "kind": "best", "layer": chosen, "depth": depth[chosen], "split": split,
                            "metric": "top1", "value": value[(chosen, split)]})
            best_test.append(value[(chosen, "test")])
            got = {r["metric"]: r for r in p["records"] if r["task"] == "sample-quality"}
            for q in QUALITY:
                quality[q].append(float(got[q]["value"]) if q in got else np.nan)
                if q in got:
                    out.append({**head, "kind": "quality", "layer": "model", "split": got[q]["split"], "metric": q,
                                "value": float(got[q]["value"]), "extractor": got[q].get("extractor")})
        y = np.array(best_test)
        for q in QUALITY:
            x = np.array(quality[q])
            keep = ~np.isnan(x)
            for method in ("pearson", "spearman"):
                stat = correlate(x[keep], y[keep], method, options["bootstrap"], seed)
                out.append({"kind": "stat", "layer": "best", "split": "test", "metric": method, "quality": q,
                            **stat})
        return [dict(r, study="correlation") for r in out]


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
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    xs, ys = x[idx], y[idx]
    if method == "spearman":
        xs, ys = stats.rankdata(xs, axis=1), stats.rankdata(ys, axis=1)
    r = _rowwise_pearson(xs, ys)
    r = r[np.isfinite(r)]
    if not len(r):
        return {"value": value, "lo": None, "hi": None, "n": n, "resamples": 0}
    lo, hi = np.percentile(r, [2.5, 97.5])
    return {"value": value, "lo": float(lo), "hi": float(hi), "n": n, "resamples": int(len(r))}


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(1) / den, np.nan)
