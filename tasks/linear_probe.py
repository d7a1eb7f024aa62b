"""Linear probe per layer: standardize on train, multinomial logistic regression with an L2
strength chosen on val from a log-spaced grid, refit on train+val, report val and test top-1.

The protocol lives here; the fits are ``bench.probe_solver``'s (``fit_path`` walks the grid).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bench.errors import BenchError
from bench.metrics import top1
from bench.probe_loss import as_features
from bench.probe_solver import LogisticRegressionLBFGS, fit_path, standardize
from tasks.base import MAX_VALUES, Option, RunContext, Task, few, int_range


def parse_l2_grid(text: str) -> list[float]:
    """Comma-separated L2 strengths as a list without repeats, strongest first (the order
    ``fit_path`` walks); ValueError outside 1e-12..1e6."""
    vals = sorted({float(v) for v in text.split(",") if v.strip()}, reverse=True)
    if not vals or any(not (1e-12 <= v <= 1e6) for v in vals):
        raise ValueError("need numbers in 1e-12..1e6 separated by commas")
    return vals


def show_l2_grid(grid: list[float]) -> str:
    """A grid as ``parse_l2_grid`` reads it back."""
    return ",".join(f"{v:g}" for v in grid)


DEFAULT_GRID = parse_l2_grid(",".join(f"{10 ** (e / 2):.3g}" for e in range(-14, 1)))  # 1e-7 ... 1, two per decade


@dataclass(frozen=True)
class ProbeResult:
    """Top-1 (percent) with binomial standard errors, at the L2 strength chosen on val."""

    val: float
    val_se: float
    test: float
    test_se: float
    l2: float
    val_pred: np.ndarray | None = field(default=None, compare=False, repr=False)  # the class of each val row
    test_pred: np.ndarray | None = field(default=None, compare=False, repr=False)


def probe_layer(Xtr, ytr, Xva, yva, Xte, yte, grid, n_classes, max_iter=1000, device="cpu", on_fit=None,
                patience=0) -> ProbeResult:
    """Choose the L2 strength on val, refit on train+val, score on test.

    ``patience`` > 0 stops the walk (strong -> weak) after that many strengths in a row below the
    best val accuracy; the weak end of the grid is where L-BFGS needs the most iterations.
    """
    import torch

    Xtr_s, Xva_s = standardize(Xtr, Xva)
    basis = LogisticRegressionLBFGS.eigenbasis(Xtr_s, device)
    best = None
    worse = 0
    for i, (lam, clf) in enumerate(fit_path(basis, ytr, n_classes, grid, max_iter, device)):
        val_pred = clf.predict(Xva_s)
        acc, se = top1(val_pred, yva)
        if on_fit:
            on_fit()
        if best is None or acc > best[0]:  # ties keep the stronger strength
            best = (acc, se, lam, clf, val_pred)
            worse = 0
        elif acc < best[0]:
            worse += 1
            if patience and worse >= patience:
                if on_fit:
                    for _ in grid[i + 1:]:
                        on_fit()
                break
    val_acc, val_se, lam, chosen, val_pred = best
    _, Q, s = basis
    del basis, Xtr_s, Xva_s  # free the standardized train features before the train+val refit
    # train+val as one torch buffer (aligned for the products), standardized in place: one copy
    Xall = torch.empty((len(Xtr) + len(Xva), Xtr.shape[1]), dtype=torch.float32)
    Xall[: len(Xtr)], Xall[len(Xtr):] = torch.as_tensor(Xtr), torch.as_tensor(Xva)
    yall = np.concatenate([ytr, yva])
    Xall_s, Xte_s = standardize(Xall, Xte, in_place=True)
    del Xall
    # The refit starts from the chosen train fit, in the train features' eigenbasis (any basis is a
    # valid change of variables; train's is close to train+val's): same minimizer, fewer evaluations.
    clf = LogisticRegressionLBFGS(n_classes, max_iter=max_iter, device=device).fit(
        None, yall, lam, warm=chosen, basis=(as_features(Xall_s, device), Q, s))
    test_pred = clf.predict(Xte_s)
    test_acc, test_se = top1(test_pred, yte)
    if on_fit:
        on_fit()
    return ProbeResult(val_acc, val_se, test_acc, test_se, lam, val_pred, test_pred)


def _concat(text: str) -> int:
    """'none' -> 0; 'bestN' -> N, the size of the window of layers around the best one."""
    if text == "none":
        return 0
    if text.startswith("best") and text[4:].isdigit() and int(text[4:]) >= 2:
        return int(text[4:])
    raise ValueError("write none or bestN with N >= 2, e.g. best5")


def window_around(layers: list[str], best: str, size: int) -> list[str]:
    """``size`` consecutive layers (in depth order) centred on ``best``, shifted to stay inside."""
    i = layers.index(best)
    start = min(max(0, i - size // 2), max(0, len(layers) - size))
    return layers[start:start + size]


class LinearProbe(Task):
    name = "linear-probe"
    needs_classes = True
    description = "per-layer logistic regression; L2 strength chosen on val, refit on train+val; top-1"
    splits = ("train", "val", "test")
    options = {
        "l2_grid": Option(DEFAULT_GRID, few(parse_l2_grid),
                          f"comma-separated positive L2 strengths (at most {MAX_VALUES}), e.g. 1e-4,1e-3,1e-2",
                          show=show_l2_grid),
        "max_iter": Option(1000, int_range(1, 100_000), "L-BFGS iterations per fit, 1..100000"),
        "patience": Option(2, int_range(0, MAX_VALUES),
                           "stop the grid walk after this many strengths in a row below the best val "
                           f"top-1, 0..{MAX_VALUES} (0 walks the whole grid)"),
        "concat": Option(0, _concat, "none, or bestN: also probe the concatenation of the N layers around "
                                     "the best single layer by val top-1 (the paper: best5)",
                         show=lambda n: f"best{n}" if n else "none"),
    }
    columns = {("val", "top1"): "val top-1", ("test", "top1"): "test top-1", ("val", "l2"): "chosen L2"}

    def run(self, ctx: RunContext) -> list[dict]:
        import torch

        from bench.layers import SEP, is_group

        torch.manual_seed(ctx.seed)
        grid, acts, window = ctx.options["l2_grid"], ctx.acts, ctx.options["concat"]
        ytr, yva, yte = (acts[s].labels for s in ("train", "val", "test"))
        n_classes = int(max(ytr.max(), yva.max(), yte.max())) + 1
        singles = [layer for layer in ctx.layers if not is_group(layer)]
        if window and not singles:
            raise BenchError("-o concat=bestN needs single layers to choose the best from; add them to --layers")
        records, val_top1 = [], {}
        fits = len(ctx.layers) + (1 if window and len(singles) > 1 else 0)

        def probe(layer, bar, **extra):
            Xtr, Xva, Xte = (acts[s].read(layer) for s in ("train", "val", "test"))
            fit = probe_layer(Xtr, ytr, Xva, yva, Xte, yte, grid, n_classes, ctx.options["max_iter"], ctx.device,
                              on_fit=lambda: bar.advance(1), patience=ctx.options["patience"])
            val_top1[layer] = fit.val
            ctx.keep_predictions("val", layer, fit.val_pred)
            ctx.keep_predictions("test", layer, fit.test_pred)
            return [
                {"layer": layer, "split": "val", "metric": "top1", "value": fit.val, "stderr": fit.val_se,
                 "n": len(yva), **extra},
                {"layer": layer, "split": "test", "metric": "top1", "value": fit.test, "stderr": fit.test_se,
                 "n": len(yte), **extra},
                {"layer": layer, "split": "val", "metric": "l2", "value": fit.l2, "stderr": None, "n": len(yva),
                 **extra},
            ]

        with ctx.progress("linear probe", fits * (len(grid) + 1)) as bar:
            for layer in ctx.layers:
                records += probe(layer, bar)
            if window and len(singles) > 1:
                best = max(singles, key=lambda layer: val_top1[layer])  # the shallowest on a tie
                group = SEP.join(window_around(singles, best, window))
                if group not in val_top1:
                    records += probe(group, bar, concat=f"best{window}")
        return records
