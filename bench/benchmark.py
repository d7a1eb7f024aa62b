"""`bench benchmark`: our implementations against named references, measured in one run.

- probe: our linear probe against looping scikit-learn's lbfgs on the same grid, same
  standardization, same data; both results and the speed ratio;
- pretrain: fp32 against bf16-autocast training steps from the same init and batch;
- sample: KV-cached sampling against recomputing the prefix at every step.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from tasks.linear_probe import _grid, probe_layer, standardize, top1

if TYPE_CHECKING:
    import pandas as pd


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
    fit = probe_layer(Xtr, ytr, Xva, yva, Xte, yte, grid, n_classes, max_iter, patience=patience)
    ours = (fit.val, fit.test, fit.l2, time.perf_counter() - t)
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

    from backbones.igpt.model import IGPTConfig, ImageGPT, shape_config
    from backbones.igpt.train import autocast_for, train_step

    cfg = IGPTConfig(n_colors=n_colors, n_positions=size * size, **shape_config(shape))
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
            loss = train_step(model, opt, x, autocast, grad_clip)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        out[precision] = (float(np.median(times[2:])), float(loss.item()))
    return out


def probe_benchmark(backbone: str, options, dataset: str, *, layers="all", task_options=(), data_root=None,
                    limit=None, batch_size: int = 256, device: str = "cpu", quiet: bool = True,
                    log=None) -> pd.DataFrame:
    """`bench benchmark probe`: per layer, our probe and looped sklearn on the same features."""
    import pandas as pd

    from bench.api import extract
    from bench.registry import TASKS

    probe_options = TASKS.get("linear-probe")().parse_options(task_options)
    acts = {split: extract(backbone, dataset, split, layers=layers, weights=options.weights,
                           pretrained=options.pretrained, image_size=options.image_size, seed=options.seed,
                           limit=limit, data_root=data_root, batch_size=batch_size, device=device, quiet=quiet,
                           log=log)
            for split in ("train", "val", "test")}
    labels = {split: a.labels for split, a in acts.items()}
    rows = []
    for layer in acts["train"].layers:
        X = {split: a.read(layer) for split, a in acts.items()}
        res = compare_probes(X["train"], labels["train"], X["val"], labels["val"], X["test"], labels["test"],
                             probe_options["l2_grid"], probe_options["max_iter"], probe_options["patience"])
        (va, te, lam, t), (sva, ste, slam, st) = res["ours"], res["sklearn"]
        rows.append({"layer": layer, "val ours": va, "val sklearn": sva, "test ours": te,
                     "test sklearn": ste, "test delta": te - ste, "L2 ours": lam, "L2 sklearn": slam,
                     "s ours": t, "s sklearn": st, "speed-up": st / t})
    return pd.DataFrame(rows)


def pretrain_benchmark(shape: str, image_size: int, colors: int, batch_size: int, steps: int,
                       device: str = "cpu") -> pd.DataFrame:
    """`bench benchmark pretrain`: a row per precision, with the speed-up against fp32."""
    import pandas as pd

    res = compare_precisions(shape, colors, image_size, batch_size, steps, device)
    ref = res["fp32"][0]
    return pd.DataFrame([{"precision": p, "s/step": t, "images/s": batch_size / t, "speed-up vs fp32": ref / t,
                          f"loss after {steps + 2} steps": loss} for p, (t, loss) in res.items()])


def sample_benchmark(backbone, n: int, seed: int = 0) -> pd.DataFrame:
    """`bench benchmark sample`: KV-cached sampling against recomputing the prefix each step,
    from the same seed: seconds, speed-up and whether the images are the same."""
    import pandas as pd

    times, outs = {}, {}
    for name, cache in (("kv-cache", True), ("full recompute", False)):
        t = time.perf_counter()
        outs[name] = backbone.sample(n, 1.0, None, seed, use_cache=cache)
        times[name] = time.perf_counter() - t
    same = bool(np.array_equal(outs["kv-cache"], outs["full recompute"]))
    return pd.DataFrame([{"method": k, "seconds": v, "speed-up vs full": times["full recompute"] / v,
                          "same images": same} for k, v in times.items()])
