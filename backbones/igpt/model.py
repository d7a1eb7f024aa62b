"""Image GPT: a GPT-2-shaped, pre-norm, causal transformer over palette indices.

The iGPT differences from GPT-2, all honoured here:
- the norm divides by the root-mean-square, subtracts no mean and has no bias (eps 1e-5);
- the MLP activation is x·sigmoid(1.702x);
- a learned start-of-sequence token, id = vocab_size − 1 (vocab = colors + 1);
- learned position embeddings; an untied head that predicts the colors only.

Layer names: ``h0`` (token + position embeddings), ``h1``…``hL`` (block outputs), ``final``
(after the last norm). ``hidden_states(idx, upto)`` runs no block past the deepest one asked for.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class IGPTConfig:
    n_colors: int = 512
    n_positions: int = 1024  # = height * width
    n_embd: int = 512
    n_layer: int = 24
    n_head: int = 8
    n_inner: int | None = None  # MLP width; 4 * n_embd when None
    eps: float = 1e-5

    @property
    def vocab_size(self) -> int:
        return self.n_colors + 1

    @property
    def sos(self) -> int:
        return self.n_colors  # = vocab_size - 1

    @property
    def mlp_width(self) -> int:
        return self.n_inner or 4 * self.n_embd

    def to_dict(self) -> dict:
        return asdict(self)


# The paper's sizes (32x32 input, 512 colors) and small ones that train on a CPU.
SHAPES = {
    "igpt-s": dict(n_embd=512, n_layer=24, n_head=8),
    "igpt-m": dict(n_embd=1024, n_layer=36, n_head=8),
    "igpt-l": dict(n_embd=1536, n_layer=48, n_head=16),
    "igpt-xl": dict(n_embd=3072, n_layer=60, n_head=16),
    "igpt-wide": dict(n_embd=256, n_layer=4, n_head=8),
    "igpt-mini": dict(n_embd=128, n_layer=8, n_head=4),
    "igpt-tiny": dict(n_embd=64, n_layer=4, n_head=4),
}


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: no mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    def __init__(self, cfg: IGPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x, cache: dict | None = None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:  # append this step's keys and values to the cache
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        # With a cache, T new queries attend to all S >= T keys: causal with an offset.
        S = k.shape[2]
        if T == 1:
            y = F.scaled_dot_product_attention(q, k, v)
        elif S == T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: IGPTConfig):
        super().__init__()
        self.ln_1 = RMSNorm(cfg.n_embd, cfg.eps)
        self.attn = Attention(cfg)
        self.ln_2 = RMSNorm(cfg.n_embd, cfg.eps)
        self.c_fc = nn.Linear(cfg.n_embd, cfg.mlp_width)
        self.c_proj = nn.Linear(cfg.mlp_width, cfg.n_embd)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.c_proj(quick_gelu(self.c_fc(self.ln_2(x))))


class ImageGPT(nn.Module):
    def __init__(self, cfg: IGPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = RMSNorm(cfg.n_embd, cfg.eps)
        self.head = nn.Linear(cfg.n_embd, cfg.n_colors, bias=False)  # untied; colors only
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    @property
    def layer_names(self) -> list[str]:
        return [f"h{i}" for i in range(self.cfg.n_layer + 1)] + ["final"]

    def embed(self, idx, start: int = 0):
        T = idx.shape[1]
        if start + T > self.cfg.n_positions:
            raise ValueError(f"sequence of {start + T} exceeds the model's {self.cfg.n_positions} positions")
        pos = torch.arange(start, start + T, device=idx.device)
        return self.wte(idx) + self.wpe(pos)

    def hidden_states(self, idx, upto: str | None = None) -> dict[str, torch.Tensor]:
        """{layer: [B, T, C]} for h0 … up to ``upto`` (default: all, with ``final``)."""
        names = self.layer_names
        last = names.index(upto) if upto is not None else len(names) - 1
        x = self.embed(idx)
        out = {"h0": x}
        for i, block in enumerate(self.h[: min(last, self.cfg.n_layer)], start=1):
            x = block(x)
            out[f"h{i}"] = x
        if last == len(names) - 1:
            out["final"] = self.ln_f(x)
        return out

    def forward(self, idx):
        """Logits over the colors, [B, T, n_colors]."""
        return self.head(self.hidden_states(idx)["final"])

    def step(self, idx, caches: list[dict], start: int):
        """Logits for new tokens ``idx`` at positions start…, reusing and extending ``caches``."""
        x = self.embed(idx, start)
        for block, cache in zip(self.h, caches):
            x = block(x, cache)
        return self.head(self.ln_f(x))


def with_sos(tokens, sos: int):
    """The model input for palette tokens x1..xn: [SOS, x1, …, x(n−1)]."""
    start = torch.full((tokens.shape[0], 1), sos, dtype=tokens.dtype, device=tokens.device)
    return torch.cat([start, tokens[:, :-1]], dim=1)


def from_transformers_state_dict(sd: dict, cfg: IGPTConfig) -> dict:
    """Rename (and transpose Conv1D weights of) a transformers ImageGPT state dict to ours."""
    out = {}
    for key, t in sd.items():
        k = key.removeprefix("transformer.")
        if k.endswith(("attn.bias", "attn.masked_bias")) and t.dim() != 1:
            continue  # causal-mask buffers of older saves
        if k == "lm_head.weight":
            out["head.weight"] = t
            continue
        k = k.replace(".mlp.c_fc.", ".c_fc.").replace(".mlp.c_proj.", ".c_proj.")
        if k.startswith("h.") and k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            t = t.t().contiguous()  # Conv1D stores (in, out); Linear wants (out, in)
        out[k] = t
    return out
