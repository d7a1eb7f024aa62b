"""The references our fast paths are timed against, and the component comparisons of
``bench perf probe|pretrain|sample|knn`` (one component with the user's backbone or sizes; the
``bench perf`` rows in ``bench.perf`` use the same references and timers):

- probe: our linear probe against scikit-learn's lbfgs (``sklearn_fit``) looped over the same
  grid, same standardization, same data; both results and the speed ratio;
- pretrain: fp32 against bf16-autocast (and compiled) training steps from the same init and batch;
- sample: KV-cached sampling against recomputing the prefix at every step (``samplers``), and
  against transformers' ``generate`` (``transformers_pair``);
- knn: our blocked cosine kNN against scikit-learn's brute force, each in a fresh process.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from bench.errors import BenchError
from bench.metrics import top1
from bench.probe_solver import standardize
from tasks.linear_probe import parse_l2_grid, probe_layer

if TYPE_CHECKING:
    import pandas as pd


def sklearn_fit(X, y, l2: float, max_iter: int = 1000, tol: float = 1e-4):
    """The reference fit: scikit-learn's LogisticRegression(lbfgs) at our L2 strength (mean loss +
    l2/2 |W|^2, i.e. C = 1 / (l2 n)), from scratch; its convergence warnings muted (the objective
    is compared, not the iteration count)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=1.0 / (l2 * len(y)), solver="lbfgs", max_iter=max_iter, tol=tol).fit(X, y)


def sklearn_probe(Xtr, ytr, Xva, yva, Xte, yte, grid, max_iter=1000, tol=1e-4):
    """The reference probe: ``sklearn_fit`` refit from scratch at every strength, the best on val
    refit on train + val: (val top-1, test top-1, strength)."""
    Xtr_s, Xva_s = standardize(Xtr, Xva)
    best = None
    for lam in grid:
        acc, _ = top1(sklearn_fit(Xtr_s, ytr, lam, max_iter, tol).predict(Xva_s), yva)
        if best is None or acc > best[0]:
            best = (acc, lam)
    Xall, yall = np.concatenate([Xtr, Xva]), np.concatenate([ytr, yva])
    Xall_s, Xte_s = standardize(Xall, Xte)
    test, _ = top1(sklearn_fit(Xall_s, yall, best[1], max_iter, tol).predict(Xte_s), yte)
    return best[0], test, best[1]


def compare_probes(Xtr, ytr, Xva, yva, Xte, yte, grid, max_iter=1000, patience=2):
    """Both probes on the same arrays: {"ours": (val, test, lam, seconds), "sklearn": (...)}."""
    grid = parse_l2_grid(grid) if isinstance(grid, str) else grid
    n_classes = int(max(ytr.max(), yva.max(), yte.max())) + 1
    t = time.perf_counter()
    fit = probe_layer(Xtr, ytr, Xva, yva, Xte, yte, grid, n_classes, max_iter, patience=patience)
    ours = (fit.val, fit.test, fit.l2, time.perf_counter() - t)
    t = time.perf_counter()
    sva, ste, slam = sklearn_probe(Xtr, ytr, Xva, yva, Xte, yte, grid, max_iter)
    ref = (sva, ste, slam, time.perf_counter() - t)
    return {"ours": ours, "sklearn": ref}


def compare_steps(shape: str, n_colors: int, size: int, batch: int, steps: int, device: str = "cpu",
                  seed: int = 0, grad_clip: float = 1.0, variants=("fp32", "bf16"), backend: str = "inductor") -> dict:
    """``bench pretrain``'s training step (the same function) for one iGPT shape in each variant
    (fp32, bf16 autocast, either with ``+compile``: through ``torch.compile``), from the same init
    on the same random batch: {variant: (median seconds per step, loss after the last step)}. The
    first two steps of each are warm-up (and compilation) and not timed."""
    import torch

    from backbones.igpt.model import IGPTConfig, ImageGPT
    from backbones.igpt.shapes import shape_config
    from backbones.igpt.train import train_step
    from bench.runtime import autocast_for

    cfg = IGPTConfig(n_colors=n_colors, n_positions=size * size, **shape_config(shape))
    x = torch.randint(0, n_colors, (batch, size * size), generator=torch.Generator().manual_seed(seed)).to(device)
    out = {}
    for variant in variants:
        precision, _, compiled = variant.partition("+")
        torch.manual_seed(seed)
        model = ImageGPT(cfg).to(device)
        net = torch.compile(model, backend=backend) if compiled else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
        autocast = autocast_for(precision, device)
        times = []
        for _ in range(steps + 2):
            t = time.perf_counter()
            loss = train_step(net, opt, x, autocast, grad_clip)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        out[variant] = (float(np.median(times[2:])), float(loss.item()))
    return out


def pretrain_benchmark(shape: str, image_size: int, colors: int, batch_size: int, steps: int,
                       device: str = "cpu", compile: bool = False) -> pd.DataFrame:
    """`bench perf pretrain`: a row per precision (and compiled variant), with the speed-up
    against eager fp32."""
    import pandas as pd

    variants = ("fp32", "bf16") + (("fp32+compile", "bf16+compile") if compile else ())
    res = compare_steps(shape, colors, image_size, batch_size, steps, device, variants=variants)
    ref = res["fp32"][0]
    return pd.DataFrame([{"step": v, "s/step": t, "images/s": batch_size / t, "speed-up vs fp32": ref / t,
                          f"loss after {steps + 2} steps": loss} for v, (t, loss) in res.items()])


def probe_benchmark(backbone: str, options, dataset: str, *, layers="all", task_options=(), data_root=None,
                    limit=None, batch_size: int = 256, device: str = "cpu", quiet: bool = True,
                    log=None) -> pd.DataFrame:
    """`bench perf probe`: per layer, our probe and looped sklearn on the same features."""
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


def transformers_pair(n_layer: int, n_embd: int, n_head: int, n_colors: int, n_positions: int, seed: int = 0,
                      head: bool = False):
    """A random transformers ImageGPT (with the image head where ``head``; norms and biases
    perturbed so they matter) and our model with the same weights."""
    import torch

    from backbones.igpt.model import IGPTConfig, ImageGPT, from_transformers_state_dict
    from bench.measure import transformers_or_none

    transformers = transformers_or_none()
    torch.manual_seed(seed)
    cfg = transformers.ImageGPTConfig(vocab_size=n_colors + 1, n_positions=n_positions, n_embd=n_embd,
                                      n_layer=n_layer, n_head=n_head)
    cls = transformers.ImageGPTForCausalImageModeling if head else transformers.ImageGPTModel
    ref = cls(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = ImageGPT(IGPTConfig(n_colors=n_colors, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                               n_head=n_head)).eval()
    sd = from_transformers_state_dict(ref.state_dict(), ours.cfg)
    sd.setdefault("head.weight", ours.head.weight.detach().clone())
    ours.load_state_dict(sd)
    return ref, ours


def samplers(model, tokens: int, n: int, out: dict, recompute: bool = True, ref=None, seed: int = 0) -> dict:
    """The sampling contenders for ``n`` images of ``tokens`` positions, as calls to time: our
    cached sampler (``cache``), recomputing the prefix each step where ``recompute`` (the
    official sampler's way), and transformers' ``generate(use_cache=True)`` where ``ref`` is given;
    ours keep their first tokens in ``out``."""
    import torch

    from backbones.igpt.sample import generate

    prefix = torch.zeros((n, 0), dtype=torch.long)

    def ours(use_cache):
        return lambda: out.setdefault("cache" if use_cache else "recompute",
                                      generate(model, prefix, tokens, seed=seed, use_cache=use_cache))

    fns = {"cache": ours(True)}
    if recompute:
        fns["recompute"] = ours(False)
    if ref is not None:
        sos = torch.full((n, 1), model.cfg.sos, dtype=torch.long)

        def hf():
            # the prompt is the start token, which also serves as the pad id (ImageGPT has none), so
            # generate warns of right-padding on every call; it is not padding, and the warning is muted
            log = logging.getLogger("transformers.generation.utils")
            level = log.level
            log.setLevel(logging.ERROR)
            try:
                return ref.generate(input_ids=sos, max_length=tokens + 1, do_sample=True, top_k=0, use_cache=True,
                                    pad_token_id=model.cfg.sos)
            finally:
                log.setLevel(level)

        fns["hf"] = hf
    return fns


def sample_benchmark(backbone, n: int, seed: int = 0) -> pd.DataFrame:
    """`bench perf sample`: KV-cached sampling against recomputing the prefix each step, from the
    same seed: seconds, speed-up and whether the images are the same."""
    import pandas as pd
    import torch

    from bench.measure import interleaved_medians

    out = {}  # each sampler's tokens: generate runs under inference_mode
    t = interleaved_medians(samplers(backbone.model, backbone.height * backbone.width, n, out, seed=seed), 1,
                            warmup=False)
    times = {"kv-cache": t["cache"], "full recompute": t["recompute"]}
    same = bool(torch.equal(out["cache"], out["recompute"]))
    return pd.DataFrame([{"method": k, "seconds": v, "speed-up vs full": times["full recompute"] / v,
                          "same images": same} for k, v in times.items()])


def knn_features(n_train: int, n_query: int, dim: int, n_classes: int, seed: int = 0):
    """Synthetic float32 features for `bench perf knn`: Gaussian classes around random means
    (train, train labels, queries, query labels), the same for the same arguments."""
    rng = np.random.default_rng(seed)
    means = 0.15 * rng.standard_normal((n_classes, dim), dtype=np.float32)

    def draw(n):
        labels = rng.integers(0, n_classes, n)
        return means[labels] + rng.standard_normal((n, dim), dtype=np.float32), labels

    (X, y), (Q, yq) = draw(n_train), draw(n_query)
    return X, y, Q, yq


def _knn_child(method: str, sizes: tuple, ks: list[int], temperature: float, block_size: int, seed: int,
               device: str) -> dict:
    """One method in a fresh process: make the features, then classify the queries once. Memory is
    the process's peak resident set (ru_maxrss) and its growth over the peak before the call (both
    libraries and the features already loaded)."""
    import resource

    import sklearn.neighbors  # noqa: F401 - loaded before the baseline in both children alike
    import torch  # noqa: F401

    from bench.runtime import keep_freed_memory
    from tasks.knn import knn_predict

    keep_freed_memory()  # as `bench` does

    X, y, Q, yq = knn_features(*sizes, seed=seed)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wall, cpu = time.perf_counter(), time.process_time()
    if method == "ours":
        pred = knn_predict(X, y, Q, ks, temperature, block_size, n_classes=sizes[3], device=device)[max(ks)]
    else:
        from sklearn.neighbors import KNeighborsClassifier

        clf = KNeighborsClassifier(n_neighbors=max(ks), metric="cosine", algorithm="brute",
                                   weights=lambda d: np.exp((1 - d) / temperature))
        pred = clf.fit(X, y).predict(Q)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": wall, "cpu": cpu, "peak": peak, "growth": peak - before, "pred": np.asarray(pred),
            "top1": 100.0 * float((np.asarray(pred) == yq).mean())}


def knn_benchmark(n_train: int = 54000, n_query: int = 10000, dim: int = 256, n_classes: int = 10,
                  ks=(10, 20, 50, 100, 200), temperature: float = 0.07, block_size: int = 32768, seed: int = 0,
                  device: str = "cpu", sklearn: bool = True) -> pd.DataFrame:
    """`bench perf knn`: our blocked cosine kNN (all of ``ks`` from one top-max(ks) search)
    against scikit-learn's brute-force ``KNeighborsClassifier`` (cosine, the same exp(sim/T)
    weights, k = max(ks)) on the same synthetic features, each in a fresh process: seconds, CPU
    seconds, queries/s, peak memory, and how often the two predict the same label at k = max(ks)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import pandas as pd

    need = 3 * (n_train + n_query) * dim * 4  # the features, their unit-norm copies and sklearn's
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    if have and need > have // 2:
        raise BenchError(f"{n_train + n_query} rows x {dim} features need about {need / 2**30:.1f} GiB, more than "
                         f"half of this machine's {have / 2**30:.0f} GiB; lower --n-train, --n-query or --dim")
    ks = sorted(ks)
    sizes = (n_train, n_query, dim, n_classes)
    methods = {"ours": f"ours (256 x {block_size} tiles, k={','.join(map(str, ks))})"}
    if sklearn:
        methods["sklearn"] = f"sklearn KNeighborsClassifier brute (k={ks[-1]})"
    res = {}
    for method in methods:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            res[method] = pool.submit(_knn_child, method, sizes, ks, temperature, block_size, seed, device).result()
    rows = []
    for method, label in methods.items():
        r = res[method]
        row = {"method": label, "seconds": r["seconds"], "cpu seconds": r["cpu"], "queries/s": n_query / r["seconds"],
               "peak RSS MB": r["peak"], "RSS growth MB": r["growth"], f"top-1 @k={ks[-1]}": r["top1"]}
        if sklearn:
            row["speed-up vs sklearn"] = res["sklearn"]["seconds"] / r["seconds"]
            row["same label as sklearn %"] = 100.0 * float((r["pred"] == res["sklearn"]["pred"]).mean())
        rows.append(row)
    return pd.DataFrame(rows)
