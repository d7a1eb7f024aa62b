"""The network a fine-tune trains (the backbone's module plus a linear head), the batches it is fed,
and its epoch checkpoints: ``epoch-NNNN/`` holds the weights, the best epoch's weights, the optimizer, the
training state with its curves, and the settings that wrote them; whole or absent.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from bench.batches import augment, epoch_order
from bench.errors import BenchError
from bench.training import as_is, check_settings, cpu_state, whole_folders, write_json, write_whole

EPOCHS = "epoch-*"  # the checkpoint folders of one rate's training
ELSEWHERE = "choose another --results folder or --tag"  # the other way out of a refused folder


def net_class():
    """The ``FinetuneNet`` class (made on first use: importing this module imports no torch)."""
    import torch.nn.functional as F
    from torch import nn

    class FinetuneNet(nn.Module):
        """The backbone's module plus a linear head on the pooled features of ``layer``; its
        forward is the training loss, so that DistributedDataParallel syncs every gradient."""

        def __init__(self, backbone, layer: str, n_classes: int, gen_weight: float):
            super().__init__()
            self.backbone = backbone  # not a submodule: its module is
            self.body = backbone.module
            self.head = nn.Linear(backbone.layer_widths()[layer], n_classes)
            self.layer, self.gen_weight = layer, gen_weight

        def logits(self, x):
            return self.head(self.backbone.features(x, [self.layer])[self.layer].float())

        def forward(self, x, labels):
            """(loss, classification loss, generative loss or None)."""
            if self.gen_weight > 0:
                feats, gen = self.backbone.features_and_loss(x, [self.layer])
            else:
                feats, gen = self.backbone.features(x, [self.layer]), None
            clf = F.cross_entropy(self.head(feats[self.layer].float()).float(), labels)
            loss = clf + self.gen_weight * gen if gen is not None else clf
            return loss, clf.detach(), gen.detach() if gen is not None else None

    return FinetuneNet


def has_unused_parameters(net, x, y) -> bool:
    """Whether some trainable parameter of ``net`` gets no gradient from the loss on (``x``, ``y``)
    (a timm classifier, blocks past the head's layer, iGPT's color head without the generative
    loss): DistributedDataParallel must be told, and warns every run when told needlessly. One
    backward pass in eval mode: no batch-norm statistics move, no random draws."""
    net.eval()
    loss, _, _ = net(x, y)
    loss.backward()
    unused = any(p.grad is None for p in net.parameters() if p.requires_grad)
    net.zero_grad(set_to_none=True)
    return unused


def host_batch(backbone, images: np.ndarray, labels: np.ndarray, device: str):
    """uint8 images and labels -> model input and label tensors in (pinned, for a GPU) host memory."""
    import torch

    x = backbone.preprocess(images)
    y = torch.as_tensor(labels, dtype=torch.long)
    if device.startswith("cuda"):
        return x.pin_memory(), y.pin_memory()
    return x, y


def train_batches(train, backbone, plan, seed: int, epoch: int, rank: int, world: int, device: str):
    """This process's share of every batch of ``epoch`` (``plan``: its ``batch``, ``pad`` and
    ``flip``), on the host; augmentation is drawn for the global batch, so every process sees the
    same images as one process would."""
    share = plan.batch // world
    mine = slice(rank * share, (rank + 1) * share)
    aug_rng = np.random.default_rng([seed, epoch, 1])
    for rows in epoch_order(len(train), plan.batch, seed, epoch):
        images = train.images[rows]
        if plan.pad:
            images = augment(images, aug_rng, plan.pad, plan.flip)
        yield host_batch(backbone, images[mine], train.labels[rows][mine], device)


def check_folder(folder: Path, settings: dict, rates: dict[Path, float]) -> None:
    """Refuse a fine-tuning ``folder`` that ``settings.json``, any epoch checkpoint or any finished
    rate says was written with other ``settings`` (resuming would continue another run's weights);
    ``rates``: a list's rates by the folder each trains in (whose files record it; {} for one rate)."""
    expected = {folder: settings}
    expected.update({sub: {**settings, "lr": rate} for sub, rate in rates.items()})
    sources = [(folder / "settings.json", settings, as_is, False)]
    sources += [(ckpt / "settings.json", settings, as_is, True) for ckpt in epoch_folders(folder)]
    for sub in sorted(p for p in folder.glob("lr-*") if p.is_dir()):
        want = expected.get(sub, {**settings, "lr": None})
        sources += [(ckpt / "settings.json", want, as_is, True) for ckpt in epoch_folders(sub)]
        sources.append((sub / "rate.json", want, _rate_settings, False))
    check_settings(sources, "a fine-tune", f"delete {folder} to start afresh, or {ELSEWHERE}")


def _rate_settings(doc):
    """The settings a finished rate's ``rate.json`` records (None: none, which no run matches)."""
    return doc.get("settings") if isinstance(doc, dict) else None


def epoch_folders(folder: Path) -> list[Path]:
    """The whole epoch checkpoints in ``folder``, oldest first."""
    return whole_folders(folder, EPOCHS)


def save_epoch(folder: Path, state: dict, net, best_state: dict, opt, settings: dict) -> None:
    """Write ``epoch-NNNN/`` for ``state['epoch']`` and remove the earlier ones."""
    import torch
    from safetensors.torch import save_file

    def fill(tmp: Path) -> None:
        save_file(cpu_state(net), str(tmp / "model.safetensors"))
        save_file(best_state, str(tmp / "best.safetensors"))
        torch.save({**state, "optimizer": opt.state_dict()}, tmp / "train_state.pt")
        (tmp / "settings.json").write_text(json.dumps(settings, indent=1))

    write_whole(folder / f"epoch-{state['epoch']:04d}", fill, EPOCHS)


def finish_rate(folder: Path, best_state: dict, settings: dict, state: dict) -> None:
    """Leave a finished rate of a list in ``folder`` as its best weights (``best.safetensors``) and
    ``rate.json`` (its settings and final training state; written last: the rate is whole)."""
    from safetensors.torch import save_file

    save_file(best_state, str(folder / "best.safetensors.tmp"))
    os.replace(folder / "best.safetensors.tmp", folder / "best.safetensors")
    write_json(folder / "rate.json", {"settings": settings, "state": state})
    for old in epoch_folders(folder):
        shutil.rmtree(old)


def resume(folder: Path, net, opt, log) -> tuple[dict, dict | None]:
    """(training state, best weights) to start from: fresh (None), or the last whole epoch
    checkpoint's, loaded into ``net`` and ``opt``."""
    import torch
    from safetensors.torch import load_file

    fresh = {"epoch": 0, "best_epoch": 0, "best_top1": -1.0, "bad_epochs": 0, "stopped": False, "history": []}
    ckpts = epoch_folders(folder)
    if not ckpts:
        return fresh, None
    last = ckpts[-1]
    try:
        net.load_state_dict(load_file(str(last / "model.safetensors")))
        best_state = load_file(str(last / "best.safetensors"))
        state = torch.load(last / "train_state.pt", map_location="cpu", weights_only=True)
        opt.load_state_dict(state.pop("optimizer"))
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint: say which, and what to do
        raise BenchError(f"cannot resume from {last} ({str(e).splitlines()[0][:120]}); delete it to resume "
                         "from an earlier epoch") from None
    log(f"resuming {folder} after epoch {state['epoch']}")
    return state, best_state


def load_weights(path: Path) -> dict:
    """A finished rate's best weights, or a one-line error naming the damaged file."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged file: say which, and what to do
        raise BenchError(f"cannot read {path} ({str(e).splitlines()[0][:120]}); delete its folder to train that "
                         "rate again") from None
