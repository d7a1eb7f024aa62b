"""Fine-tuning: the whole backbone plus a linear head, trained on train, the epoch chosen on val.

A task that holds the model (``reads = "model"``); its protocol is ``docs/tasks/finetune.md``. The
head reads the pooled features of the deepest of ``--layers``; the loss is the head's
cross-entropy plus, on a generative backbone (iGPT), ``gen_weight`` times the next-pixel
cross-entropy of the same forward pass (the paper's joint objective). AdamW (betas 0.9, 0.999) with
a linear warm-up over the ``warmup`` fraction of the steps then cosine decay to 0, gradients
clipped at norm 1; each epoch a seeded permutation of train, augmented with pad-and-crop (and a
horizontal flip where the dataset allows it: ``FLIP_DATASETS`` or a dataset class's
``horizontal_flip``). The epoch with the best val top-1 is scored on test. ``-o lr=`` takes one
peak rate, or a list: each rate trains from the same start on the same draws and the one with the
best val top-1 (a tie: the smaller) is the only one scored on test, so the choice never sees test.

The artifacts folder beside the results file holds ``settings.json``, one epoch checkpoint
(``tasks/finetune_net.py``; per rate of a list in ``lr-<rate>/``, which then keeps the rate's best
weights and ``rate.json`` until the chosen rate's outputs are written), and at the end the
fine-tuned weights where ``--weights`` reads them back (``finetuned.safetensors`` for a timm model,
``finetuned/`` for an iGPT), the head (``head.safetensors``) and ``finetune.json``. One process
writes a folder at a time, and a folder written with other settings is refused before anything is
written; the same command after a kill continues from the last epoch to the same weights and
numbers as an uninterrupted run on the CPU. Under ``torchrun`` every process takes an equal share of
every batch (the same augmentation) and rank 0 writes. Records: ``tasks/finetune_records.py``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.distributed import all_reduce, barrier, join_processes, launch, leave
from bench.errors import BenchError
from bench.training import adamw, cpu_state, ddp, lr_factor, prefetched, write_json, writer_lock
from tasks.base import Option, RunContext, Task, choice, few, float_range, int_range, show_list
from tasks.finetune_net import (
    ELSEWHERE,
    check_folder,
    finish_rate,
    has_unused_parameters,
    host_batch,
    load_weights,
    net_class,
    resume,
    save_epoch,
    train_batches,
)
from tasks.finetune_outputs import finetune_records, write_outputs

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
        from bench.runtime import autocast_for

        ctx, plan = self.ctx, self.plan
        folder = ctx.artifacts  # created only once the settings are known to fit
        if folder is None:
            ctx.artifacts_dir()  # raises the runner's message
        with writer_lock(folder, folder, "fine-tuning into", "fine-tuned", ELSEWHERE, main=self.main):
            check_folder(folder, plan.settings, {rate_folder(folder, r): r for r in plan.rates} if plan.grid else {})
            _, _, self.device, started_group = join_processes(self.device)
            ctx.backbone.to(self.device)
            backbone = ctx.backbone
            self.original = cpu_state(backbone.module)
            self.autocast = autocast_for(plan.settings["precision"], self.device)
            try:
                if self.main:
                    ctx.artifacts_dir()
                    write_json(folder / "settings.json", plan.settings)
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
                self.best_state = load_weights(rate_folder(folder, rate) / "best.safetensors")
                self.best_val_predicted = None  # scored again with the chosen weights
                return self._finish(folder, fits, chosen)
            finally:
                backbone.module.load_state_dict(self.original)  # the runner's backbone is left as it came
                backbone.module.eval()
                leave(started_group)

    def _make_net(self, rate: float) -> None:
        """The network and optimizer of one rate, from the backbone's weights as the run got them
        and the head's seeded initialisation: every rate starts from the same point."""
        import torch

        self.ctx.backbone.module.load_state_dict(self.original)
        torch.manual_seed(self.ctx.seed)
        plan = self.plan
        self.rate = rate
        self.net = net_class()(self.ctx.backbone, plan.layer, plan.n_classes, plan.gen_weight).to(self.device)
        self.opt = adamw(self.net, rate, self.opts["weight_decay"])

    def _fit(self, rate: float, folder: Path) -> dict:
        """Train at peak ``rate`` in ``folder`` (resuming from its last epoch checkpoint): the
        training state, with the best epoch's weights in ``self.best_state``."""
        self._make_net(rate)
        state, self.best_state = resume(folder, self.net, self.opt, self.log)
        unused = False
        if self.world > 1:
            train = self.ctx.data["train"]
            unused = has_unused_parameters(self.net, *self._batch(train.images[:2], train.labels[:2]))
        self.train_net = ddp(self.net, self.world, unused)
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
            finish_rate(folder, self.best_state, self._fit_settings(), state)
        barrier(self.world)
        return state

    def _fit_settings(self) -> dict:
        """The settings a checkpoint of the rate being trained records: the run's, plus the rate
        where it is one of a list."""
        return {**self.plan.settings, "lr": self.rate} if self.plan.grid else self.plan.settings

    # -- training -----------------------------------------------------------------------------
    def _to_device(self, batch):
        return tuple(t.to(self.device, non_blocking=True) for t in batch)

    def _batch(self, images: np.ndarray, labels: np.ndarray):
        return self._to_device(host_batch(self.ctx.backbone, images, labels, self.device))

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
                batches = train_batches(ctx.data["train"], ctx.backbone, plan, ctx.seed, epoch, self.rank,
                                        self.world, self.device)
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
                    self.best_state = cpu_state(self.net)
                    self.best_val_predicted = self.predicted.get("val")
                else:
                    state["bad_epochs"] += 1
                    state["stopped"] = bool(opts["patience"]) and state["bad_epochs"] >= opts["patience"]
                self.log(f"epoch {epoch}: train loss {sums[0]:.4f}, val top-1 {top1:.2f}%, "
                         f"{per_epoch * plan.batch / max(train_s, 1e-9):.0f} images/s"
                         + (" (early stop)" if state["stopped"] else ""))
                bar.describe(f"{name} · epoch {epoch}/{epochs} · loss {sums[0]:.4f} · val {top1:.1f}%")
                if self.main:
                    save_epoch(folder, state, self.net, self.best_state, self.opt, self._fit_settings())
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
        plan = self.plan
        self.net.load_state_dict(self.best_state)
        test = self._evaluate("test")
        self._keep_predictions()
        if self.main:
            write_outputs(folder, self.ctx.backbone, self.net, plan.layer, fits, chosen, test,
                          [rate_folder(folder, r) for r, _ in fits] if plan.grid else [], self.log)
        barrier(self.world)
        return finetune_records(plan.layer, fits, chosen, test, plan.grid, plan.gen_weight,
                                plan.steps_per_epoch * plan.batch)
