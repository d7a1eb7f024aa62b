"""Our own iGPT checkpoints: a folder with ``model.safetensors``, ``igpt.json`` (model config,
image shape), ``palette.json`` and, for training runs, ``train_state.pt`` (optimizer, schedule,
RNG, data position; read back with ``weights_only=True``).

Folders are written under a temporary name and renamed when complete, so a checkpoint that
exists is a whole checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from bench.errors import BenchError

from .model import IGPTConfig, ImageGPT
from .palette import Palette

FORMAT = "igpt-bench/igpt-checkpoint"


def is_checkpoint(folder: Path) -> bool:
    return (Path(folder) / "igpt.json").is_file()


def save_checkpoint(folder: Path, model: ImageGPT, palette: Palette, image: tuple[int, int],
                    train_state: dict | None = None, extra: dict | None = None) -> Path:
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(tmp / "model.safetensors"))
    (tmp / "igpt.json").write_text(json.dumps(
        {"format": FORMAT, "config": model.cfg.to_dict(), "image": list(image), **(extra or {})}, indent=1))
    palette.save(tmp / "palette.json")
    if train_state is not None:
        torch.save(train_state, tmp / "train_state.pt")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def load_checkpoint(folder: Path) -> tuple[ImageGPT, Palette, tuple[int, int], dict]:
    """(model, palette, (height, width), meta) from one of our checkpoint folders."""
    from backbones.weights import apply_state_dict, load_state_dict

    folder = Path(folder)
    missing = [f for f in ("igpt.json", "model.safetensors", "palette.json") if not (folder / f).is_file()]
    if missing:
        raise BenchError(f"checkpoint {folder} lacks {', '.join(missing)}; pass a whole checkpoint folder")
    try:
        meta = json.loads((folder / "igpt.json").read_text())
        cfg = IGPTConfig(**meta["config"])
        h, w = (int(v) for v in meta["image"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BenchError(f"{folder / 'igpt.json'} is damaged ({e}); pass another checkpoint") from None
    if h * w != cfg.n_positions:
        raise BenchError(f"{folder / 'igpt.json'}: image {h}x{w} does not fit {cfg.n_positions} positions")
    palette = Palette.load(folder / "palette.json")
    if palette.n_colors != cfg.n_colors:
        raise BenchError(f"{folder}: palette has {palette.n_colors} colors, the model {cfg.n_colors}")
    model = ImageGPT(cfg)
    apply_state_dict(model, load_state_dict(folder / "model.safetensors"), "igpt", folder / "model.safetensors")
    return model, palette, (h, w), meta


def load_train_state(folder: Path) -> dict:
    import torch

    try:
        return torch.load(Path(folder) / "train_state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise BenchError(f"cannot read {Path(folder) / 'train_state.pt'} ({str(e).splitlines()[0][:120]}); "
                         "delete that checkpoint to resume from an earlier one") from None


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted(p for p in (Path(run_dir) / "checkpoints").glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    return ckpts[-1] if ckpts else None
