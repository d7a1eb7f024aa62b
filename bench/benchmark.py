"""`bench benchmark probe`: our linear probe against looping scikit-learn's lbfgs on the same
grid, same standardization, same data; prints both results and the speed ratio of one run."""

from __future__ import annotations

import time

import numpy as np

from tasks.linear_probe import _grid, probe_layer, standardize, top1


def sklearn_probe(Xtr, ytr, Xva, yva, Xte, yte, grid, max_iter=1000, tol=1e-4):
    """The reference: LogisticRegression(lbfgs) refit from scratch at every strength."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    Xtr_s, Xva_s = standardize(Xtr, Xva)
    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for lam in grid:
            clf = LogisticRegression(C=1.0 / (lam * len(ytr)), solver="lbfgs", max_iter=max_iter, tol=tol)
            clf.fit(Xtr_s, ytr)
            acc, _ = top1(clf.predict(Xva_s), yva)
            if best is None or acc > best[0]:
                best = (acc, lam)
        Xall, yall = np.concatenate([Xtr, Xva]), np.concatenate([ytr, yva])
        Xall_s, Xte_s = standardize(Xall, Xte)
        clf = LogisticRegression(C=1.0 / (best[1] * len(yall)), solver="lbfgs", max_iter=max_iter, tol=tol)
        clf.fit(Xall_s, yall)
    test, _ = top1(clf.predict(Xte_s), yte)
    return best[0], test, best[1]


def compare_probes(Xtr, ytr, Xva, yva, Xte, yte, grid, max_iter=1000, patience=2):
    """Both probes on the same arrays: {"ours": (val, test, lam, seconds), "sklearn": (...)}."""
    grid = _grid(grid) if isinstance(grid, str) else grid
    n_classes = int(max(ytr.max(), yva.max(), yte.max())) + 1
    t = time.perf_counter()
    va, _, te, _, lam = probe_layer(Xtr, ytr, Xva, yva, Xte, yte, grid, n_classes, max_iter, patience=patience)
    ours = (va, te, lam, time.perf_counter() - t)
    t = time.perf_counter()
    sva, ste, slam = sklearn_probe(Xtr, ytr, Xva, yva, Xte, yte, grid, max_iter)
    ref = (sva, ste, slam, time.perf_counter() - t)
    return {"ours": ours, "sklearn": ref}


def compare_precisions(shape: str, n_colors: int, size: int, batch: int, steps: int, device: str = "cpu",
                       seed: int = 0, grad_clip: float = 1.0) -> dict:
    """``bench pretrain``'s training step (the same function) for one iGPT shape in fp32 and under
    bf16 autocast, from the same init on the same random batch: {precision: (median seconds per
    step, loss after the last step)}. The first two steps of each are warm-up and not timed."""
    import torch

    from backbones.igpt.model import SHAPES, IGPTConfig, ImageGPT
    from backbones.igpt.train import autocast_for, require_shape, train_step

    require_shape(shape, "time")
    cfg = IGPTConfig(n_colors=n_colors, n_positions=size * size, **SHAPES[shape])
    x = torch.randint(0, n_colors, (batch, size * size), generator=torch.Generator().manual_seed(seed)).to(device)
    out = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(seed)
        model = ImageGPT(cfg).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
        autocast = autocast_for(precision, device)
        times = []
        for _ in range(steps + 2):
            t = time.perf_counter()
            loss = train_step(model, opt, x, cfg.sos, autocast, grad_clip)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        out[precision] = (float(np.median(times[2:])), float(loss.item()))
    return out
