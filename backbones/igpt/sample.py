"""Sampling and completing images with an Image GPT, with a key/value cache.

Both start from the SOS token (and, for completions, the kept top rows of real images) and draw
one palette index at a time from softmax(logits / temperature), restricted to the ``top_k`` most
likely colors. ``use_cache=False`` recomputes the whole prefix at every step: the same tokens for
the same seed, only slower (a test holds the two together).

On a CPU the cached one-token steps run under ``bench.runtime.ThreadPacer``: at torch's thread
count or at 1, whichever is faster at the time, since on a machine another process keeps busy
those thousands of tiny steps can run many times slower on all CPUs than on one. It paces only
where the decode's products give the same numbers at both counts on this machine
(``decode.thread_invariant``), so the tokens never depend on the load; elsewhere every step runs
at torch's count.
"""

from __future__ import annotations

import torch

from bench.runtime import ThreadPacer

from .decode import step, thread_invariant
from .model import ImageGPT


def _draw(logits, temperature: float, top_k: int | None, gen: torch.Generator):
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=gen).to(logits.device)


@torch.inference_mode()
def generate(model: ImageGPT, prefix: torch.Tensor, n_positions: int, *, temperature: float = 1.0,
             top_k: int | None = None, seed: int = 0, use_cache: bool = True) -> torch.Tensor:
    """Extend ``prefix`` (B, P) palette tokens to (B, n_positions)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    B, P = prefix.shape
    device = next(model.parameters()).device
    sos = torch.full((B, 1), model.cfg.sos, dtype=torch.long, device=device)
    seq = torch.cat([sos, prefix.to(device)], dim=1)  # model input so far: [SOS, x1..xP]
    if P >= n_positions:
        return prefix[:, :n_positions]
    if use_cache:
        caches = [{} for _ in model.h]
        logits = step(model, seq, caches, 0)[:, -1]
        with ThreadPacer(active=device.type == "cpu" and thread_invariant(model, B)) as pace:
            for t in range(P, n_positions):
                with pace.step():
                    nxt = _draw(logits, temperature, top_k, gen)
                    seq = torch.cat([seq, nxt], dim=1)
                    if t + 1 < n_positions:
                        logits = step(model, nxt, caches, t + 1)[:, -1]
    else:
        for _ in range(P, n_positions):
            logits = model(seq)[:, -1]
            seq = torch.cat([seq, _draw(logits, temperature, top_k, gen)], dim=1)
    return seq[:, 1:]
