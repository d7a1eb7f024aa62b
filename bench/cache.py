"""What the activation cache holds (``bench cache list``), and removing what no results file uses
(``bench cache prune``).

The cache is ``bench.store``'s: ``<cache>/<backbone>/<fingerprint[:16]>/<dataset>-<split>-….h5``;
beside a file being written, its ``<name>.parts/`` folder (shards, each with a ``progress.json``)
and its lock ``.<name>.lock`` (``bench.lock``). A results file names the activation files its run
read in ``run.splits[<split>].activations``.

A file counts as referenced when a results file names it by the same last three path parts
(backbone folder, fingerprint folder, file name), wherever the cache was then: a cache that moved
keeps its references. A job holds the readers' lock of each file it uses (``reading``: shared,
``.<name>.readers.lock``) from before its extraction until its results file names the file; the
extraction itself holds the writers' lock (``bench.store``). Pruning takes both without waiting,
so a file a running job writes or reads is left in place, and it reads the results folders only
once it holds them, so a run that finished meanwhile keeps what it names. Empty folders stay: a
job may be about to write into them.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import BenchError
from bench.lock import Busy, exclusive, held, shared
from bench.store import FORMAT, default_cache_dir

LOCK_BATCH = 128  # files locked at once while pruning (two locks each): well under the usual open-file limit


@dataclass
class Entry:
    """One activation file of the cache, finished or partial."""

    path: Path  # the finished file's name (a partial's parts lie beside it)
    state: str  # "finished", "partial" (an extraction killed or under way) or "unreadable"
    backbone: str | None = None
    dataset: str | None = None
    split: str | None = None
    layers: list[str] = field(default_factory=list)
    limit: int | None = None
    seed: int | None = None
    precision: str = "fp32"
    rows: int | None = None  # rows in the file (a partial: rows done)
    of_rows: int | None = None  # a partial: rows it will have
    size: int = 0  # bytes, the file with its parts and leftovers
    last_use: float = 0.0  # seconds since the epoch: the last read (atime, as the mount keeps it) or write
    references: list[Path] = field(default_factory=list)  # results files naming it
    in_use: bool = False  # a running job holds its lock

    @property
    def key(self) -> tuple[str, ...]:
        return key(self.path)


def _readers(path: str | Path) -> Path:
    """The name whose lock (``bench.lock.lock_path``) readers of ``path`` share: apart from the
    writers' lock, so a job can hold it while its own process extracts the file."""
    return Path(path).with_name(Path(path).name + ".readers")


@contextlib.contextmanager
def reading(path: str | Path, log=lambda msg: None):
    """Keep ``path`` from ``prune`` for the block (it need not exist yet); any number of readers."""
    with shared(_readers(path), "reading", log):
        yield


def in_use(path: str | Path) -> bool:
    """Whether a running job writes or reads ``path`` now."""
    return held(path) or held(_readers(path))


def key(path: str | Path) -> tuple[str, ...]:
    """What a results file's reference and a cache file must share: backbone folder, fingerprint
    folder and file name."""
    return Path(path).parts[-3:]


def cache_root(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir) if cache_dir else default_cache_dir()


def entries(cache_dir: str | Path | None = None, results=None) -> list[Entry]:
    """Every activation file under the cache, sorted by backbone, dataset and split, each with
    the results files under ``results`` (folders or files) that name it (none when ``results`` is
    None) and whether a running job holds it."""
    root = cache_root(cache_dir)
    if root.exists() and not root.is_dir():
        raise BenchError(f"the cache {root} is not a folder; point --cache (or $BENCH_CACHE) at the cache folder")
    names: dict[Path, list[Path]] = {}
    if root.is_dir():
        for pattern in ("*/*/*.h5", "*/*/*.h5.parts", "*/*/*.h5.tmp"):
            for p in root.glob(pattern):
                base = p.with_name(p.name.removesuffix(".parts").removesuffix(".tmp"))
                names.setdefault(base, []).append(p)
    found = [e for e in (_entry(base, parts) for base, parts in names.items()) if e is not None]
    refs = references(results) if results else {}
    for e in found:
        e.references = refs.get(e.key, [])
        e.in_use = in_use(e.path)
    return sorted(found, key=lambda e: (e.backbone or "", e.dataset or "", e.split or "", str(e.path)))


def _entry(base: Path, paths: list[Path]) -> Entry | None:
    """The cache entry of ``base`` from its file (attributes only: no data is read) or its parts;
    None for an HDF5 file that is not an activation file (never ours to list or remove)."""
    size = sum(_size(p) for p in paths)
    if base.is_file():
        attrs = _attributes(base)
        if attrs is None:
            return Entry(base, "unreadable", size=size, last_use=_last_use(base))
        if attrs.get("format") != FORMAT:
            return None
        try:
            ident = json.loads(attrs["identity"])
        except (KeyError, TypeError, ValueError):
            return Entry(base, "unreadable", size=size, last_use=_last_use(base))
        return Entry(base, "finished", **_described(ident), rows=_int(attrs.get("n_rows")), size=size,
                     last_use=_last_use(base))
    parts = base.with_name(base.name + ".parts")
    progress = [_json(p) for p in sorted(parts.glob("shard-*/progress.json"))] if parts.is_dir() else []
    progress = [p for p in progress if isinstance(p, dict) and isinstance(p.get("meta"), dict)]
    last_use = max((_last_use(p) for p in paths), default=0.0)
    if not progress:
        return Entry(base, "partial", size=size, last_use=last_use)
    meta = progress[0]["meta"]
    done = sum(max(0, (_int(p.get("rows_done")) or 0) - (_int((p["meta"].get("rows") or [0])[0]) or 0))
               for p in progress)  # each shard counts from its first row
    return Entry(base, "partial", **_described(meta.get("identity") or {}), rows=done,
                 of_rows=_int(meta.get("n_rows")), size=size, last_use=last_use)


def _described(ident: dict) -> dict:
    return {"backbone": ident.get("backbone"), "dataset": ident.get("dataset"), "split": ident.get("split"),
            "layers": list(ident.get("layers") or []), "limit": ident.get("limit"), "seed": ident.get("seed"),
            "precision": ident.get("precision", "fp32")}


def _attributes(path: Path) -> dict | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {k: f.attrs[k] for k in ("format", "identity", "n_rows") if k in f.attrs}
    except (OSError, RuntimeError):
        return None


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def _last_use(path: Path) -> float:
    try:
        st = path.stat()
    except OSError:
        return 0.0
    return max(st.st_atime, st.st_mtime)


def references(results) -> dict[tuple[str, ...], list[Path]]:
    """key -> the results files (under ``results``: folders or files) that name an activation file;
    a results file that cannot be read is an error (it may name files a prune must keep)."""
    from bench.records import collect

    paths = [results] if isinstance(results, (str, Path)) else list(results)
    out: dict[tuple[str, ...], list[Path]] = {}
    for f in collect(paths):
        try:
            run = json.loads(Path(f).read_text()).get("run") or {}
            splits = run.get("splits") or {}
            named = [info.get("activations") for info in splits.values() if isinstance(info, dict)]
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
            raise BenchError(f"cannot read the results file {f} ({type(e).__name__}); it may name cache files to "
                             "keep: fix or move it, then try again") from None
        for name in named:
            if name:
                out.setdefault(key(name), []).append(Path(f))
    return out


@dataclass
class Pruned:
    """What ``prune`` did (or, ``dry_run``, would do)."""

    removed: list[Entry]
    referenced: list[Entry]  # kept: a results file names them
    in_use: list[Entry]  # kept: a running job holds them
    dry_run: bool = False

    @property
    def freed(self) -> int:
        return sum(e.size for e in self.removed)


def prune(results, cache_dir: str | Path | None = None, dry_run: bool = False, log=lambda msg: None) -> Pruned:
    """Remove every cache file (with its parts) that no results file under ``results`` names and
    no running job holds; ``dry_run``: say which, remove nothing (and take no lock)."""
    if not results:
        raise BenchError("name the results folders whose runs' cache files to keep (--results DIR, repeatable)")
    listed = entries(cache_dir, results)  # also checks every results folder before any removal
    referenced = [e for e in listed if e.references]
    candidates = [e for e in listed if not e.references]
    if dry_run:
        busy = [e for e in candidates if e.in_use]
        return Pruned([e for e in candidates if not e.in_use], referenced, busy, dry_run=True)
    removed, busy = [], []
    for start in range(0, len(candidates), LOCK_BATCH):
        with contextlib.ExitStack() as locks:
            locked = []
            for e in candidates[start:start + LOCK_BATCH]:
                try:
                    with contextlib.ExitStack() as both:
                        both.enter_context(exclusive(e.path, "pruning", wait=False))
                        both.enter_context(exclusive(_readers(e.path), "pruning", wait=False))
                        locks.enter_context(both.pop_all())
                    locked.append(e)
                except Busy:
                    busy.append(e)
            refs = references(results)  # read again under the locks: a run that finished meanwhile keeps its files
            for e in locked:
                if e.key in refs:
                    e.references = refs[e.key]
                    referenced.append(e)
                    continue
                _remove(e)
                log(f"removed {e.path} ({e.size / 2**20:.1f} MiB)")
                removed.append(e)
    return Pruned(removed, referenced, busy)


def _remove(e: Entry) -> None:
    for p in (e.path, e.path.with_name(e.path.name + ".tmp")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    parts = e.path.with_name(e.path.name + ".parts")
    if parts.is_dir():
        shutil.rmtree(parts)


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def table(found: list[Entry], with_references: bool):
    """The entries as ``bench cache list`` prints them (a pandas DataFrame): the fingerprint tells
    apart checkpoints of one backbone."""
    import time

    import pandas as pd

    rows = []
    for e in found:
        layers = e.layers if len(e.layers) <= 3 else [e.layers[0], "…", e.layers[-1]]
        state = e.state if e.state != "partial" else f"partial ({e.rows or 0} of {e.of_rows or '?'} rows)"
        row = {"backbone": e.backbone or "?", "fingerprint": e.path.parent.name, "dataset": e.dataset or "?",
               "split": e.split or "?", "layers": f"{','.join(layers)} ({len(e.layers)})" if e.layers else "?",
               "limit": "all" if e.limit is None else f"{e.limit} (seed {e.seed})", "size": human_size(e.size),
               "last use": time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_use)) if e.last_use else "?",
               "state": state + (", in use" if e.in_use else "") + (f", {e.precision}" if e.precision != "fp32"
                                                                    else "")}
        if with_references:
            row["results"] = str(len(e.references)) if e.references else "none"
        rows.append(row)
    return pd.DataFrame(rows)
