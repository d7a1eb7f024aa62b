"""k-nearest-neighbour classification on stored features, per layer (the protocol of DINO).

Features are L2-normalized, so similarity is cosine. Each query's ``k`` most similar bank rows
vote for their labels with weight ``exp(similarity / temperature)``; the class with the most
weight wins (the lowest class index on an exact tie, as in scikit-learn). ``k`` is chosen on val
from a small grid with the train features as the bank (ties keep the smaller ``k``); test is then
scored once at that ``k``, with train+val as the bank (``-o bank=train+val``, mirroring the linear
probe's refit on train+val) or with train alone as DINO does (``-o bank=train``). A ``k`` larger
than the train split is dropped from the grid with a logged line; a grid with none left is refused.

Exact and bounded in memory: queries are taken ``QUERY_BLOCK`` (256) rows at a time and compared
with the bank ``block_size`` rows at a time, keeping a running top-``kmax`` per query
(``torch.topk`` of the tile's similarities, merged with the candidates so far), so the largest
temporary is ``256 x block_size`` floats (32 MB at the default 32768), never queries x bank. The
``kmax`` neighbours of a query set are found once and every ``k`` of the grid is read off them.
The default tile width trades time (``torch.topk`` costs more per element over short rows) for
memory; ``bench benchmark knn --block-size`` measures both, and against scikit-learn's brute-force
``KNeighborsClassifier`` on the same features (docs/performance.md).
"""

from __future__ import annotations

import numpy as np

from bench.errors import BenchError
from bench.metrics import top1
from tasks.base import MAX_VALUES, Option, RunContext, Task, choice, few, int_range, positive_float, show_list

DEFAULT_KS = (10, 20, 50, 100, 200)
QUERY_BLOCK = 256
BLOCK_SIZE = 32768
MAX_BLOCK = 1 << 22  # a tile of 4 GiB


def parse_ks(text: str) -> list[int]:
    """Comma-separated neighbour counts as a sorted list without repeats; ValueError unless positive."""
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or values[0] < 1:
        raise ValueError("need positive integers separated by commas")
    return values


def unit_rows(X, device: str = "cpu"):
    """``X`` as a float32 torch tensor on ``device`` with rows scaled to unit L2 norm."""
    import torch

    X = torch.as_tensor(np.asarray(X, dtype=np.float32), device=device)
    return torch.nn.functional.normalize(X, dim=1, eps=1e-12)


def nearest(queries, bank, kmax: int, block_size: int = BLOCK_SIZE):
    """The ``kmax`` most similar rows of ``bank`` for every row of ``queries`` (both unit-norm torch
    tensors on one device): (similarities, indices), each ``[Q, kmax]``, most similar first.

    Exact. Each tile's similarities go into one reused buffer of ``QUERY_BLOCK x block_size``
    floats; its top-``kmax`` is merged with the candidates so far (``2 x kmax`` a row)."""
    import torch

    if kmax > len(bank):
        raise ValueError(f"kmax={kmax} exceeds the {len(bank)} rows of the bank")
    device = queries.device
    sims_out = torch.empty((len(queries), kmax), device=device)
    idx_out = torch.empty((len(queries), kmax), dtype=torch.long, device=device)
    tile = torch.empty(QUERY_BLOCK * min(block_size, len(bank)), device=device)
    with torch.no_grad():
        for i in range(0, len(queries), QUERY_BLOCK):
            q = queries[i:i + QUERY_BLOCK]
            sims = idx = None
            for j in range(0, len(bank), block_size):
                rows = bank[j:j + block_size]
                block = tile[:len(q) * len(rows)].view(len(q), len(rows))  # contiguous, so mm writes in place
                torch.mm(q, rows.T, out=block)
                top, pos = block.topk(min(kmax, len(rows)), dim=1)
                pos += j
                if sims is not None:  # merge with the candidates kept from the earlier tiles
                    top, keep = torch.cat([sims, top], dim=1).topk(min(kmax, sims.shape[1] + top.shape[1]), dim=1)
                    pos = torch.cat([idx, pos], dim=1).gather(1, keep)
                sims, idx = top, pos
            sims_out[i:i + len(q)] = sims
            idx_out[i:i + len(q)] = idx
    return sims_out, idx_out


def vote(sims, idx, bank_labels, ks, temperature: float, n_classes: int) -> dict[int, np.ndarray]:
    """Temperature-weighted votes of the first ``k`` neighbours, for every ``k`` in ``ks``:
    {k: predicted labels}. ``sims``/``idx`` are ``nearest``'s, most similar first."""
    import torch

    labels = torch.as_tensor(np.asarray(bank_labels), device=idx.device)[idx]  # [Q, kmax]
    # exp((s - s_max) / T): the same votes up to a positive factor per query, and no overflow at small T.
    weights = ((sims - sims[:, :1]) / temperature).exp()
    out = {}
    with torch.no_grad():
        for k in ks:
            scores = torch.zeros((len(idx), n_classes), dtype=weights.dtype, device=idx.device)
            scores.scatter_add_(1, labels[:, :k], weights[:, :k])
            out[k] = scores.argmax(1).cpu().numpy()  # the first (lowest) class on an exact tie
    return out


def knn_predict(train, train_labels, queries, ks, temperature: float = 0.07, block_size: int = BLOCK_SIZE,
                n_classes: int | None = None, device: str = "cpu") -> dict[int, np.ndarray]:
    """Cosine kNN with temperature-weighted votes: {k: predicted labels of ``queries``} for every
    ``k`` in ``ks``, with ``train`` (numpy ``[N, D]``) as the bank."""
    ks = sorted(ks)
    n_classes = int(np.max(train_labels)) + 1 if n_classes is None else n_classes
    sims, idx = nearest(unit_rows(queries, device), unit_rows(train, device), ks[-1], block_size)
    return vote(sims, idx, train_labels, ks, temperature, n_classes)


def fitting_ks(ks: list[int], bank: int, log=lambda msg: None) -> list[int]:
    """The ``ks`` a bank of ``bank`` rows can hold, saying which were dropped: the default grid
    reaches 200, more than a ``--limit`` subset's train split may have."""
    kept = [k for k in ks if k <= bank]
    if len(kept) < len(ks):
        log(f"knn: dropping k={show_list(k for k in ks if k > bank)}: more neighbours than the {bank} images "
            "of the train split")
    return kept


class KNN(Task):
    name = "knn"
    needs_classes = True
    description = "cosine k-nearest-neighbour vote (exp(sim/T) weights, as in DINO); k chosen on val; top-1"
    splits = ("train", "val", "test")
    options = {
        "k": Option(list(DEFAULT_KS), few(parse_ks),
                    f"comma-separated neighbour counts to choose from on val (at most {MAX_VALUES}), e.g. 10,20,50",
                    show=show_list),
        "temperature": Option(0.07, positive_float, "vote weight exp(similarity / temperature), a positive number"),
        "bank": Option("train+val", choice("train+val", "train"),
                       "the neighbours test is scored against once k is chosen: train+val or train"),
        "block_size": Option(BLOCK_SIZE, int_range(1, MAX_BLOCK),
                             f"bank rows compared with 256 queries at a time (a positive count, at most {MAX_BLOCK}); "
                             "bounds the memory (4 bytes x 256 x this)"),
    }
    columns = {("val", "top1"): "val top-1", ("test", "top1"): "test top-1", ("val", "k"): "chosen k"}

    def check(self, options: dict, data: dict) -> None:
        ks, n_train = options["k"], len(data["train"])
        if ks[0] > n_train:
            raise BenchError(f"-o k={show_list(ks)} asks for at least {ks[0]} neighbours but the train split (the "
                             f"bank k is chosen with) has {n_train} images; use k values of at most {n_train}")

    def run(self, ctx: RunContext) -> list[dict]:
        temperature, block, acts = ctx.options["temperature"], ctx.options["block_size"], ctx.acts
        ytr, yva, yte = (acts[s].labels for s in ("train", "val", "test"))
        ks = fitting_ks(ctx.options["k"], len(ytr), ctx.log)
        n_classes = int(max(ytr.max(), yva.max(), yte.max())) + 1
        records = []
        with ctx.progress("kNN", 2 * len(ctx.layers)) as bar:
            for layer in ctx.layers:
                train, val = (unit_rows(acts[s].read(layer), ctx.device) for s in ("train", "val"))
                sims, idx = nearest(val, train, ks[-1], block)
                val_preds = vote(sims, idx, ytr, ks, temperature, n_classes)
                bar.advance(1)
                scores = {k: top1(p, yva) for k, p in val_preds.items()}
                k = max(ks, key=lambda k: (scores[k][0], -k))  # best val top-1; a tie keeps the smaller k
                if ctx.options["bank"] == "train+val":
                    import torch

                    bank, bank_labels = torch.cat([train, val]), np.concatenate([ytr, yva])
                else:
                    bank, bank_labels = train, ytr
                del train, val, sims, idx
                sims, idx = nearest(unit_rows(acts["test"].read(layer), ctx.device), bank, k, block)
                test_pred = vote(sims, idx, bank_labels, [k], temperature, n_classes)[k]
                test = top1(test_pred, yte)
                ctx.keep_predictions("val", layer, val_preds[k])
                ctx.keep_predictions("test", layer, test_pred)
                bar.advance(1)
                records += [
                    {"layer": layer, "split": "val", "metric": "top1", "value": scores[k][0], "stderr": scores[k][1],
                     "n": len(yva), "k": k},
                    {"layer": layer, "split": "test", "metric": "top1", "value": test[0], "stderr": test[1],
                     "n": len(yte), "k": k},
                    {"layer": layer, "split": "val", "metric": "k", "value": k, "stderr": None, "n": len(yva)},
                ]
        return records
