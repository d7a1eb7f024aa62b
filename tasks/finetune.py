"""Fine-tuning: the whole backbone plus a linear head, trained on train, the epoch chosen on val.

A task that holds the model (``reads = "model"``). The head reads the pooled features of one
layer, the deepest of ``--layers`` (by default the backbone's last: ``layer4`` of a ResNet,
``final`` of an iGPT, the paper's recipe: average-pooled final-norm features). The loss is the
head's cross-entropy plus, on a generative backbone (iGPT), ``gen_weight`` times the next-pixel
cross-entropy of the same forward pass (the paper's joint objective; ``auto`` = 1 there, 0 on
others; ``-o gen_weight=0`` trains on classification only). A random-init timm model trained
this way (``bench run -b resnet18 -t finetune``) is the supervised reference row.

Training: AdamW (betas 0.9, 0.999; weight decay on matrices, kernels and embeddings only), a
linear warm-up over the first ``warmup`` fraction of the steps then cosine decay to 0, gradient
clipping at norm 1, bf16 autocast on a GPU (``precision=bf16`` asks for it on a CPU too; weights,
gradients and the optimizer stay fp32; evaluation runs in fp32). Each epoch is a seeded
permutation of train (the last partial batch dropped); augmentation (``augment=on``) pads each
image by an eighth of its size with black and crops it back at a random offset, and flips it
horizontally where the dataset allows it (``FLIP_DATASETS``, or a dataset class that sets
``horizontal_flip``; not digits or mnist). Val top-1 is measured after every epoch; the best
epoch's weights are restored (``patience`` > 0 stops after that many epochs without a better val
top-1) and scored on test.

The learning rate: ``-o lr=1e-3`` trains once at that peak rate; a list (``-o lr=1e-4,3e-4,1e-3``)
trains once per rate, each from the same initial weights and head on the same data, epochs and
draws, and keeps the rate whose best epoch has the best val top-1 (on a tie, the smaller rate):
only that rate's weights are scored on test, once, so the choice never sees test. A fair
comparison of backbones gives each the same grid.

The artifacts folder beside the results file holds ``settings.json``, one ``epoch-NNNN/``
checkpoint (weights, best weights, optimizer, the curves and the settings that wrote them;
written under a temporary name and renamed when whole), and at the end the fine-tuned weights
where ``--weights`` reads them back: ``finetuned.safetensors`` for a timm model, ``finetuned/``
(a checkpoint folder) for an iGPT, plus the head (``head.safetensors``) and ``finetune.json``.
With a list of rates each rate trains in ``lr-<rate>/`` (its epoch checkpoints, then its best
weights and ``rate.json``); those folders go once the chosen rate's outputs are written. One
process writes a folder at a time (another is refused naming it), and a folder whose
``settings.json``, checkpoints or finished rates were written with other settings is refused
before anything is written, so a resume never continues another run's weights. The same
command after a kill continues from the last epoch (of the rate it was training) to the same
weights and numbers as an uninterrupted run on the CPU. Under ``torchrun`` it trains with
DistributedDataParallel (gloo on CPUs, NCCL on GPUs): each process takes an equal share of every
batch (and the same augmentation), rank 0 writes.

Records: ``top1`` on ``val`` and ``test`` (binomial standard errors) at the chosen ``epoch``, the
chosen epoch (metric ``epoch``), and per-epoch curves marked ``curve: True``: ``train`` ``loss``
(and ``clf_loss``/``gen_loss`` with a generative loss) and ``val`` ``top1``. With a list of rates,
also the chosen rate (``val`` metric ``lr``), every rate's curves (each record with its ``lr``),
and per rate its best val ``top1`` (``curve: True``, its ``lr`` and ``best_epoch``, no ``epoch``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.distributed import all_reduce, barrier, join_processes, launch, leave
from bench.errors import BenchError
from bench.metrics import binomial_se
from tasks.base import Option, RunContext, Task, choice, few, float_range, int_range, show_list

MAX_EPOCHS = 1000
GRAD_CLIP = 1.0
SETTINGS_FORMAT = "igpt-bench/finetune"
SETTINGS_VERSION = 1
# Datasets whose classes survive a horizontal flip. Not digits or mnist (a mirrored 2, 3 or 7 is
# no longer a digit); a plugin dataset says so with a class attribute ``horizontal_flip = True``.
FLIP_DATASETS = frozenset({"cifar10", "cifar100", "stl10", "fashion-mnist"})


def learning_rates(text: str) -> float | list[float]:
    """``-o lr=``: one rate in (0, 1] (a float, as it always parsed, so single-rate run ids stay),
    or a comma-separated list of them (ascending, each once; a list of one rate is that rate)."""
    one = float_range(0.0, 1.0, open_low=True)
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 1:
        if not parts[0]:
            raise ValueError("no rate given; write one rate in (0, 1] or a list, e.g. 1e-4,3e-4,1e-3")
        return one(parts[0])
    if not all(parts):
        raise ValueError("an empty entry in the list; write rates in (0, 1] separated by commas, e.g. 1e-4,3e-4,1e-3")
    rates = []
    for part in parts:
        try:
            rates.append(one(part))
        except ValueError as e:
            raise ValueError(f"{part}: {e}") from None
    rates = sorted(set(rates))
    return rates[0] if len(rates) == 1 else rates


def show_rates(value) -> str:
    """A parsed ``lr`` back as the text that parses to it."""
    return show_list(value) if isinstance(value, (list, tuple)) else str(value)


def rate_list(value) -> list[float]:
    """The rates a parsed ``lr`` trains: a list of one for a single rate."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def rate_folder(folder: Path, rate: float) -> Path:
    """Where one rate of a list trains: ``lr-<rate>/`` (``repr``: distinct rates, distinct names)."""
    return folder / f"lr-{rate!r}"


def _gen_weight(text: str):
    if text.strip() == "auto":
        return "auto"
    return float_range(0.0, 100.0)(text)


class Finetune(Task):
    name = "finetune"
    needs_classes = True
    description = "fine-tune the whole backbone + a linear head (iGPT: + generative loss); val-chosen epoch, top-1"
    reads = "model"
    splits = ("train", "val", "test")
    options = {
        "epochs": Option(10, int_range(1, MAX_EPOCHS), f"training epochs, 1..{MAX_EPOCHS}"),
        "lr": Option(1e-3, few(learning_rates, 20),
                     "peak learning rate of AdamW, in (0, 1], or a comma-separated list of at most 20 to choose from "
                     "on val (e.g. 1e-4,3e-4,1e-3); try 1e-4 for pretrained weights", show=show_rates),
        "batch_size": Option(64, int_range(1, 65536), "images per optimizer step (over all processes)"),
        "weight_decay": Option(0.05, float_range(0.0, 10.0), "AdamW weight decay (matrices and kernels only), >= 0"),
        "warmup": Option(0.1, float_range(0.0, 1.0, open_high=True),
                         "fraction of the steps of linear warm-up before the cosine decay, in [0, 1)"),
        "augment": Option("on", choice("on", "off"),
                          "on: pad-and-random-crop (+ horizontal flip where the dataset allows it); off: none"),
        "patience": Option(0, int_range(0, MAX_EPOCHS),
                           f"stop after this many epochs without a better val top-1, 0..{MAX_EPOCHS} (0: never)"),
        "precision": Option("auto", choice("auto", "fp32", "bf16"),
                            "autocast of the training forward: auto (bf16 on a GPU, fp32 on a CPU), fp32 or bf16"),
        "gen_weight": Option("auto", _gen_weight,
                             "weight of the next-pixel loss beside the classification loss (generative backbones "
                             "such as igpt); auto: 1 there, 0 elsewhere; 0: classification only"),
    }
    columns = {("val", "top1"): "val top-1", ("test", "top1"): "test top-1", ("val", "epoch"): "epoch",
               ("val", "lr"): "chosen lr"}

    def run(self, ctx: RunContext) -> list[dict]:
        plan = make_plan(ctx)  # every refusal happens here, before anything is written
        return Finetuning(ctx, plan).run()


# -- what to train, checked before any work --------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    layer: str
    gen_weight: float
    n_classes: int
    batch: int  # the global batch (all processes)
    steps_per_epoch: int
    flip: bool
    pad: int  # pixels of padding for the random crop (0: no augmentation)
    settings: dict  # what settings.json holds
    rates: tuple[float, ...]  # the peak learning rates to train, ascending (one, or a list to choose from)

    @property
    def grid(self) -> bool:
        """Whether the rate is chosen on val from a list (``-o lr=`` gave several)."""
        return isinstance(self.settings["options"]["lr"], list)


def make_plan(ctx: RunContext) -> Plan:
    from bench.registry import DATASETS

    backbone, opts = ctx.backbone, ctx.options
    module = backbone.module
    if module is None or not any(p.requires_grad for p in module.parameters()):
        raise BenchError(f"backbone {backbone.name!r} has no trainable parameters; fine-tune a timm model "
                         "(e.g. resnet18) or an igpt")
    generative = bool(getattr(backbone, "generative", False)) and hasattr(backbone, "features_and_loss")
    gen_weight = opts["gen_weight"]
    if gen_weight == "auto":
        gen_weight = 1.0 if generative else 0.0
    elif gen_weight > 0 and not generative:
        raise BenchError(f"-o gen_weight={gen_weight:g} needs a generative backbone (e.g. igpt); "
                         f"{backbone.name!r} has no next-pixel loss: drop the option or pass gen_weight=0")
    layer = ctx.layers[-1]
    train = ctx.data["train"]
    world = launch()[1]
    if opts["batch_size"] % world:
        raise BenchError(f"-o batch_size={opts['batch_size']} must be divisible by the {world} processes")
    if len(train) < world:
        raise BenchError(f"train has {len(train)} images, fewer than the {world} processes")
    batch = min(opts["batch_size"], len(train) - len(train) % world)
    labels = np.concatenate([ctx.data[s].labels for s in ("train", "val", "test")])
    dataset = train.info.get("dataset", "")
    dataset_cls = DATASETS.get(dataset) if dataset in DATASETS else None
    flip = bool(getattr(dataset_cls, "horizontal_flip", dataset in FLIP_DATASETS))
    height, width = train.images.shape[1:3]
    pad = max(1, round(min(height, width) / 8)) if opts["augment"] == "on" else 0
    device_kind = "cuda" if str(ctx.device).startswith("cuda") else "cpu"
    precision = opts["precision"] if opts["precision"] != "auto" else ("bf16" if device_kind == "cuda" else "fp32")
    settings = {
        "format": SETTINGS_FORMAT, "version": SETTINGS_VERSION, "backbone": backbone.name,
        "fingerprint": backbone.fingerprint, "dataset": dataset,
        "data": {s: d.digest for s, d in sorted(ctx.data.items())},
        "options": json.loads(json.dumps(opts, sort_keys=True, default=str)), "layer": layer, "seed": ctx.seed,
        "device": device_kind, "precision": precision,
    }
    return Plan(layer=layer, gen_weight=float(gen_weight), n_classes=int(labels.max()) + 1, batch=batch,
                steps_per_epoch=len(train) // batch, flip=flip and pad > 0, pad=pad, settings=settings,
                rates=tuple(rate_list(opts["lr"])))


# -- the data -------------------------------------------------------------------------------------

def epoch_order(n: int, batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The global batches of one epoch: a seeded permutation, the last partial batch dropped."""
    perm = np.random.default_rng([seed, epoch, 0]).permutation(n)
    return [perm[k * batch : (k + 1) * batch] for k in range(n // batch)]


def augment(images: np.ndarray, rng: np.random.Generator, pad: int, flip: bool) -> np.ndarray:
    """Pad (B, H, W, C) uint8 images by ``pad`` black pixels, crop back to H x W at a random
    offset per image, and mirror half of them left-right when ``flip``."""
    count, height, width, _ = images.shape
    dy = rng.integers(0, 2 * pad + 1, count)
    dx = rng.integers(0, 2 * pad + 1, count)
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = dy[:, None] + np.arange(height)
    cols = dx[:, None] + np.arange(width)
    if flip:
        cols = np.where((rng.random(count) < 0.5)[:, None], cols[:, ::-1], cols)
    return padded[np.arange(count)[:, None, None], rows[:, :, None], cols[:, None, :]]


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def prefetched(iterable, depth: int):
    """The items of ``iterable``, produced in order by a background thread up to ``depth`` ahead."""
    import queue
    import threading

    items: queue.Queue = queue.Queue(depth)
    end = object()

    def produce():
        try:
            for item in iterable:
                items.put(item)
            items.put(end)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            items.put(e)

    threading.Thread(target=produce, daemon=True).start()
    while (item := items.get()) is not end:
        if isinstance(item, BaseException):
            raise item
        yield item


# -- the model being trained ----------------------------------------------------------------------

def _net_class():
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


def _cpu_state(module) -> dict:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def _write_json(path: Path, doc) -> None:
    """``doc`` as JSON at ``path``, whole or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def _read_json(path: Path, folder: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BenchError(f"{path} is damaged ({str(e).splitlines()[0][:120]}); delete {folder} to start afresh, "
                         "or choose another --results folder or --tag") from None


def _load_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged file: say which, and what to do
        raise BenchError(f"cannot read {path} ({str(e).splitlines()[0][:120]}); delete its folder to train that "
                         "rate again") from None


class Finetuning:
    """One fine-tuning run: set up (or resume), train epoch by epoch, write the outputs."""

    def __init__(self, ctx: RunContext, plan: Plan):
        self.ctx, self.plan = ctx, plan
        self.opts = ctx.options
        self.rank, self.world = launch()
        self.main = self.rank == 0
        self.device = str(ctx.device)
        self.log = ctx.log if self.main else (lambda msg: None)
        self.predicted: dict[str, np.ndarray] = {}  # split -> the last evaluation's class per row
        self.best_val_predicted = None  # val's classes at the best epoch (None when resumed past it)

    # -- the whole run ------------------------------------------------------------------------
    def run(self) -> list[dict]:
        import contextlib

        from bench.lock import Busy, exclusive, holder
        from bench.runtime import autocast_for

        ctx, plan = self.ctx, self.plan
        folder = ctx.artifacts  # created only once the settings are known to fit
        if folder is None:
            ctx.artifacts_dir()  # raises the runner's message
        # One process writes a folder at a time (rank 0 of a torchrun launch holds it for all).
        guard = exclusive(folder, "fine-tuning into", wait=False) if self.main else contextlib.nullcontext()
        try:
            guard.__enter__()
        except Busy:
            raise BenchError(f"{folder} is being fine-tuned by {holder(folder)}; wait for it to finish (then the "
                             "same command continues it) or choose another --results folder or --tag") from None
        try:
            self._check_folder(folder)
            _, _, self.device, started_group = join_processes(self.device)
            ctx.backbone.to(self.device)
            backbone = ctx.backbone
            self.original = _cpu_state(backbone.module)
            self.autocast = autocast_for(plan.settings["precision"], self.device)
            try:
                if self.main:
                    ctx.artifacts_dir()
                    _write_json(folder / "settings.json", plan.settings)
                barrier(self.world)
                if not plan.grid:
                    state = self._fit(plan.rates[0], folder)
                    return self._finish(folder, [(plan.rates[0], state)], 0)
                fits = [(rate, self._fit_rate(rate, rate_folder(folder, rate))) for rate in plan.rates]
                chosen = 0
                for i, (_, state) in enumerate(fits):  # ascending rates: a tie keeps the smaller
                    if state["best_top1"] > fits[chosen][1]["best_top1"]:
                        chosen = i
                rate, state = fits[chosen]
                self.log(f"chose lr {rate:g}: val top-1 {state['best_top1']:.2f}% at epoch {state['best_epoch']} ("
                         + ", ".join(f"{r:g}: {s['best_top1']:.2f}%" for r, s in fits) + ")")
                if not hasattr(self, "net"):  # every rate had finished before this process started
                    self._make_net(rate)
                self.best_state = _load_weights(rate_folder(folder, rate) / "best.safetensors")
                self.best_val_predicted = None  # scored again with the chosen weights
                return self._finish(folder, fits, chosen)
            finally:
                backbone.module.load_state_dict(self.original)  # the runner's backbone is left as it came
                backbone.module.eval()
                leave(started_group)
        finally:
            guard.__exit__(None, None, None)

    def _make_net(self, rate: float) -> None:
        """The network and optimizer of one rate, from the backbone's weights as the run got them
        and the head's seeded initialisation: every rate starts from the same point."""
        import torch

        self.ctx.backbone.module.load_state_dict(self.original)
        torch.manual_seed(self.ctx.seed)
        plan = self.plan
        self.rate = rate
        self.net = _net_class()(self.ctx.backbone, plan.layer, plan.n_classes, plan.gen_weight).to(self.device)
        self.opt = self._optimizer()

    def _fit(self, rate: float, folder: Path) -> dict:
        """Train at peak ``rate`` in ``folder`` (resuming from its last epoch checkpoint): the
        training state, with the best epoch's weights in ``self.best_state``."""
        import torch

        self._make_net(rate)
        state = self._resume(folder)
        self.train_net = self.net
        if self.world > 1:
            self.train_net = torch.nn.parallel.DistributedDataParallel(
                self.net, find_unused_parameters=self._has_unused_parameters())
        return self._train(folder, state)

    def _fit_rate(self, rate: float, folder: Path) -> dict:
        """One rate of a list: trained (or resumed) in its own ``folder``, which then keeps only its
        best weights (``best.safetensors``) and ``rate.json`` (its state); a finished rate is read back."""
        done = folder / "rate.json"
        if done.is_file() and (folder / "best.safetensors").is_file():
            state = json.loads(done.read_text())["state"]
            self.log(f"lr {rate:g}: finished before (val top-1 {state['best_top1']:.2f}% at epoch "
                     f"{state['best_epoch']})")
            return state
        if self.main:
            folder.mkdir(exist_ok=True)
        barrier(self.world)
        state = self._fit(rate, folder)
        if self.main:
            from safetensors.torch import save_file

            save_file(self.best_state, str(folder / "best.safetensors.tmp"))
            os.replace(folder / "best.safetensors.tmp", folder / "best.safetensors")
            _write_json(done, {"settings": self._fit_settings(), "state": state})  # last: the rate is whole
            for old in self._epoch_folders(folder):
                shutil.rmtree(old)
        barrier(self.world)
        return state

    def _fit_settings(self) -> dict:
        """The settings a checkpoint of the rate being trained records: the run's, plus the rate
        where it is one of a list."""
        return {**self.plan.settings, "lr": self.rate} if self.plan.grid else self.plan.settings

    def _has_unused_parameters(self) -> bool:
        """Whether some trainable parameter gets no gradient (a timm classifier, blocks past the
        head's layer, iGPT's color head without the generative loss): DistributedDataParallel must
        be told, and warns every run when told needlessly. Probed by one backward pass in eval
        mode on two train images (no batch-norm statistics move, no random draws)."""
        train = self.ctx.data["train"]
        x, y = self._batch(train.images[:2], train.labels[:2])
        self.net.eval()
        loss, _, _ = self.net(x, y)
        loss.backward()
        unused = any(p.grad is None for p in self.net.parameters() if p.requires_grad)
        self.net.zero_grad(set_to_none=True)
        return unused

    def _check_folder(self, folder: Path) -> None:
        """Refuse a folder that ``settings.json``, any epoch checkpoint or any finished rate says was
        written with other settings (resuming would continue another run's weights under this
        run's name); nothing is written before this passes."""
        new = self.plan.settings
        path = folder / "settings.json"
        if path.is_file():
            saved = _read_json(path, folder)
            if saved != new:
                diff = [k for k in new if not isinstance(saved, dict) or saved.get(k) != new[k]] or ["format"]
                raise BenchError(f"{folder} holds a fine-tune with other settings ({', '.join(diff)}); delete it to "
                                 "start afresh, or choose another --results folder or --tag")
        expected = {folder: new}
        if self.plan.grid:
            expected.update({rate_folder(folder, r): {**new, "lr": r} for r in self.plan.rates})
        sources = [(ckpt / "settings.json", folder) for ckpt in self._epoch_folders(folder)]
        for sub in sorted(p for p in folder.glob("lr-*") if p.is_dir()):
            sources += [(ckpt / "settings.json", sub) for ckpt in self._epoch_folders(sub)]
            if (sub / "rate.json").exists():
                sources.append((sub / "rate.json", sub))
        for source, owner in sources:
            if not source.is_file():
                raise BenchError(f"{source.parent} holds no settings (written by an older igpt-bench, or damaged); "
                                 f"delete it to start that part afresh, or choose another --results folder or --tag")
            saved = _read_json(source, folder)
            if source.name == "rate.json":
                saved = saved.get("settings") if isinstance(saved, dict) else None
            want = expected.get(owner, {**new, "lr": None})
            if saved != want:
                diff = [k for k in want if not isinstance(saved, dict) or saved.get(k) != want[k]] or ["format"]
                raise BenchError(f"{source} was written by a fine-tune with other settings ({', '.join(diff)}); "
                                 f"delete {folder} to start afresh, or choose another --results folder or --tag")

    def _optimizer(self):
        import torch

        params = [(n, p) for n, p in self.net.named_parameters() if p.requires_grad]
        decay = [p for n, p in params if p.dim() >= 2]
        no_decay = [p for n, p in params if p.dim() < 2]
        return torch.optim.AdamW([{"params": decay, "weight_decay": self.opts["weight_decay"]},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=self.rate)

    # -- checkpoints --------------------------------------------------------------------------
    @staticmethod
    def _epoch_folders(folder: Path) -> list[Path]:
        return sorted(p for p in folder.glob("epoch-*") if p.is_dir() and not p.name.endswith(".tmp"))

    def _resume(self, folder: Path) -> dict:
        """The training state to start from: fresh, or the last whole epoch checkpoint's."""
        import torch
        from safetensors.torch import load_file

        fresh = {"epoch": 0, "best_epoch": 0, "best_top1": -1.0, "bad_epochs": 0, "stopped": False,
                 "history": []}
        ckpts = self._epoch_folders(folder)
        self.best_state = None
        if not ckpts:
            return fresh
        last = ckpts[-1]
        try:
            self.net.load_state_dict(load_file(str(last / "model.safetensors")))
            self.best_state = load_file(str(last / "best.safetensors"))
            state = torch.load(last / "train_state.pt", map_location="cpu", weights_only=True)
            self.opt.load_state_dict(state.pop("optimizer"))
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint: say which, and what to do
            raise BenchError(f"cannot resume from {last} ({str(e).splitlines()[0][:120]}); delete it to resume "
                             "from an earlier epoch") from None
        self.log(f"resuming {folder} after epoch {state['epoch']}")
        return state

    def _save_epoch(self, folder: Path, state: dict) -> None:
        """``epoch-NNNN/``: weights, best weights, optimizer, curves and settings; whole or absent."""
        import torch
        from safetensors.torch import save_file

        final = folder / f"epoch-{state['epoch']:04d}"
        tmp = folder / (final.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file(_cpu_state(self.net), str(tmp / "model.safetensors"))
        save_file(self.best_state, str(tmp / "best.safetensors"))
        torch.save({**state, "optimizer": self.opt.state_dict()}, tmp / "train_state.pt")
        (tmp / "settings.json").write_text(json.dumps(self._fit_settings(), indent=1))
        os.replace(tmp, final)
        for old in self._epoch_folders(folder):
            if old != final:
                shutil.rmtree(old)

    # -- training -----------------------------------------------------------------------------
    def _host_batch(self, images: np.ndarray, labels: np.ndarray):
        """uint8 images and labels -> model input and label tensors in (pinned, for a GPU) host memory."""
        import torch

        x = self.ctx.backbone.preprocess(images)
        y = torch.as_tensor(labels, dtype=torch.long)
        if self.device.startswith("cuda"):
            return x.pin_memory(), y.pin_memory()
        return x, y

    def _to_device(self, batch):
        return tuple(t.to(self.device, non_blocking=True) for t in batch)

    def _batch(self, images: np.ndarray, labels: np.ndarray):
        return self._to_device(self._host_batch(images, labels))

    def _train_batches(self, epoch: int):
        """This process's share of every batch of ``epoch``, on the host; augmentation is drawn
        for the global batch, so every process sees the same images as one process would."""
        train, plan, seed = self.ctx.data["train"], self.plan, self.ctx.seed
        share = plan.batch // self.world
        mine = slice(self.rank * share, (self.rank + 1) * share)
        aug_rng = np.random.default_rng([seed, epoch, 1])
        for rows in epoch_order(len(train), plan.batch, seed, epoch):
            images = train.images[rows]
            if plan.pad:
                images = augment(images, aug_rng, plan.pad, plan.flip)
            yield self._host_batch(images[mine], train.labels[rows][mine])

    def _evaluate(self, split: str) -> tuple[int, int]:
        """(correct, n) of the head on ``split``, in fp32; each process scores a share. The class
        predicted for every row is left in ``self.predicted[split]`` (for ``keep_predictions``)."""
        import torch

        data = self.ctx.data[split]
        rows = np.arange(self.rank, len(data), self.world)
        step = 2 * self.plan.batch
        predicted = torch.zeros(len(data), dtype=torch.long, device=self.device)
        self.net.eval()
        with torch.inference_mode():
            for s in range(0, len(rows), step):
                part = rows[s : s + step]
                x, _ = self._batch(data.images[part], data.labels[part])
                predicted[torch.as_tensor(part, device=self.device)] = self.net.logits(x).argmax(1)
        all_reduce(predicted, self.world)  # each row is set by one process and 0 in the others: the sum is the whole
        self.predicted[split] = predicted.cpu().numpy()
        return int((self.predicted[split] == data.labels).sum()), len(data)

    def _train(self, folder: Path, state: dict) -> dict:
        """Train from ``state`` to the last epoch (or an early stop), saving each epoch in ``folder``;
        the final training state."""
        import torch

        ctx, plan, opts = self.ctx, self.plan, self.opts
        epochs, per_epoch = opts["epochs"], plan.steps_per_epoch
        total = epochs * per_epoch
        warmup_steps = round(opts["warmup"] * total)
        name = f"finetune {ctx.backbone.name}" + (f" · lr {self.rate:g}" if plan.grid else "")
        if state["epoch"] == 0:
            self.log(f"fine-tuning {ctx.backbone.name} on {plan.layer} features: {epochs} epochs x {per_epoch} "
                     f"steps of {plan.batch}, lr {self.rate:g}, gen_weight {plan.gen_weight:g}, augment "
                     f"{'crop' + (' + flip' if plan.flip else '') if plan.pad else 'off'}, "
                     f"{plan.settings['precision']} on {self.device}")
        seen, seconds = 0, 0.0
        with ctx.progress(name, total) as bar:
            bar.advance(state["epoch"] * per_epoch)
            for epoch in range(state["epoch"] + 1, epochs + 1):
                if state["stopped"]:
                    break
                t0 = time.time()
                # Every random draw of an epoch comes from (seed, epoch): a resumed run repeats it.
                torch.manual_seed(int(np.random.SeedSequence([ctx.seed, epoch, self.rank]).generate_state(1)[0]))
                sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, clf, gen
                self.net.train()
                batches = self._train_batches(epoch)
                if self.device.startswith("cuda"):  # prepare the next batches on the CPU while the GPU works
                    batches = prefetched(batches, depth=3)
                for k, batch in enumerate(batches):
                    x, y = self._to_device(batch)
                    for group in self.opt.param_groups:
                        group["lr"] = self.rate * lr_factor((epoch - 1) * per_epoch + k, warmup_steps, total)
                    with self.autocast:
                        loss, clf, gen = self.train_net(x, y)
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.net.parameters(), GRAD_CLIP)
                    self.opt.step()
                    sums += torch.stack([loss.detach().double(), clf.double(),
                                         gen.double() if gen is not None else loss.new_zeros((), dtype=torch.float64)])
                    bar.advance(1)
                    if k % 10 == 9 or k == per_epoch - 1:
                        bar.describe(f"{name} · epoch {epoch}/{epochs} · loss {sums[0].item() / (k + 1):.4f}"
                                     + (f" · val {state['history'][-1]['val_top1']:.1f}%" if state["history"] else ""))
                all_reduce(sums, self.world)
                sums = (sums / (per_epoch * self.world)).tolist()
                train_s = time.time() - t0
                seconds += train_s
                seen += per_epoch * plan.batch
                correct, n = self._evaluate("val")
                top1 = 100.0 * correct / n
                state["history"].append({"epoch": epoch, "loss": sums[0], "clf_loss": sums[1], "gen_loss": sums[2],
                                         "val_top1": top1, "val_correct": correct, "val_n": n})
                state["epoch"] = epoch
                if top1 > state["best_top1"]:
                    state.update(best_epoch=epoch, best_top1=top1, bad_epochs=0)
                    self.best_state = _cpu_state(self.net)
                    self.best_val_predicted = self.predicted.get("val")
                else:
                    state["bad_epochs"] += 1
                    state["stopped"] = bool(opts["patience"]) and state["bad_epochs"] >= opts["patience"]
                self.log(f"epoch {epoch}: train loss {sums[0]:.4f}, val top-1 {top1:.2f}%, "
                         f"{per_epoch * plan.batch / max(train_s, 1e-9):.0f} images/s"
                         + (" (early stop)" if state["stopped"] else ""))
                bar.describe(f"{name} · epoch {epoch}/{epochs} · loss {sums[0]:.4f} · val {top1:.1f}%")
                if self.main:
                    self._save_epoch(folder, state)
                barrier(self.world)
                if state["stopped"]:
                    bar.advance((epochs - epoch) * per_epoch)
        if seen:
            self.log(f"trained on {seen} images in {seconds:.1f} s: {seen / max(seconds, 1e-9):.0f} images/s "
                     "(the val passes not counted)")
        return state

    # -- outputs ------------------------------------------------------------------------------
    def _keep_predictions(self) -> None:
        """Hand the best weights' val and test classes to the runner; val is scored again only
        when this process resumed after the best epoch (its classes were not kept)."""
        test = self.predicted.get("test")
        if test is None:
            return
        val = self.best_val_predicted
        if val is None:
            self._evaluate("val")
            val = self.predicted.get("val")
        for split, predicted in (("val", val), ("test", test)):
            if predicted is not None:
                self.ctx.keep_predictions(split, self.plan.layer, predicted)

    def _finish(self, folder: Path, fits: list[tuple[float, dict]], chosen: int) -> list[dict]:
        """Score the chosen rate's best weights (``self.best_state``) on test, write the outputs,
        and return the records; ``fits`` is every rate's (rate, final training state)."""
        from safetensors.torch import save_file

        ctx, plan = self.ctx, self.plan
        rate, state = fits[chosen]
        self.net.load_state_dict(self.best_state)
        best = state["best_epoch"]
        chosen_epoch = state["history"][best - 1]
        val_correct, val_n = chosen_epoch["val_correct"], chosen_epoch["val_n"]
        test_correct, test_n = self._evaluate("test")
        self._keep_predictions()
        if self.main:
            weights = ctx.backbone.save_weights(folder / "finetuned")
            head = {k: v.detach().cpu().contiguous() for k, v in self.net.head.state_dict().items()}
            save_file(head, str(folder / "head.safetensors.tmp"))
            os.replace(folder / "head.safetensors.tmp", folder / "head.safetensors")
            summary = {"layer": plan.layer, "epoch": best, "val_top1": 100.0 * val_correct / val_n,
                       "test_top1": 100.0 * test_correct / test_n, "weights": str(weights),
                       "head": str(folder / "head.safetensors"), "history": state["history"]}
            if plan.grid:
                summary["lr"] = rate
                summary["rates"] = [{"lr": r, "epoch": s["best_epoch"], "val_top1": s["best_top1"],
                                     "history": s["history"]} for r, s in fits]
            _write_json(folder / "finetune.json", summary)
            for old in self._epoch_folders(folder):
                shutil.rmtree(old)
            if plan.grid:  # every rate's curves are in finetune.json and the records; the chosen weights above
                for r, _ in fits:
                    shutil.rmtree(rate_folder(folder, r), ignore_errors=True)
            size = getattr(ctx.backbone, "image_size", None)
            self.log(f"fine-tuned weights (epoch {best}" + (f", lr {rate:g}" if plan.grid else "") + f"): {weights}; "
                     f"probe them with -b {ctx.backbone.name} --weights {weights}"
                     + (f" --image-size {size}" if size else ""))
        barrier(self.world)
        layer = plan.layer
        records = [
            {"layer": layer, "split": "val", "metric": "top1", "value": 100.0 * val_correct / val_n,
             "stderr": binomial_se(val_correct, val_n), "n": val_n, "epoch": best},
            {"layer": layer, "split": "test", "metric": "top1", "value": 100.0 * test_correct / test_n,
             "stderr": binomial_se(test_correct, test_n), "n": test_n, "epoch": best},
            {"layer": layer, "split": "val", "metric": "epoch", "value": best, "stderr": None, "n": val_n},
        ]
        if plan.grid:
            records.append({"layer": layer, "split": "val", "metric": "lr", "value": rate, "stderr": None,
                            "n": val_n})
        n_train = plan.steps_per_epoch * plan.batch
        for r, s in fits:
            tag = {"lr": r} if plan.grid else {}
            if plan.grid:  # this rate's best epoch by val: what the choice compared
                top = s["history"][s["best_epoch"] - 1]
                records.append({"layer": layer, "split": "val", "metric": "top1", "value": top["val_top1"],
                                "stderr": binomial_se(top["val_correct"], top["val_n"]), "n": top["val_n"],
                                "best_epoch": s["best_epoch"], "curve": True, **tag})
            for h in s["history"]:
                records.append({"layer": layer, "split": "train", "metric": "loss", "value": h["loss"],
                                "stderr": None, "n": n_train, "epoch": h["epoch"], "curve": True, **tag})
                if plan.gen_weight > 0:
                    for metric in ("clf_loss", "gen_loss"):
                        records.append({"layer": layer, "split": "train", "metric": metric, "value": h[metric],
                                        "stderr": None, "n": n_train, "epoch": h["epoch"], "curve": True, **tag})
                records.append({"layer": layer, "split": "val", "metric": "top1", "value": h["val_top1"],
                                "stderr": binomial_se(h["val_correct"], h["val_n"]), "n": h["val_n"],
                                "epoch": h["epoch"], "curve": True, **tag})
        return records
