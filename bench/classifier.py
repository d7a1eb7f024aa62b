"""The reference classifier: a small CNN the harness trains on a dataset's train split, the offline
feature space for sample metrics (Fréchet distance, KID, precision/recall) where no Inception
weights are at hand.

It is stored once under the cache, keyed by its fingerprint (recipe, dataset, the train split's
data digest, seed), and reused by every run that needs it; records name that fingerprint, so two
sample-quality numbers are comparable exactly when they name the same one. Written by hand because
no library ships a classifier for an arbitrary small dataset: four conv-BN-ReLU-maxpool stages
(16-32-64-128 channels) on images resized to 32x32, mean-pooled to a 128-d feature.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from bench.errors import BenchError

RECIPE = {"version": 1, "size": 32, "widths": [16, 32, 64, 128], "epochs": 3, "min_steps": 300, "batch_size": 128, "lr": 3e-3,
          "weight_decay": 0.05, "optimizer": "adamw", "schedule": "cosine"}


def _network(channels: int, classes: int):
    import torch.nn as nn

    layers, c = [], channels
    for w in RECIPE["widths"]:
        layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        c = w
    body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return nn.ModuleDict({"body": body, "head": nn.Linear(c, classes)})


def to_input(images):
    """uint8 images, numpy (N, H, W, C) or torch (N, C, H, W), -> float (N, C, 32, 32) in [-1, 1]."""
    import torch
    import torch.nn.functional as F

    if not isinstance(images, (np.ndarray, torch.Tensor)):
        images = np.asarray(images)  # lazily decoded images (an imagefolder)
    x = torch.as_tensor(images)
    if isinstance(images, np.ndarray):
        x = x.permute(0, 3, 1, 2)
    x = x.float()
    size = RECIPE["size"]
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x / 127.5 - 1.0


class Classifier:
    """A trained reference classifier: ``features(images)`` (128-d) and its metadata."""

    def __init__(self, net, meta: dict, folder: Path):
        self.net, self.meta, self.folder = net.eval(), meta, folder

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    def features(self, x):
        return self.net["body"](to_input(x))

    def top1(self, split) -> float:
        """Top-1 (%) on a SplitData: how well this feature space separates the classes."""
        import torch

        with torch.inference_mode():
            pred = torch.cat([self.net["head"](self.features(split.images[s : s + 1024])).argmax(1)
                              for s in range(0, len(split), 1024)])
        return 100.0 * float((pred.numpy() == split.labels).mean())

    @classmethod
    def load(cls, folder: str | Path) -> Classifier:
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            meta = json.loads((folder / "classifier.json").read_text())
            net = _network(meta["channels"], meta["classes"])
            net.load_state_dict(load_file(str(folder / "model.safetensors")))
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            raise BenchError(f"reference classifier {folder} is damaged ({str(e).splitlines()[0][:100]}); "
                             "delete that folder and run again to retrain it") from None
        return cls(net, meta, folder)


def fingerprint(dataset: str, train_digest: str, channels: int, classes: int, seed: int) -> str:
    blob = json.dumps({"recipe": RECIPE, "dataset": dataset, "train": train_digest, "channels": channels,
                       "classes": classes, "seed": seed}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def reference_classifier(dataset: str, train, *, seed: int = 0, cache_dir: str | Path | None = None,
                         device: str = "cpu", progress=None, log=lambda msg: None) -> Classifier:
    """The classifier of ``dataset``'s ``train`` split (a ``SplitData``): loaded from the cache when
    one with this fingerprint exists, else trained (``RECIPE``) and stored. ``progress(description,
    total)`` makes a progress bar (``RunContext.progress``)."""
    from bench.store import default_cache_dir

    classes = int(train.labels.max()) + 1
    key = fingerprint(dataset, train.digest, int(train.images.shape[3]), classes, seed)
    folder = Path(cache_dir or default_cache_dir()) / "classifiers" / f"{dataset}-{key}"
    if (folder / "classifier.json").is_file():
        log(f"reference classifier reused: {folder}")
        return Classifier.load(folder)
    net, meta = _train(train, classes, seed, device, progress)
    meta.update(fingerprint=key, dataset=dataset, train_digest=train.digest)
    _store(folder, net, meta)
    log(f"reference classifier trained: {folder}")
    return Classifier(net, meta, folder)


def _train(train, classes: int, seed: int, device: str, progress):
    from contextlib import nullcontext

    import torch
    import torch.nn.functional as F

    from bench.training import adamw

    torch.manual_seed(seed)
    net = _network(int(train.images.shape[3]), classes).to(device)
    x_all = to_input(train.images)
    y_all = torch.from_numpy(train.labels).long()
    n, bs = len(y_all), RECIPE["batch_size"]
    per_epoch = -(-n // bs)
    epochs = max(RECIPE["epochs"], -(-RECIPE["min_steps"] // per_epoch))  # small datasets: more passes
    steps = epochs * per_epoch
    opt = adamw(net, RECIPE["lr"], RECIPE["weight_decay"])
    # OneCycleLR, not the shared warm-up/cosine factor: the stored classifiers and every sample-quality
    # number made with them come from this schedule.
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=RECIPE["lr"], total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    with (progress or (lambda d, t: nullcontext()))("training the reference classifier", steps) as bar:
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            for s in range(0, n, bs):
                idx = order[s : s + bs]
                loss = F.cross_entropy(net["head"](net["body"](x_all[idx].to(device))), y_all[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if bar is not None:
                    bar.advance(1)
    net.eval().cpu()
    meta = {"format": "igpt-bench/reference-classifier", "recipe": RECIPE, "channels": int(train.images.shape[3]),
            "classes": classes, "seed": seed, "train_rows": n, "epochs": epochs, "final_train_loss": round(float(loss.item()), 5)}
    return net, meta


def _store(folder: Path, net, meta: dict) -> None:
    """Written under a temporary name and renamed, so a folder that exists is whole; when another
    process stored the same classifier first, its copy is kept."""
    from safetensors.torch import save_file

    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp / "model.safetensors"))
    (tmp / "classifier.json").write_text(json.dumps(meta, indent=1))
    try:
        os.rename(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "classifier.json").is_file():
            raise
