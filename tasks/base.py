"""The task contract: one run context in, flat result records out.

A task is a class with a ``name``, a ``description``, its ``options`` (name -> ``Option``, whose
``default`` is a parsed value), the ``columns`` its run table shows, and one of two declared
kinds (``reads``):

- ``"activations"`` (the default): the runner extracts (or reuses from the cache) the pooled
  features of ``splits_for(options)`` for the requested layers, and the task reads them from
  ``ctx.acts[split]`` (``.labels``, ``.read(layer)``). It never touches the live model.
- ``"model"``: the task holds the backbone itself (``ctx.backbone``; its trainable torch module is
  ``ctx.backbone.module``): bits/dim, fine-tuning, sample quality. The runner loads the raw splits
  into ``ctx.data[split]`` (``.images`` uint8 (N, H, W, C), ``.labels``) and moves the backbone to
  ``ctx.device``; ``ctx.backbone.preprocess(images)`` turns a batch into model input and
  ``ctx.backbone.features(x, layers)`` is differentiable. Set ``requires_generative = True`` when
  the task needs ``bits_per_dim``/``sample``.

``check(options, data)`` (optional) runs before any extraction or training, for checks that need
only the raw splits (labels per class, sizes). ``run(ctx)`` returns a list of dicts with at least
``layer``, ``split``, ``metric`` and ``value`` (``stderr`` and ``n`` where known); the runner stamps
the provenance and identity onto each and writes one results file. Anything the task makes besides numbers (weights, images, curves) goes
under ``ctx.artifacts``, a folder beside the results file. A classifying task also hands over the
class it predicted for every val and test row (``ctx.keep_predictions``); the runner keeps them in
``<results>.predictions.npz`` (``bench.paired``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from bench.errors import BenchError, did_you_mean

if TYPE_CHECKING:
    from backbones.base import Backbone


@dataclass(frozen=True)
class Option:
    """A task option: its parsed default, the parser of its ``-o KEY=VALUE`` text, a help line.

    ``show`` turns a parsed value back into the text a user would type (for listings)."""

    default: Any
    parse: Callable[[str], Any]
    help: str
    show: Callable[[Any], str] = str


@dataclass
class RunContext:
    """Everything a task run gets: the same object for both kinds of task."""

    backbone: Backbone
    layers: list[str]
    options: dict
    seed: int = 0
    device: str = "cpu"
    dataset: str = ""
    data: dict = field(default_factory=dict)  # split -> bench.datasets.SplitData
    acts: dict = field(default_factory=dict)  # split -> bench.store.ActivationFile (activation tasks)
    artifacts: Path | None = None  # a folder beside the results file; created on first use
    cache_dir: Path | None = None  # the activation cache (None: bench.store.default_cache_dir())
    log: Callable[[str], None] = lambda msg: None
    quiet: bool = False
    predictions: dict = field(default_factory=dict)  # (split, layer) -> predicted class per row (keep_predictions)

    def progress(self, description: str, total: int):
        """A progress bar (a context manager with ``advance(n)``), nested under the sweep's bar."""
        from bench.runtime import progress_bar

        return progress_bar(description, total, self.quiet)

    def keep_predictions(self, split: str, layer: str, predicted) -> None:
        """Hand the runner the class predicted for every row of ``split`` (in ``data[split]``'s row
        order) by ``layer``'s classifier: it writes them beside the results file, so that two runs
        can be compared example by example (``bench compare``) and per class (``bench report``)."""
        import numpy as np

        predicted = np.asarray(predicted)
        rows = len(self.data[split]) if split in self.data else len(predicted)
        if predicted.ndim != 1 or len(predicted) != rows or not np.issubdtype(predicted.dtype, np.integer):
            raise BenchError(f"task predictions for {split}/{layer} must be {rows} integer class ids, one per row; "
                             f"got {predicted.dtype} {predicted.shape}")
        self.predictions[(split, layer)] = predicted

    def artifacts_dir(self) -> Path:
        """``artifacts``, created; tasks write their files here."""
        if self.artifacts is None:
            raise BenchError("this run has no artifacts folder; run the task through bench.api.run or `bench run`")
        self.artifacts.mkdir(parents=True, exist_ok=True)
        return self.artifacts


class Task:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    reads: ClassVar[str] = "activations"  # or "model"
    requires_generative: ClassVar[bool] = False
    needs_classes: ClassVar[bool] = False  # it tells classes apart: a train split of one class is an error
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    options: ClassVar[dict[str, Option]] = {}
    columns: ClassVar[dict[tuple[str, str], str]] = {}  # (split, metric) -> run-table header

    def splits_for(self, options: dict) -> tuple[str, ...]:
        """The splits this run needs (some tasks choose by option)."""
        return tuple(self.splits)

    def defaults(self) -> dict:
        return {k: o.default for k, o in self.options.items()}

    def parse_options(self, pairs) -> dict:
        """``["key=value", ...]`` or ``{key: value}`` -> a complete, validated options dict.

        Values in a dict may be parsed values already (from Python) or text (from the CLI)."""
        out = self.defaults()
        items = pairs.items() if isinstance(pairs, dict) else [self.split_pair(p) for p in pairs]
        for key, value in items:
            key = str(key).strip().replace("-", "_")
            if key not in self.options:
                valid = ", ".join(self.options) or "none"
                raise BenchError(f"task {self.name!r} has no option {key!r}{did_you_mean(key, self.options)}; "
                                 f"its options: {valid}")
            option = self.options[key]
            text = value if isinstance(value, str) else option_text(option, key, value)
            try:
                out[key] = option.parse(text)
            except (TypeError, ValueError, OverflowError) as e:
                raise BenchError(f"task option {key}={text[:80]!r} is invalid ({e}); {option.help}") from None
        return out

    @staticmethod
    def split_pair(pair: str) -> tuple[str, str]:
        """``KEY=VALUE`` as (key, value); a BenchError without the ``=``."""
        key, sep, value = str(pair).partition("=")
        if not sep:
            raise BenchError(f"task option {pair!r} is not KEY=VALUE; e.g. -o max_iter=500")
        return key, value

    def check(self, options: dict, data: dict) -> None:
        """Checks that need the data (``data[split].labels``, ``.images``) but no features, run
        before any extraction or training: raise ``BenchError`` with what to do. Optional."""

    def run(self, ctx: RunContext) -> list[dict]:
        raise NotImplementedError


def option_text(option: Option, key: str, value) -> str:
    """A Python value of an option as the ``-o`` text that means the same, so that it goes through
    the option's own parser (``show`` writes it). A list option (its default is a list) also takes
    one item, as a list of one (``-o k=5``). A value the option cannot write is a ``BenchError``
    naming the option."""
    from collections.abc import Iterable, Mapping

    refuse = BenchError(f"task option {key}={str(value)[:80]!r} is not a value it takes; {option.help}")
    if isinstance(option.default, (list, tuple)):
        if isinstance(value, (bytes, bytearray, Mapping)):
            raise refuse
        if not isinstance(value, Iterable):
            value = [value]
    try:
        return option.show(value)
    except (TypeError, ValueError, AttributeError, OverflowError):
        raise refuse from None


def choice(*allowed: str) -> Callable[[str], str]:
    """A parser that accepts one of ``allowed``."""

    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"choose {', '.join(allowed)}")
        return text

    return parse


def show_list(values) -> str:
    """A list option's value as the comma-separated text that parses back to it."""
    return ",".join(str(v) for v in values)


MAX_VALUES = 100  # values of a list option (a grid, k values, budgets): more is a slip, not a grid


def few(parse: Callable[[str], Any], most: int = MAX_VALUES) -> Callable[[str], Any]:
    """``parse`` (of a comma-separated list option) refusing more than ``most`` values: each value
    is a fit or a training, so a long list is hours of work nobody meant."""

    def bounded(text: str):
        values = parse(text)
        if isinstance(values, (list, tuple)) and len(values) > most:
            raise ValueError(f"{len(values)} values; give at most {most}")
        return values

    return bounded


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def int_range(lo: int, hi: int) -> Callable[[str], int]:
    """A parser of integers in lo..hi."""

    def parse(text: str) -> int:
        value = int(text)
        if not lo <= value <= hi:
            raise ValueError(f"must lie in {lo}..{hi}")
        return value

    return parse


def float_range(lo: float, hi: float, *, open_low: bool = False, open_high: bool = False) -> Callable[[str], float]:
    """A parser of finite numbers in [lo, hi] (either end open on request)."""

    def parse(text: str) -> float:
        import math

        value = float(text)
        low_ok = value > lo if open_low else value >= lo
        high_ok = value < hi if open_high else value <= hi
        if not (math.isfinite(value) and low_ok and high_ok):
            raise ValueError(f"must lie in {'(' if open_low else '['}{lo:g}, {hi:g}{')' if open_high else ']'}")
        return value

    return parse


def positive_float(text: str) -> float:
    import math

    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError("must be a positive number")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or a positive integer")
    return value
