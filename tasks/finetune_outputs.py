"""What a fine-tune leaves: the files at the end (``write_outputs``) and the records it returns.

Records: ``top1`` on ``val`` and ``test`` (binomial standard errors) at the chosen ``epoch``, the chosen
epoch (metric ``epoch``), and per-epoch curves marked ``curve: True``: ``train`` ``loss`` (and
``clf_loss``/``gen_loss`` with a generative loss) and ``val`` ``top1``. With a list of rates, also
the chosen rate (``val`` metric ``lr``), every rate's curves (each record with its ``lr``), and per
rate its best val ``top1`` (``curve: True``, its ``lr`` and ``best_epoch``, no ``epoch``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.metrics import binomial_se
from bench.training import write_json
from tasks.finetune_net import epoch_folders


def write_outputs(folder: Path, backbone, net, layer: str, fits: list[tuple[float, dict]], chosen: int,
                  test: tuple[int, int], rate_folders: list[Path], log) -> None:
    """Write the fine-tuned weights (where ``--weights`` reads them back), the head
    (``head.safetensors``) and ``finetune.json`` (the choice and every curve), then remove the
    epoch checkpoints and ``rate_folders`` (a list's rates: all they held is in finetune.json)."""
    from safetensors.torch import save_file

    rate, state = fits[chosen]
    best = state["best_epoch"]
    chosen_epoch = state["history"][best - 1]
    weights = backbone.save_weights(folder / "finetuned")
    head = {k: v.detach().cpu().contiguous() for k, v in net.head.state_dict().items()}
    save_file(head, str(folder / "head.safetensors.tmp"))
    os.replace(folder / "head.safetensors.tmp", folder / "head.safetensors")
    summary = {"layer": layer, "epoch": best, "val_top1": 100.0 * chosen_epoch["val_correct"] / chosen_epoch["val_n"],
               "test_top1": 100.0 * test[0] / test[1], "weights": str(weights),
               "head": str(folder / "head.safetensors"), "history": state["history"]}
    grid = bool(rate_folders)
    if grid:
        summary["lr"] = rate
        summary["rates"] = [{"lr": r, "epoch": s["best_epoch"], "val_top1": s["best_top1"], "history": s["history"]}
                            for r, s in fits]
    write_json(folder / "finetune.json", summary)
    for old in epoch_folders(folder):
        shutil.rmtree(old)
    for sub in rate_folders:
        shutil.rmtree(sub, ignore_errors=True)
    size = getattr(backbone, "image_size", None)
    log(f"fine-tuned weights (epoch {best}" + (f", lr {rate:g}" if grid else "") + f"): {weights}; "
        f"probe them with -b {backbone.name} --weights {weights}" + (f" --image-size {size}" if size else ""))


def finetune_records(layer: str, fits: list[tuple[float, dict]], chosen: int, test: tuple[int, int], grid: bool,
                     gen_weight: float, n_train: int) -> list[dict]:
    """``fits``: every rate's (rate, final training state); ``chosen``: the index of the rate kept;
    ``test``: (correct, n) of its best weights on test; ``grid``: whether the rate was chosen from a
    list; ``n_train``: the images of one training epoch."""
    rate, state = fits[chosen]
    best = state["best_epoch"]
    chosen_epoch = state["history"][best - 1]
    val_correct, val_n = chosen_epoch["val_correct"], chosen_epoch["val_n"]
    test_correct, test_n = test
    records = [
        {"layer": layer, "split": "val", "metric": "top1", "value": 100.0 * val_correct / val_n,
         "stderr": binomial_se(val_correct, val_n), "n": val_n, "epoch": best},
        {"layer": layer, "split": "test", "metric": "top1", "value": 100.0 * test_correct / test_n,
         "stderr": binomial_se(test_correct, test_n), "n": test_n, "epoch": best},
        {"layer": layer, "split": "val", "metric": "epoch", "value": best, "stderr": None, "n": val_n},
    ]
    if grid:
        records.append({"layer": layer, "split": "val", "metric": "lr", "value": rate, "stderr": None, "n": val_n})
    for r, s in fits:
        tag = {"lr": r} if grid else {}
        if grid:  # this rate's best epoch by val: what the choice compared
            top = s["history"][s["best_epoch"] - 1]
            records.append({"layer": layer, "split": "val", "metric": "top1", "value": top["val_top1"],
                            "stderr": binomial_se(top["val_correct"], top["val_n"]), "n": top["val_n"],
                            "best_epoch": s["best_epoch"], "curve": True, **tag})
        for h in s["history"]:
            records.append({"layer": layer, "split": "train", "metric": "loss", "value": h["loss"],
                            "stderr": None, "n": n_train, "epoch": h["epoch"], "curve": True, **tag})
            if gen_weight > 0:
                for metric in ("clf_loss", "gen_loss"):
                    records.append({"layer": layer, "split": "train", "metric": metric, "value": h[metric],
                                    "stderr": None, "n": n_train, "epoch": h["epoch"], "curve": True, **tag})
            records.append({"layer": layer, "split": "val", "metric": "top1", "value": h["val_top1"],
                            "stderr": binomial_se(h["val_correct"], h["val_n"]), "n": h["val_n"],
                            "epoch": h["epoch"], "curve": True, **tag})
    return records
