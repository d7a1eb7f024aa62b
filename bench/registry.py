"""Name -> plugin registries, fed by a decorator and by entry points, loaded lazily.

Three registries exist: ``BACKBONES``, ``TASKS`` and ``DATASETS``, scanning the entry-point
groups ``bench.backbones``, ``bench.tasks`` and ``bench.datasets``. Our own built-ins are listed
in our pyproject under those groups, exactly as a third-party plugin would list its own.

Listing names reads entry-point metadata only; the module behind a name is imported the first
time that name is resolved. A name claimed by two sources is an error naming both. The scan is
thread-safe: threads that meet an unscanned registry wait for the one that fills it.
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from bench.errors import BenchError, did_you_mean


@dataclass
class _Entry:
    name: str
    source: str  # e.g. "igpt-bench: backbones.pixels:PixelsBackbone" or "decorator in mymod"
    entry_point: EntryPoint | None = None
    obj: Any = None

    def load(self) -> Any:
        if self.obj is None:
            assert self.entry_point is not None
            self.obj = self.entry_point.load()
        return self.obj


def match(names, pattern: str | None) -> list[str]:
    """``names`` matching the fnmatch ``pattern`` (all of them when there is none), in order."""
    return [n for n in names if not pattern or fnmatch.fnmatchcase(n, pattern)]


class Registry:
    """A lazy mapping of names to plugin objects (classes or factories)."""

    def __init__(self, kind: str, group: str):
        self.kind = kind  # "backbone", "task", "dataset": used in messages
        self.group = group
        self._entries: dict[str, _Entry] = {}
        self._scanned = False  # set only once _entries holds every entry point
        self._lock = threading.RLock()  # reentrant: a decorator run by an import calls _add -> _scan

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str | None = None) -> Callable[[Any], Any]:
        """Decorator: ``@BACKBONES.register("my-net")`` above a class or factory."""

        def deco(obj: Any) -> Any:
            key = name or getattr(obj, "name", None) or obj.__name__
            self._add(_Entry(key, f"{obj.__module__}:{obj.__qualname__}", obj=obj))
            return obj

        return deco

    def _add(self, entry: _Entry) -> None:
        with self._lock:
            self._scan()
            old = self._entries.get(entry.name)
            if old is not None and old.entry_point is None and old.source == entry.source:
                # The same module:class registering again (a notebook cell run twice, a reloaded
                # module): the newer definition replaces the older one.
                self._entries[entry.name] = entry
                return
            if old is not None:
                # Loading an entry point imports its module; if that module also uses the decorator
                # for the very same object, that is one registration, not two.
                if (
                    entry.obj is not None
                    and old.entry_point is not None
                    and old.entry_point.value == f"{entry.obj.__module__}:{entry.obj.__qualname__}"
                ):
                    return
                raise BenchError(
                    f"{self.kind} name {entry.name!r} is registered twice: by {old.source} and by "
                    f"{entry.source}; uninstall or rename one of them"
                )
            self._entries[entry.name] = entry

    def _scan(self) -> None:
        if self._scanned:
            return
        with self._lock:
            if not self._scanned:  # another thread may have filled it while this one waited
                self._entries.update(self._entry_points())
                self._scanned = True

    def _entry_points(self) -> dict[str, _Entry]:
        seen: dict[str, _Entry] = {}
        for ep in entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            source = f"{dist.name if dist else '?'} ({ep.value})"
            if ep.name in seen:
                if seen[ep.name].entry_point.value == ep.value:  # same dist seen twice on sys.path
                    continue
                raise BenchError(
                    f"{self.kind} name {ep.name!r} is registered twice: by {seen[ep.name].source} "
                    f"and by {source}; uninstall or rename one of them"
                )
            seen[ep.name] = _Entry(ep.name, source, entry_point=ep)
        return seen

    # -- lookup -------------------------------------------------------------------------------
    def names(self, pattern: str | None = None) -> list[str]:
        self._scan()
        with self._lock:
            return match(sorted(self._entries), pattern)

    def source(self, name: str) -> str:
        self._scan()
        return self._entries[name].source

    def __contains__(self, name: str) -> bool:
        self._scan()
        return name in self._entries

    def get(self, name: str, extra_choices: list[str] | None = None) -> Any:
        """The object registered under ``name``; an unknown name says "did you mean"."""
        self._scan()
        entry = self._entries.get(name)
        if entry is None:
            with self._lock:
                known = list(self._entries)
            hint = did_you_mean(name, known + (extra_choices or []))
            raise BenchError(
                f"unknown {self.kind} {name!r}{hint}; see `bench {self.kind}s list`"
            )
        return entry.load()


BACKBONES = Registry("backbone", "bench.backbones")
TASKS = Registry("task", "bench.tasks")
DATASETS = Registry("dataset", "bench.datasets")
