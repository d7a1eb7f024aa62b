"""The task contract: read activation files, return flat result records.

A task declares the splits it reads, its options (name -> ``Option``) and, for the run table,
which (split, metric) pairs to show as columns. ``run`` returns a list of dicts with at least
``layer``, ``split``, ``metric`` and ``value``; the runner stamps provenance onto each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from bench.errors import BenchError, did_you_mean


@dataclass(frozen=True)
class Option:
    default: Any
    parse: Callable[[str], Any]
    help: str


class Task:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    options: ClassVar[dict[str, Option]] = {}
    columns: ClassVar[dict[tuple[str, str], str]] = {}  # (split, metric) -> run-table header

    def parse_options(self, pairs: list[str] | tuple[str, ...]) -> dict:
        """``["key=value", ...]`` -> a complete, validated options dict."""
        out = {k: o.default for k, o in self.options.items()}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            key = key.strip().replace("-", "_")
            if not sep:
                raise BenchError(f"task option {pair!r} is not KEY=VALUE; e.g. -o max_iter=500")
            if key not in self.options:
                valid = ", ".join(self.options) or "none"
                raise BenchError(f"task {self.name!r} has no option {key!r}{did_you_mean(key, self.options)}; "
                                 f"its options: {valid}")
            try:
                out[key] = self.options[key].parse(value)
            except (TypeError, ValueError) as e:
                raise BenchError(f"task option {key}={value!r} is invalid ({e}); {self.options[key].help}") from None
        return out

    def run(self, acts: dict, layers: list[str], *, options: dict, seed: int, device: str = "cpu",
            quiet: bool = False) -> list[dict]:
        raise NotImplementedError
