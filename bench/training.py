"""What the three training loops share: pretraining (``backbones/igpt/train.py``), fine-tuning
(``tasks/finetune.py``) and the reference classifier (``bench/classifier.py``) each keep only
their step and use these for the rest.

- ``adamw``: AdamW with weight decay on matrices, kernels and embeddings only (tensors of two or
  more dimensions), none on biases and norm weights;
- ``lr_factor``: linear warm-up, then cosine decay to a floor;
- ``writer_lock`` and ``check_settings``: one process writes a run folder at a time, and a folder
  written with other settings is refused before anything is written, so a resume never continues
  another run's weights;
- resume helpers: whole-or-absent checkpoint folders, optimizer state moved to the model's
  device, and a module's state copied to the CPU;
- ``ddp``: the DistributedDataParallel wrapper under ``torchrun`` (the module itself alone);
- ``prefetched``: batches prepared on the CPU by a background thread while a GPU works.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path

from bench.errors import BenchError
from bench.files import atomic_write_bytes


def adamw(module, lr: float, weight_decay: float, betas=(0.9, 0.999), fused: bool | None = None):
    """AdamW over ``module``'s trainable parameters in two groups: ``weight_decay`` on those with
    two or more dimensions, 0 on the rest (decaying a bias or a norm's gain only shrinks it)."""
    import torch

    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas, fused=fused)


def lr_factor(step: int, warmup: int, total: int, floor: float = 0.0) -> float:
    """The learning rate at ``step`` (from 0) as a fraction of the peak: linear warm-up to 1 over
    ``warmup`` steps, then cosine decay to ``floor`` at step ``total``, held there after."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@contextlib.contextmanager
def writer_lock(path: Path, folder: Path, doing: str, done_by: str, elsewhere: str, log=lambda msg: None,
                main: bool = True):
    """Hold ``path``'s lock while the block writes ``folder`` (only ``main``, rank 0 of a torchrun
    launch, takes it, for all); another holder is refused at once: '``folder`` is being
    ``done_by`` by WHO; wait ... or ``elsewhere``'."""
    from bench.lock import Busy, exclusive, holder

    with contextlib.ExitStack() as stack:
        if main:
            try:
                stack.enter_context(exclusive(path, doing, log, wait=False))
            except Busy:
                raise BenchError(f"{folder} is being {done_by} by {holder(path)}; wait for it to finish (then the "
                                 f"same command continues it) or {elsewhere}") from None
        yield


SKIP = object()  # what a ``read`` of ``check_settings`` returns for a document with no settings to compare


def check_settings(sources, writer: str, advice: str) -> None:
    """Refuse a run folder one of whose files says it was written with other settings.

    ``sources``: (path, wanted settings, read, required) each; ``read(doc)`` gives the settings
    the parsed JSON document records, or ``SKIP`` for a document with none to compare. A path that is
    absent is passed over, unless ``required`` (then its folder 'holds no settings'). The errors
    name the file and the differing settings, then ``advice`` (what to do)."""
    for path, want, read, required in sources:
        path = Path(path)
        if not path.is_file():
            if required:
                raise BenchError(f"{path.parent} holds no settings (written by an older igpt-bench, or damaged); "
                                 f"{advice}")
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise BenchError(f"{path} is damaged ({str(e).splitlines()[0][:120]}); {advice}") from None
        saved = read(doc)
        if saved is SKIP or saved == want:
            continue
        diff = [k for k in want if not isinstance(saved, dict) or saved.get(k) != want[k]] or ["format"]
        raise BenchError(f"{path} was written by {writer} with other settings ({', '.join(diff)}); {advice}")


def as_is(doc):
    """The ``read`` of ``check_settings`` for a file that is the settings themselves."""
    return doc


def whole_folders(folder: Path, pattern: str) -> list[Path]:
    """The checkpoint folders in ``folder`` matching ``pattern``, in name order, without any one
    still being written (``*.tmp``)."""
    return sorted(p for p in Path(folder).glob(pattern) if p.is_dir() and not p.name.endswith(".tmp"))


def write_whole(final: Path, fill, pattern: str | None = None) -> None:
    """Write a checkpoint folder whole or not at all: ``fill(tmp)`` writes into ``final.tmp``,
    which is then renamed ``final``; with ``pattern``, the other whole folders matching it go."""
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    fill(tmp)
    os.replace(tmp, final)
    if pattern:
        for old in whole_folders(final.parent, pattern):
            if old != final:
                shutil.rmtree(old)


def write_json(path: Path, doc) -> None:
    """``doc`` as JSON at ``path``, whole or not at all."""
    atomic_write_bytes(path, json.dumps(doc, indent=1).encode())


def cpu_state(module) -> dict:
    """A copy of ``module``'s state on the CPU, contiguous (ready for safetensors)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def optimizer_to(opt, device) -> None:
    """Move a (resumed) optimizer's moments to ``device``, where its parameters are."""
    import torch

    for st in opt.state.values():
        for k, v in st.items():
            if torch.is_tensor(v) and k != "step":
                st[k] = v.to(device)


def ddp(module, world: int, find_unused_parameters: bool = False):
    """``module`` wrapped in DistributedDataParallel when ``world`` > 1 processes train it, else
    itself. The step must call the wrapper's forward: the gradients it syncs are of that only."""
    if world == 1:
        return module
    import torch

    return torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=find_unused_parameters)


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
