"""iGPT shapes by name: the paper's sizes, small ones that train on a CPU, and specs
``igpt-<layers>x<width>`` with an optional ``h<heads>`` (``igpt-8x512``, ``igpt-8x512h4``).

``shape_config(name)`` turns either into ``IGPTConfig`` keywords, and refuses a shape whose
weights would not fit this machine: the check belongs to building a model, not to defining one.
"""

from __future__ import annotations

import os
import re

from bench.errors import BenchError, did_you_mean

# The paper's sizes (32x32 input, 512 colors) and small ones that train on a CPU.
SHAPES = {
    "igpt-s": {"n_embd": 512, "n_layer": 24, "n_head": 8},
    "igpt-m": {"n_embd": 1024, "n_layer": 36, "n_head": 8},
    "igpt-l": {"n_embd": 1536, "n_layer": 48, "n_head": 16},
    "igpt-xl": {"n_embd": 3072, "n_layer": 60, "n_head": 16},
    "igpt-wide": {"n_embd": 256, "n_layer": 4, "n_head": 8},
    "igpt-mini": {"n_embd": 128, "n_layer": 8, "n_head": 4},
    "igpt-tiny": {"n_embd": 64, "n_layer": 4, "n_head": 4},
}

# Any other depth and width: igpt-<layers>x<width>, heads from the width unless h<heads> is given.
SHAPE_SPEC = "igpt-<L>x<W>"
_SPEC = re.compile(r"igpt-(?P<layers>\d+)x(?P<width>\d+)(?:h(?P<heads>\d+))?")
_SPEC_ATTEMPT = re.compile(r"igpt-[\dx]")  # what a user who meant a spec writes first
_HOW = "write igpt-<layers>x<width>, optionally with h<heads>, e.g. igpt-8x512 or igpt-8x512h4"
MAX_LAYERS, MAX_WIDTH = 512, 16384  # beyond XL (60 x 3072) by far: a larger number is a typo


def default_heads(width: int) -> int:
    """The most heads of at least 64 channels that divide ``width`` (1 below 128): igpt-8x512 has
    8 heads of 64, igpt-8x200 2 heads of 100, igpt-4x64 one head."""
    return next(heads for heads in range(max(1, width // 64), 0, -1) if width % heads == 0)


def is_shape_spec(name: str) -> bool:
    """Whether ``name`` is, or was meant as, an ``igpt-<L>x<W>`` spec (``igpt-8x``, ``igpt-x64`` too)."""
    return _SPEC_ATTEMPT.match(name) is not None


def shape_config(name: str) -> dict:
    """``IGPTConfig`` keywords (n_embd, n_layer, n_head) of a named shape or an ``igpt-<L>x<W>[h<H>]``
    spec; a ``BenchError`` saying what to write for anything else, or for a spec whose fp32 weights
    would take more than half of this machine's memory."""
    if name in SHAPES:
        return dict(SHAPES[name])
    spec = _SPEC.fullmatch(name)
    if spec is None:
        if is_shape_spec(name):
            raise BenchError(f"malformed iGPT shape {name!r}: {_HOW}")
        raise BenchError(f"unknown iGPT shape {name!r}{did_you_mean(name, SHAPES)}; choose one of "
                         f"{', '.join(SHAPES)}, or {_HOW}")
    layers, width = int(spec["layers"]), int(spec["width"])
    if not 1 <= layers <= MAX_LAYERS:
        raise BenchError(f"iGPT shape {name!r} has {layers} layers; layers must lie in 1..{MAX_LAYERS}, e.g. igpt-8x512")
    if not 1 <= width <= MAX_WIDTH:
        raise BenchError(f"iGPT shape {name!r} is {width} wide; the width must lie in 1..{MAX_WIDTH}, e.g. igpt-8x512")
    heads = default_heads(width) if spec["heads"] is None else int(spec["heads"])
    if heads < 1 or width % heads:
        raise BenchError(f"iGPT shape {name!r}: {heads} heads do not divide the width {width}; choose heads "
                         f"that divide it, or drop h{spec['heads']} for the default ({default_heads(width)})")
    weights = 12 * layers * width * width * 4  # bytes of the blocks' fp32 matrices
    memory = physical_memory()
    if memory and weights > memory // 2:
        raise BenchError(f"iGPT shape {name!r} has about {weights / 4 / 1e9:.1f}B parameters ({weights / 2**30:.0f} GiB "
                         f"in fp32), more than half of this machine's {memory / 2**30:.0f} GiB; choose a smaller shape")
    return {"n_embd": width, "n_layer": layers, "n_head": heads}


def physical_memory() -> int | None:
    """This machine's physical memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
