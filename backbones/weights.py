"""Loading weight files without running pickled code: safetensors, or torch.load(weights_only=True)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bench.errors import BenchError

T = TypeVar("T")


def load_state_dict(path: str | Path) -> dict:
    """A flat {name: tensor} dict from a .safetensors file or a state-dict .pth/.pt/.bin file.

    Pickled files are read with ``weights_only=True``: a file that carries objects other than
    tensors and plain containers is refused before any of its code can run.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise BenchError(f"weights {path} do not exist; pass an existing --weights file")
    if path.is_dir():
        raise BenchError(f"--weights {path} is a folder; this backbone takes a weights file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise BenchError(f"weights file {path} is not a readable safetensors file ({e}); check the file") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for corrupt or unsafe files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "Weights only load failed" in str(e) or "Unsupported global" in str(e):
            raise BenchError(
                f"refused to load {path}: it holds pickled objects that are not plain weights "
                "(their code was not run); save a state_dict or convert it to .safetensors"
            ) from None
        raise BenchError(f"weights file {path} is corrupt or not a torch state dict ({msg}); check the file") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BenchError(f"weights file {path} holds no state dict of tensors; save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def apply_state_dict(model, state_dict: dict, backbone: str, path: str | Path) -> None:
    """Load strictly; a mismatch names what is missing, unexpected or of the wrong shape."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {wrong[0]})")
        raise BenchError(
            f"weights file {path} does not fit backbone {backbone!r}: " + "; ".join(parts)
            + "; pass weights saved from the same architecture and input channels"
        )
    model.load_state_dict(state_dict, strict=True)


def hub_cache_first(fetch: Callable[[bool], T]) -> T:
    """``fetch(offline=True)`` reads the local Hugging Face cache; only when that fails, and
    ``HF_HUB_OFFLINE`` is not set, ``fetch(offline=False)`` may use the network. A BenchError
    passes straight through; otherwise the last attempt's error is raised for the caller to word."""
    offline_only = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    err: Exception | None = None
    for offline in ([True] if offline_only else [True, False]):
        try:
            return fetch(offline)
        except BenchError:
            raise
        except Exception as e:  # noqa: BLE001 - hub and network errors come in many types
            err = e
    assert err is not None
    raise err


def first_line(e: Exception, limit: int = 160) -> str:
    return (str(e).splitlines()[0] if str(e) else type(e).__name__)[:limit]
