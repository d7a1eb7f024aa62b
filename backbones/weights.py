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
    cast = [k for k in own if own[k].is_floating_point() and not state_dict[k].is_floating_point()]
    if cast:
        raise BenchError(f"weights file {path} stores {cast[0]} as {str(state_dict[cast[0]].dtype).replace('torch.', '')}"
                         f"{f' (and {len(cast) - 1} more)' if len(cast) > 1 else ''} where {backbone!r} has "
                         "floating-point weights (a conversion that truncated them?); pass the weights as saved")
    for k, v in state_dict.items():
        if v.is_floating_point() and not bool(v.isfinite().all()):
            raise BenchError(f"weights file {path} holds non-finite values (NaN or inf) in {k}; "
                             "pass weights from a run that did not diverge")
    model.load_state_dict(state_dict, strict=True)


class HubUnreachable(Exception):
    """The Hugging Face hub cannot be reached (offline mode, or no connection): not worth retrying."""


def hub_reachable(timeout: float = 3.0) -> str:
    """'' when a TCP connection to the hub's endpoint (``HF_ENDPOINT``) opens within ``timeout``
    seconds, else why not. With a proxy configured the proxy decides, so the probe is skipped."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return ""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return ""
    except OSError as e:
        return f"{host}:{port} is unreachable ({e.strerror or type(e).__name__})"


def hub_cache_first(fetch: Callable[[bool], T]) -> T:
    """``fetch(offline=True)`` reads the local Hugging Face cache; only when that fails, and
    ``HF_HUB_OFFLINE`` is not set and the hub answers a quick connection probe, may
    ``fetch(offline=False)`` use the network (so no minute of retries when offline). A BenchError
    passes straight through; HubUnreachable says why the network was not tried; otherwise the last
    attempt's error is raised for the caller to word."""
    offline_only = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        return fetch(True)
    except BenchError:
        raise
    except Exception as e:  # noqa: BLE001 - hub and network errors come in many types
        err = e
    if offline_only:
        raise HubUnreachable("HF_HUB_OFFLINE is set") from err
    why = hub_reachable()
    if why:
        raise HubUnreachable(why) from err
    return fetch(False)


def first_line(e: Exception, limit: int = 160) -> str:
    """The first line of an error's text, cut at a word (never mid-word) when over ``limit``."""
    if isinstance(e, HubUnreachable):
        return f"the hub was not tried: {e}"
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",;:(") + " ..."
