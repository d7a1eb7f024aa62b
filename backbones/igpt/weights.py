"""Loading transformers-format ImageGPT folders without importing transformers.

A folder holds ``config.json``, ``model.safetensors`` (or ``pytorch_model.bin``, read with
``weights_only=True``) and ``preprocessor_config.json`` with the palette ``clusters``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from bench.errors import BenchError

from .model import IGPTConfig, ImageGPT, from_transformers_state_dict
from .palette import Palette
from .shapes import MAX_LAYERS, MAX_WIDTH, physical_memory

MAX_POSITIONS = 1 << 16  # 256 x 256 tokens: far past any ImageGPT
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _read_config(folder: Path) -> tuple[IGPTConfig, dict]:
    """The model config of a transformers folder, every field checked (and the model's memory
    estimated) before anything is allocated: a config can claim anything."""
    where = folder / "config.json"
    try:
        raw = json.loads(where.read_text())
    except (OSError, ValueError) as e:
        raise BenchError(f"cannot read {where} ({e}); pass a saved ImageGPT folder") from None
    if not isinstance(raw, dict):
        raise BenchError(f"{where} is not an ImageGPT config (not an object); pass a folder saved by save_pretrained")

    def whole(key: str, lo: int, hi: int, default=None) -> int | None:
        value = raw.get(key, default)
        if value is None and default is None and key == "n_inner":
            return None
        if key not in raw and default is None:
            raise BenchError(f"{where} lacks {key!r}; pass a folder saved by ImageGPT's save_pretrained")
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise BenchError(f"{where}: {key} = {repr(value)[:40]} must be a whole number in {lo}..{hi}; the "
                             "config is damaged or not an ImageGPT config")
        return value

    n_embd = whole("n_embd", 1, MAX_WIDTH)
    n_layer = whole("n_layer", 1, MAX_LAYERS)
    n_head = whole("n_head", 1, n_embd)
    if n_embd % n_head:
        raise BenchError(f"{where}: n_embd {n_embd} is not divisible by n_head {n_head}")
    eps = raw.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise BenchError(f"{where}: layer_norm_epsilon = {repr(eps)[:40]} must be a number in (0, 1)")
    cfg = IGPTConfig(n_colors=whole("vocab_size", 3, 1 << 16) - 1, n_positions=whole("n_positions", 1, MAX_POSITIONS),
                     n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     n_inner=whole("n_inner", 1, 4 * MAX_WIDTH), eps=float(eps))
    check_memory(cfg, str(where))
    return cfg, raw


def check_memory(cfg: IGPTConfig, what: str) -> None:
    """Refuse a model whose fp32 parameters would take more than half of this machine's memory."""
    per_block = 4 * cfg.n_embd * cfg.n_embd + 2 * cfg.n_embd * cfg.mlp_width
    params = cfg.n_layer * per_block + (cfg.vocab_size + cfg.n_positions + cfg.n_colors) * cfg.n_embd
    memory = physical_memory()
    if memory and 4 * params > memory // 2:
        raise BenchError(f"{what} describes a model of about {params / 1e9:.1f}B parameters ({4 * params / 2**30:.0f} "
                         f"GiB in fp32), more than half of this machine's {memory / 2**30:.0f} GiB; pass a smaller "
                         "model (or check the config)")


def load_pretrained(folder) -> tuple[ImageGPT, Palette, tuple[int, int], dict]:
    """(model, palette, (height, width), source) from a transformers-format ImageGPT folder."""
    from backbones.weights import load_state_dict

    from .checkpoint import is_checkpoint, latest_checkpoint, load_checkpoint

    folder = Path(folder)
    if not folder.exists() and HUB_ID.fullmatch(str(folder)):
        folder = _from_hub(str(folder))
    elif not folder.exists():
        raise BenchError(f"weights {folder} do not exist; pass an ImageGPT folder, a checkpoint, a run folder "
                         "or a hub id such as openai/imagegpt-small")
    if folder.is_dir() and not is_checkpoint(folder) and (folder / "checkpoints").is_dir():
        latest = latest_checkpoint(folder)  # a `bench pretrain` run folder: its latest checkpoint
        if latest is None:
            raise BenchError(f"training run {folder} has no checkpoint yet; wait for its first --save-at step")
        folder = latest
    if folder.is_dir() and is_checkpoint(folder):
        model, palette, hw, meta = load_checkpoint(folder)
        return model, palette, hw, {"weights": str(folder.resolve()), "format": "igpt-bench",
                                    "step": meta.get("step")}
    if not folder.is_dir():
        raise BenchError(f"--weights {folder} is not a folder; pass a transformers-format ImageGPT folder "
                         "(config.json, model.safetensors or pytorch_model.bin, preprocessor_config.json)")
    missing = [f for f in ("config.json", "preprocessor_config.json") if not (folder / f).is_file()]
    weights = next((folder / f for f in ("model.safetensors", "pytorch_model.bin") if (folder / f).is_file()), None)
    if weights is None:
        missing.append("model.safetensors or pytorch_model.bin")
    if missing:
        raise BenchError(f"ImageGPT folder {folder} lacks {', '.join(missing)}; save it with save_pretrained "
                         "and the image processor beside it")
    cfg, _ = _read_config(folder)
    palette = Palette.load(folder / "preprocessor_config.json")
    if palette.n_colors != cfg.n_colors:
        raise BenchError(f"{folder}: the palette has {palette.n_colors} colors but config.json says "
                         f"{cfg.n_colors} (vocab_size - 1); the files do not belong together")
    proc = json.loads((folder / "preprocessor_config.json").read_text())
    size = proc.get("size") if isinstance(proc, dict) else None
    size = size if isinstance(size, dict) else {}
    h, w = (v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None
            for v in (size.get("height"), size.get("width")))
    if not h or not w or h * w != cfg.n_positions:
        side = math.isqrt(cfg.n_positions)
        if side * side != cfg.n_positions:
            raise BenchError(f"{folder}: cannot tell the image shape for {cfg.n_positions} positions; "
                             "set size {height, width} in preprocessor_config.json")
        h = w = side
    model = ImageGPT(cfg)
    sd = from_transformers_state_dict(load_state_dict(weights), cfg)
    if "head.weight" not in sd:  # an ImageGPTModel without the head: features still work
        sd["head.weight"] = model.head.weight.detach().clone()
    from backbones.weights import apply_state_dict

    apply_state_dict(model, sd, "igpt", weights)
    return model, palette, (int(h), int(w)), {"weights": str(weights.resolve()), "format": "transformers"}


def weights_info(weights) -> dict:
    """What a study must not mix, read from the files without loading the weights: the palette
    (its centers, an array) and, for our checkpoints, the dataset they were trained on."""
    from .checkpoint import is_checkpoint, latest_checkpoint

    if weights is None:
        return {}
    folder = Path(weights)
    if folder.is_dir() and not is_checkpoint(folder) and (folder / "checkpoints").is_dir():
        folder = latest_checkpoint(folder) or folder
    info: dict = {}
    if is_checkpoint(folder):
        palette_file = folder / "palette.json"
        try:
            info["dataset"] = (json.loads((folder / "igpt.json").read_text()).get("train") or {}).get("dataset")
        except (OSError, ValueError):
            pass
    else:
        palette_file = folder / "preprocessor_config.json"
    if palette_file.is_file():
        try:
            info["palette"] = Palette.load(palette_file).centers
        except BenchError:
            pass
    return info


def _from_hub(repo_id: str) -> Path:
    """A hub id resolved by huggingface_hub: the local cache first, the network when allowed."""
    from huggingface_hub import snapshot_download

    from backbones.weights import first_line, hub_cache_first

    patterns = ["config.json", "preprocessor_config.json", "model.safetensors", "pytorch_model.bin"]
    try:
        return Path(hub_cache_first(lambda offline: snapshot_download(
            repo_id, allow_patterns=patterns, local_files_only=offline)))
    except BenchError:
        raise
    except Exception as e:  # noqa: BLE001 - hub errors come in many types
        raise BenchError(f"{repo_id} is neither a local folder nor in the Hugging Face cache, and could not be "
                         f"downloaded ({first_line(e)}); download it where there is network, or pass a local folder") from None
