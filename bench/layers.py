"""Layer selections: single layers and groups of layers whose features are concatenated.

``--layers h1,h3`` asks for two layers; ``--layers 'h2+h3+h4'`` for one group, the concatenation
of three layers' features (the Image GPT paper's concatenated-layer probe); ``all`` for every
layer. Tasks see a selection as a list of names (a group's name is its members joined by ``+`` in
depth order) and read a group from an activation file like a layer; extraction computes each
member layer once.
"""

from __future__ import annotations

from bench.errors import BenchError

SEP = "+"


def is_group(name: str) -> bool:
    return SEP in name


def group_members(name: str) -> list[str]:
    return name.split(SEP)


def parse(spec, layers: list[str], backbone: str) -> list[str]:
    """A validated selection: single layers in depth order, then the groups in the order given
    (each group's members in depth order). ``spec``: 'all'/None, a comma-separated string, or a list."""
    if spec is None or spec == "all" or spec == ["all"]:
        return list(layers)
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [s for s in items if s]
    if not items:
        raise BenchError(f"--layers names no layer; valid layers of {backbone!r}: {', '.join(layers)} (or 'all')")
    singles, groups = set(), []
    for item in items:
        parts = [p.strip() for p in item.split(SEP)]
        if any(not p for p in parts):
            raise BenchError(f"layer group {item!r} has an empty member; write layers joined by '+', e.g. "
                             f"{SEP.join(layers[:3])!r}")
        unknown = [p for p in parts if p not in layers]
        if unknown:
            raise BenchError(f"unknown layer {', '.join(map(repr, unknown))} for backbone {backbone!r}; valid "
                             f"layers: {', '.join(layers)} (or 'all'; join layers with '+' for a group)")
        if len(parts) == 1:
            singles.add(parts[0])
            continue
        if len(set(parts)) != len(parts):
            raise BenchError(f"layer group {item!r} names a layer twice; name each member once")
        group = SEP.join(sorted(parts, key=layers.index))
        if group not in groups:
            groups.append(group)
    return [layer for layer in layers if layer in singles] + groups


def members(selection: list[str], layers: list[str]) -> list[str]:
    """The single layers a selection needs, each once, in depth order."""
    needed = {m for name in selection for m in group_members(name)}
    return [layer for layer in layers if layer in needed]
