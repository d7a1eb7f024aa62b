"""The sampler's token path: ``step`` runs new tokens through an ``ImageGPT`` on per-block
key/value caches, and one new token per sequence on a filled cache through ``decode_block``.

``decode_block`` is ``Block.forward`` for one token, written as plain tensor ops on the block's
weights without module calls or reshapes of the past: a sampler calls it once per token and
block, and at small widths its cost is mostly that overhead (docs/performance.md). Tests hold it
equal to the model's cached forward and to recomputing the whole prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import Block, ImageGPT, mlp


def step(model: ImageGPT, idx, caches: list[dict], start: int):
    """Logits [B, T, n_colors] for new tokens ``idx`` [B, T] at positions ``start``…, reusing and
    extending ``caches`` (one dict per block, empty at first; each holds key/value buffers for all
    positions, and once one-token steps begin, the block's weights as ``decode_block`` multiplies
    them). One token on caches filled up to ``start`` takes the fast path; anything else is the
    model's forward with caches."""
    if idx.shape[1] == 1 and all(cache.get("len") == start for cache in caches):
        model.check_length(start + 1)
        x = model.wte.weight[idx[:, 0]] + model.wpe.weight[start]
        for block, cache in zip(model.h, caches):
            x = decode_block(block, x, cache, start)
        x = F.rms_norm(x, (x.shape[-1],), model.ln_f.weight, model.ln_f.eps)
        return (x @ model.head.weight.t())[:, None]
    return model(idx, caches=caches, start=start)


def decode_block(block: Block, x, cache: dict, t: int):
    """``block.forward`` for ONE new token per sequence: ``x`` [B, C] at position ``t``, with
    ``cache`` holding the keys and values of positions < t (its buffers allocated by an earlier
    cached forward); writes position t's keys and values into it."""
    B, C = x.shape
    attn, H = block.attn, block.attn.n_head
    qkv_w, out_w, fc_w, proj_w = cache.get("weights") or cache.setdefault("weights", decode_weights(block))
    h = F.rms_norm(x, (C,), block.ln_1.weight, block.ln_1.eps)
    qkv = torch.addmm(attn.c_attn.bias, h, qkv_w).view(B, 3, H, C // H)
    keys, values = cache["k"], cache["v"]
    keys[:, :, t], values[:, :, t] = qkv[:, 1], qkv[:, 2]
    cache["len"] = t + 1
    # Attention written out rather than scaled_dot_product_attention, whose CPU kernel shares out a
    # one-query attention by thread count: these ops give the same numbers at any thread count.
    q = qkv[:, 0, :, None] * (C // H) ** -0.5
    scores = torch.softmax(q @ keys[:, :, : t + 1].transpose(-1, -2), dim=-1)
    y = scores @ values[:, :, : t + 1]
    x = x + torch.addmm(attn.c_proj.bias, y.view(B, C), out_w)
    h = F.rms_norm(x, (C,), block.ln_2.weight, block.ln_2.eps)
    return x + mlp(h, fc_w, block.c_fc.bias, proj_w, block.c_proj.bias)


_INVARIANT: dict[tuple, bool] = {}


def thread_invariant(model: ImageGPT, batch: int, counts=None) -> bool:
    """Whether this machine's matrix products in ``decode_block`` and the head give bit-identical
    results at 1 thread and at each of ``counts`` (default: torch's count now), for ``batch``
    sequences. Why: some BLAS kernels split a product's inner sum by thread count, and then a
    sampler that changes its count between steps would draw tokens that depend on the load. The
    split follows the shapes, not the values, so random operands of the decode's shapes tell;
    the answer is kept per shape."""
    counts = tuple(counts or (torch.get_num_threads(),))
    C, inner, colors = model.cfg.n_embd, model.cfg.mlp_width, model.cfg.n_colors
    shapes = ((C, 3 * C), (C, C), (C, inner), (inner, C), (C, colors))
    key = (batch, shapes, counts)
    if key not in _INVARIANT:
        before = torch.get_num_threads()
        gen = torch.Generator().manual_seed(0)
        pairs = [(torch.randn(batch, k, generator=gen), torch.randn(k, n, generator=gen)) for k, n in shapes]
        try:
            results = []
            for threads in (1, *counts):
                torch.set_num_threads(threads)
                results.append([torch.addmm(w[0], x, w) for x, w in pairs] + [x @ w for x, w in pairs])
        finally:
            torch.set_num_threads(before)
        _INVARIANT[key] = all(torch.equal(a, b) for other in results[1:] for a, b in zip(results[0], other))
    return _INVARIANT[key]


def decode_weights(block: Block) -> tuple:
    """The block's four weights as [in, out] matrices for ``decode_block``: on a CPU, contiguous
    copies (made once per sampled batch and kept in its cache), since MKL multiplies a few rows by
    a contiguous [in, out] matrix faster than by the transposed view of ``Linear.weight``; on a
    GPU, the views. The price on a CPU is a second copy of the block weights while a batch samples."""
    weights = (block.attn.c_attn.weight, block.attn.c_proj.weight, block.c_fc.weight, block.c_proj.weight)
    cpu = weights[0].device.type == "cpu"
    return tuple(w.t().contiguous() if cpu else w.t() for w in weights)
