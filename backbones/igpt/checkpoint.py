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


def checked_config(raw, where: Path) -> IGPTConfig:
    """The model config of a checkpoint's ``igpt.json``, every field checked and the model's memory
    estimated before anything is allocated: a hand-edited or foreign file can claim anything."""
    from .shapes import MAX_LAYERS, MAX_WIDTH
    from .weights import MAX_POSITIONS, check_memory

    limits = {"n_colors": (2, 1 << 16), "n_positions": (1, MAX_POSITIONS), "n_embd": (1, MAX_WIDTH),
              "n_layer": (1, MAX_LAYERS), "n_head": (1, MAX_WIDTH), "n_inner": (1, 4 * MAX_WIDTH)}
    if not isinstance(raw, dict) or set(raw) - set(limits) - {"eps"}:
        raise BenchError(f"{where}: its config is not an iGPT config ({str(raw)[:60]}); pass another checkpoint")
    for key, (lo, hi) in limits.items():
        value = raw.get(key)
        if not (key == "n_inner" and value is None) and (
                isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi):
            raise BenchError(f"{where}: config {key} = {repr(value)[:40]} must be a whole number in {lo}..{hi}; "
                             "pass another checkpoint")
    if raw["n_embd"] % raw["n_head"]:
        raise BenchError(f"{where}: config n_embd {raw['n_embd']} is not divisible by n_head {raw['n_head']}")
    eps = raw.get("eps", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise BenchError(f"{where}: config eps = {repr(eps)[:40]} must be a number in (0, 1)")
    cfg = IGPTConfig(**raw)
    check_memory(cfg, str(where))
    return cfg


def load_checkpoint(folder: Path) -> tuple[ImageGPT, Palette, tuple[int, int], dict]:
    """(model, palette, (height, width), meta) from one of our checkpoint folders."""
    from backbones.weights import apply_state_dict, load_state_dict

    folder = Path(folder)
    missing = [f for f in ("igpt.json", "model.safetensors", "palette.json") if not (folder / f).is_file()]
    if missing:
        raise BenchError(f"checkpoint {folder} lacks {', '.join(missing)}; pass a whole checkpoint folder")
    try:
        meta = json.loads((folder / "igpt.json").read_text())
        cfg = checked_config(meta["config"], folder / "igpt.json")
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
