"""Low-data linear probe: k labelled train images per class, several random draws, per layer.

For every budget ``k`` in ``-o shots`` and every draw ``d`` of ``-o seeds``, k train images of
each class are drawn (stratified; seeded by ``[--seed, d]``; nested: for one draw, the 5-shot set
contains the 1-shot set, as in VISSL's low-shot benchmarks) and a multinomial logistic regression
is fitted on them alone for each L2 strength of ``-o l2_grid`` (strong to weak, each fit started
from the previous ones extrapolated along the path). One strength per (layer, k) is chosen by
the mean val top-1 over the draws (ties keep the stronger); val is the full val split. Test is
scored only at that strength, once per draw, and nothing is refitted on val.

What is reused, and why it is valid: the features are standardized by the mean and standard
deviation of the *full* train split (the train images are all there, only their labels are
scarce; a fixed affine map applies to any subset), and every fit is preconditioned in the full
train split's eigenbasis (``LogisticRegressionLBFGS``'s change of variables holds for any
orthogonal basis and positive scaling; only how fast L-BFGS converges depends on the choice: on
Fashion-MNIST pixels, 15-100 evaluations a fit, about as many as in the subset's own basis). Both
are computed once per layer, so all draws x budgets share one d x d eigendecomposition, and the
whole low-data grid costs less than one full linear probe (docs/performance.md).

Records, one per (layer, shots, split): ``top1`` on val and test with ``value`` = the mean over
draws, ``std`` = their standard deviation (ddof=1; 0 for one draw), ``stderr`` = std/sqrt(draws)
(the standard error of that mean over draws, not of one test set), plus ``shots``, ``seeds`` and
``labels`` (shots x classes); and the chosen ``l2`` on val. ``-o layer=best`` first runs the full
linear probe (its default grid) on every requested layer and keeps only the layer with the best
val top-1 for the low-data fits.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np

from bench.errors import BenchError
from bench.metrics import top1
from bench.probe_loss import as_features
from bench.probe_solver import fit_path, second_moment_basis, standardize
from tasks.base import MAX_VALUES, Option, RunContext, Task, choice, few, int_range, show_list
from tasks.linear_probe import LinearProbe, parse_l2_grid, probe_layer, show_l2_grid

PAPER_SHOTS = (4, 25, 400)  # the Image GPT paper's low-data CIFAR-10: 40, 250 and 4,000 labels
DEFAULT_SHOTS = (1, 5, 10, 100)
# Stronger than the full probe's: the best strength grows as the labels shrink, and at the strong end
# the fit tends to the nearest class mean, so the grid reaches up to 1e3 (1e-4 ... 1e3, two per decade).
DEFAULT_L2_GRID = parse_l2_grid(",".join(f"{10 ** (e / 2):.3g}" for e in range(-8, 7)))
# A fit on fewer feature values than this (rows x width), and its val scoring, run on one CPU thread.
# Its tensor ops are too small to share (a 1000 x 10 softmax), and each parallel region costs a
# thread barrier, which on a busy machine costs more than the work (docs/performance.md).
ONE_THREAD_BELOW = 1 << 21


def _shots(text: str) -> list[int]:
    values = set()
    for token in (t.strip() for t in text.split(",")):
        if token == "paper":
            values.update(PAPER_SHOTS)
        elif token:
            values.add(int(token))
    if not values or min(values) < 1:
        raise ValueError("need positive integers separated by commas ('paper' adds 4,25,400)")
    return sorted(values)


def check_shots(labels: np.ndarray, shots: list[int]) -> None:
    """BenchError when the largest budget is more than the smallest class of ``labels`` holds."""
    classes, counts = np.unique(labels, return_counts=True)
    smallest = int(counts.argmin())
    if max(shots) > counts[smallest]:
        raise BenchError(f"-o shots={show_list(shots)} asks for {max(shots)} train images per class but class "
                         f"{classes[smallest]} has {counts[smallest]}; use shots of at most {counts[smallest]}")


def sample_shots(labels: np.ndarray, shots: list[int], seed: int, draw: int) -> dict[int, np.ndarray]:
    """Stratified, seeded, nested draws: {k: sorted row indices with k rows of every class}.

    One permutation per class from ``default_rng([seed, draw])``; budget k takes its first k rows,
    so a draw's smaller budgets are subsets of its larger ones."""
    rng = np.random.default_rng([seed, draw])
    perms = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    return {k: np.sort(np.concatenate([p[:k] for p in perms])) for k in shots}


@contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` torch CPU threads (None: leave them alone), then restore the count."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def low_data_layer(Xtr, ytr, Xva, yva, Xte, yte, shots, seeds: int, grid, n_classes: int, seed: int = 0,
                   max_iter: int = 1000, device: str = "cpu", on_fit=None) -> list[dict]:
    """The low-data probe of one layer: a record-shaped dict per (shots, split, metric), without
    ``layer`` (see the module docstring for what each holds)."""
    Xtr_s, Xva_s, Xte_s = standardize(Xtr, Xva, Xte)
    Q, s = second_moment_basis(Xtr_s, device)
    draws = [sample_shots(ytr, shots, seed, d) for d in range(seeds)]
    val = {k: np.zeros((seeds, len(grid))) for k in shots}  # val top-1 per draw and strength
    fits = {}  # (k, draw, strength index) -> fitted classifier; test is scored after the choice only
    for k in shots:
        small = device == "cpu" and len(draws[0][k]) * Xtr_s.shape[1] < ONE_THREAD_BELOW
        for d, rows in enumerate(draws):
            X = as_features(Xtr_s[rows[k]], device)
            path = fit_path((X, Q, s), ytr[rows[k]], n_classes, grid, max_iter, device)  # strong -> weak
            with torch_threads(1 if small else None):
                for g, (_, clf) in enumerate(path):
                    fits[k, d, g] = clf
                    val[k][d, g] = top1(clf.predict(Xva_s), yva)[0]
                    if on_fit:
                        on_fit()
    out = []
    for k in shots:
        means = val[k].mean(0)
        g = int(np.flatnonzero(means == means.max())[0])  # ties keep the stronger strength
        test = [top1(fits[k, d, g].predict(Xte_s), yte)[0] for d in range(seeds)]
        extra = {"shots": k, "seeds": seeds, "labels": k * len(np.unique(ytr))}
        for split, accs, n in (("val", val[k][:, g], len(yva)), ("test", test, len(yte))):
            mean, std = mean_std(accs)
            out.append({"split": split, "metric": "top1", "value": mean, "stderr": std / math.sqrt(seeds),
                        "std": std, "n": n, **extra})
        out.append({"split": "val", "metric": "l2", "value": grid[g], "stderr": None, "n": len(yva), **extra})
    return out


class LowDataProbe(Task):
    name = "low-data-probe"
    needs_classes = True
    description = "linear probe on k labelled train images per class, mean and std over seeded draws; top-1"
    splits = ("train", "val", "test")
    options = {
        "shots": Option(list(DEFAULT_SHOTS), few(_shots),
                        f"comma-separated train images per class (at most {MAX_VALUES} budgets), e.g. 1,5,10,100 "
                        "('paper' adds 4,25,400)",
                        show=show_list),
        "seeds": Option(5, int_range(1, 1000), "random draws of the labelled images per budget, 1..1000"),
        "layer": Option("all", choice("all", "best"),
                        "all: every requested layer; best: only the layer with the best val top-1 of a full "
                        "linear probe"),
        "l2_grid": Option(DEFAULT_L2_GRID, few(parse_l2_grid),
                          f"comma-separated positive L2 strengths (at most {MAX_VALUES}), e.g. 1e-2,1e-1,1,10",
                          show=show_l2_grid),
        "max_iter": Option(1000, int_range(1, 100_000), "L-BFGS iterations per fit, 1..100000"),
    }
    columns = {("val", "top1"): "val top-1", ("test", "top1"): "test top-1", ("val", "l2"): "chosen L2"}

    def check(self, options: dict, data: dict) -> None:
        check_shots(data["train"].labels, options["shots"])

    def run(self, ctx: RunContext) -> list[dict]:
        import torch

        torch.manual_seed(ctx.seed)
        opts, acts = ctx.options, ctx.acts
        ytr, yva, yte = (acts[s].labels for s in ("train", "val", "test"))
        n_classes = int(max(ytr.max(), yva.max(), yte.max())) + 1
        layers = ctx.layers
        if opts["layer"] == "best" and len(layers) > 1:
            layers = [self._best_layer(ctx, n_classes)]
        grid, records = opts["l2_grid"], []
        fits = len(layers) * len(opts["shots"]) * opts["seeds"] * len(grid)
        with ctx.progress("low-data probe", fits) as bar:
            for layer in layers:
                X = [acts[s].read(layer) for s in ("train", "val", "test")]
                rows = low_data_layer(X[0], ytr, X[1], yva, X[2], yte, opts["shots"], opts["seeds"], grid,
                                      n_classes, ctx.seed, opts["max_iter"], ctx.device, on_fit=lambda: bar.advance(1))
                records += [{"layer": layer, **r} for r in rows]
        return records

    @staticmethod
    def _best_layer(ctx: RunContext, n_classes: int) -> str:
        """The requested layer with the best val top-1 under the full linear probe with its default
        grid and patience and this task's ``max_iter`` (the shallowest on a tie). Test plays no part
        in the choice: the probe's test score is computed and dropped."""
        acts = ctx.acts
        ytr, yva, yte = (acts[s].labels for s in ("train", "val", "test"))
        grid, patience = (LinearProbe.options[k].default for k in ("l2_grid", "patience"))
        best = None
        with ctx.progress("full probe (choosing the layer)", len(ctx.layers) * (len(grid) + 1)) as bar:
            for layer in ctx.layers:
                X = [acts[s].read(layer) for s in ("train", "val", "test")]
                fit = probe_layer(X[0], ytr, X[1], yva, X[2], yte, grid, n_classes, ctx.options["max_iter"],
                                  ctx.device, on_fit=lambda: bar.advance(1), patience=patience)
                if best is None or fit.val > best[1]:
                    best = (layer, fit.val)
        ctx.log(f"low-data probe at layer {best[0]} (full probe val top-1 {best[1]:.2f})")
        return best[0]
