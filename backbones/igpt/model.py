"""Image GPT: a GPT-2-shaped, pre-norm, causal transformer over palette indices.

The iGPT differences from GPT-2, all honoured here:
- the norm divides by the root-mean-square, subtracts no mean and has no bias (eps 1e-5);
- the MLP activation is x·sigmoid(1.702x);
- a learned start-of-sequence token, id = vocab_size − 1 (vocab = colors + 1);
- learned position embeddings; an untied head that predicts the colors only.

Layer names: ``h0`` (token + position embeddings), ``h1``…``hL`` (block outputs), ``final``
(after the last norm). ``forward_intermediates(idx, indices, stop_early=True)`` returns the hidden
states of those layers and runs no block past the deepest one asked for.

The model owns its loss, as in nanoGPT: ``model(idx, targets)`` and ``model.loss(tokens)`` give the
next-token cross-entropy in nats, computed in float32 even under autocast.

With ``caches`` (one dict per block, empty at first) the forward also keeps each block's keys and
values, so later calls run only the new positions: the sampler's path. Its one-token fast form is
``decode.step``, tested equal to this one; shape names live in ``shapes``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


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


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: no mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one fused pass


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


GELU_SCALE = 1.702


def mlp(x, fc_w, fc_b, proj_w, proj_b):
    """``proj(quick_gelu(fc(x)))`` with the activation as ONE elementwise pass instead of three.

    ``fc_w`` and ``proj_w`` are the layers' weights as [in, out] matrices (``Linear.weight.t()``).
    quick_gelu(h) = silu(a h) / a with a = 1.702, and both scalings ride on the matrix products:
    addmm(b, x, W^T, beta=a, alpha=a) = a (x W^T + b), and the 1/a goes into ``proj``'s alpha. The
    same function of the same weights, in one memory pass where three were the cost
    (docs/performance.md).
    """
    shape = x.shape
    h = torch.addmm(fc_b, x.reshape(-1, shape[-1]), fc_w, beta=GELU_SCALE, alpha=GELU_SCALE)
    h = F.silu(h, inplace=not torch.is_grad_enabled())  # autograd needs addmm's output kept
    out = torch.addmm(proj_b, h, proj_w, alpha=1.0 / GELU_SCALE)
    return out.view(*shape[:-1], out.shape[-1])


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
        if cache is not None:  # write this step's keys and values into the cache, read all so far
            start = cache.get("len", 0)
            if "k" not in cache:  # one buffer for the whole sequence: no copy of the past per step
                shape = (B, self.n_head, cache["capacity"], C // self.n_head)
                cache["k"], cache["v"] = k.new_empty(shape), v.new_empty(shape)
            cache["k"][:, :, start : start + T] = k
            cache["v"][:, :, start : start + T] = v
            cache["len"] = start + T
            k, v = cache["k"][:, :, : start + T], cache["v"][:, :, : start + T]
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
        return x + mlp(self.ln_2(x), self.c_fc.weight.t(), self.c_fc.bias, self.c_proj.weight.t(), self.c_proj.bias)


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

    def check_length(self, end: int):
        """Refuse a sequence that would end past the model's last position."""
        if end > self.cfg.n_positions:
            raise ValueError(f"sequence of {end} exceeds the model's {self.cfg.n_positions} positions")

    def embed(self, idx, start: int = 0):
        T = idx.shape[1]
        self.check_length(start + T)
        pos = torch.arange(start, start + T, device=idx.device)
        return self.wte(idx) + self.wpe(pos)

    def forward_intermediates(self, idx, indices=None, stop_early: bool = False, *, caches: list[dict] | None = None,
                              start: int = 0) -> dict[str, torch.Tensor]:
        """The hidden states {layer: [B, T, C]} of model input ``idx`` at the layers ``indices``,
        in depth order, as timm's ``forward_intermediates(x, indices, stop_early)``.

        ``indices``: a list of layer names (``h0`` … ``hL``, ``final``) or positions in
        ``layer_names`` (``-1`` is ``final``); None asks for every layer. With ``stop_early`` no
        block past the deepest requested layer runs. A dict keyed by layer name rather than
        timm's list: names are what ``--layers`` and the activation files speak, and ``final``
        (after the last norm) is no block index.

        ``caches``: one dict per block, empty at first; ``idx`` then holds positions ``start``…,
        each block's keys and values are kept in its dict (a buffer for all positions) and the new
        positions attend to those kept before.
        """
        names = self.layer_names
        wanted = self._requested_layers(indices)
        deepest = max(map(names.index, wanted)) if stop_early else len(names) - 1
        if caches is not None:
            for cache in caches:
                cache.setdefault("capacity", self.cfg.n_positions)
        x = self.embed(idx, start)
        states = {"h0": x} if "h0" in wanted else {}
        for depth, block in enumerate(self.h[:deepest], start=1):  # deepest is n_layer + 1 for final
            x = block(x, None if caches is None else caches[depth - 1])
            if f"h{depth}" in wanted:
                states[f"h{depth}"] = x
        if "final" in wanted:
            states["final"] = self.ln_f(x)
        return {name: states[name] for name in wanted}

    def _requested_layers(self, indices) -> list[str]:
        """``indices`` (names or positions; None: all) as layer names in depth order."""
        names = self.layer_names
        if indices is None:
            return names
        if isinstance(indices, (str, int)):
            raise TypeError(f"indices is a list of layer names or positions, e.g. ['h2'], not {indices!r}")
        requested = set()
        for index in indices:
            if isinstance(index, int):
                if not -len(names) <= index < len(names):
                    raise IndexError(f"layer position {index} is out of range for {len(names)} layers")
                index = names[index]
            elif index not in names:
                raise ValueError(f"unknown layer {index!r}; the layers are h0 … h{self.cfg.n_layer} and final")
            requested.add(index)
        if not requested:
            raise ValueError("no layer requested; pass at least one layer name or position")
        return sorted(requested, key=names.index)

    def forward(self, idx, targets=None, reduction: str = "mean", *, caches: list[dict] | None = None,
                start: int = 0):
        """Logits over the colors [B, T, n_colors] for model input ``idx``. Given ``targets`` (the
        palette token each position predicts, [B, T]): the cross-entropy in nats instead, computed
        in float32 from the logits even under autocast; ``reduction`` as in ``F.cross_entropy``
        ("none" gives [B, T]). ``caches`` and ``start``: as in ``forward_intermediates``."""
        final = self.forward_intermediates(idx, ["final"], caches=caches, start=start)["final"]
        if targets is None:
            return self.head(final)
        return self.head_loss(final, targets, reduction)

    def head_loss(self, final, targets, reduction: str = "mean"):
        """The cross-entropy (nats) of the head's logits on final-norm states ``final`` [B, T, C]
        against ``targets`` [B, T], in float32 even under autocast: the one place the loss is
        written (``forward`` uses it; fine-tuning calls it on the states it pools for its head)."""
        logits = self.head(final)
        with torch.autocast(logits.device.type, enabled=False):
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction=reduction)
        return loss.view_as(targets) if reduction == "none" else loss

    def loss(self, tokens, reduction: str = "mean"):
        """Next-token cross-entropy (nats) of palette tokens x1…xn [B, n]: the model reads
        [SOS, x1, …, x(n−1)] and predicts x1…xn."""
        return self(with_sos(tokens, self.cfg.sos), tokens, reduction)


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
