"""The HDF5 activation store: one file per backbone fingerprint x dataset x split (x layers).

Layout of a finished file::

    /labels            int64 [N]          class ids
    /indices           int64 [N]          row numbers in the dataset's published split
    /layers/<name>     float32 [N, D]     chunked
    attrs: format, format_version, identity (JSON), provenance (JSON), n_rows, rows_done, complete,
           checksums (JSON: sha256 of each layer's data and of the labels and indices)

``identity`` holds what must match for a file to be reused or resumed (backbone fingerprint,
dataset, split, limit, seed, layers, a digest of the input images and labels).

Writing. Extraction appends each batch's rows to one raw float32 file per layer in
``<out>.parts/`` and then replaces ``progress.json`` there (atomically) with the new row count and
that batch's checksum, so the rows the progress file counts are always on disk whole: a kill, or a
write that fails (disk full), leaves a partial whose counted rows are valid, and the same command
resumes after them (dropping any rows past the count) once every counted batch still matches its
checksum (a part edited or cut since is discarded and extracted again). When every row is in, the HDF5 file is written from the parts
in one streaming pass that also computes the checksums, and renamed into place: a finished name is
always a finished file. One process at a time writes a given file (``bench.lock``): others wait,
then reuse it. Non-finite activations stop the extraction with the layer and row.

Reading. A file is reused only if its identity matches (another is refused, never mixed) and its
checksums match its data (a mismatch, a cut layer or a file without checksums is logged and
extracted again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.errors import BenchError
from bench.lock import exclusive
from bench.records import atomic_write_bytes

FORMAT = "igpt-bench/activations"
FORMAT_VERSION = 1


def data_digest(images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> str:
    h = hashlib.sha256()
    if hasattr(images, "content_digest"):  # lazily decoded images: their files' hashes stand for them
        h.update(images.content_digest())
        arrays = (labels, indices)
    else:
        arrays = (images, labels, indices)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def default_cache_dir() -> Path:
    root = os.environ.get("BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "igpt-bench"
    )
    return Path(root) / "activations"


def cache_path(identity: dict, cache_dir: Path | None = None) -> Path:
    """Where the cache keeps the file for ``identity``: keyed by fingerprint, then the data."""
    base = Path(cache_dir) if cache_dir else default_cache_dir()
    safe = identity["backbone"].replace("/", "--")
    limit = "all" if identity["limit"] is None else f"n{identity['limit']}-s{identity['seed']}"
    layers = hashlib.sha256(",".join(identity["layers"]).encode()).hexdigest()[:8]
    precision = f"-{identity['precision']}" if identity.get("precision", "fp32") != "fp32" else ""
    name = f"{identity['dataset']}-{identity['split']}-{limit}-L{layers}-D{identity['data_digest'][:8]}{precision}.h5"
    return base / safe / identity["fingerprint"][:16] / name


def find_superset(identity: dict, cache_dir: Path | None = None, log=lambda msg: None) -> ActivationFile | None:
    """A finished, intact cached file with the same identity but more layers, if there is one:
    asking for a subset of layers already extracted costs nothing."""
    folder = cache_path(identity, cache_dir).parent
    if not folder.is_dir():
        return None
    want = set(identity["layers"])
    for path in sorted(folder.glob("*.h5")):
        try:
            act = open_activations(path)
        except BenchError:
            continue
        other = dict(act.identity, layers=identity["layers"])
        if other == identity and want <= set(act.layers):
            damaged = act.verify(identity["layers"])
            if not damaged:
                return act
            log(f"not reusing {path}: {damaged}")
    return None


def _nearest_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def check_writable(path: Path, what: str = "--out") -> None:
    """Fail early, before any work, if ``path`` cannot be created (probes with a temporary file
    in the nearest existing folder, so it also holds for root and read-only mounts)."""
    import tempfile

    path = Path(path)
    try:
        name_max = os.pathconf(_nearest_existing(path.parent), "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    # The longest name made beside it: the lock file ``.<name>.lock`` (and ``<name>.parts``).
    if len(path.name.encode()) + 6 > name_max:
        raise BenchError(f"the file name {path.name[:40]}... is too long ({len(path.name.encode())} bytes; this "
                         f"folder allows {name_max - 6} for it); choose a shorter {what}")
    if path.is_dir():
        raise BenchError(f"{path} is a folder; give {what} a file name")
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise BenchError(f"cannot write {path}: {existing} is a file, not a folder; choose another {what}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is read-only")
    except OSError as e:
        raise BenchError(f"cannot write {path} ({e.strerror or e}); choose another {what}") from None


class DamagedFile(BenchError):
    """An activation file whose data no longer matches what was written (or never had checksums)."""


CHECK_BYTES = 8 << 20  # how much of a layer one streaming step (checksum, assembly) holds: flat memory


def _hasher(dtype, shape):
    h = hashlib.sha256()
    h.update(f"{np.dtype(dtype).str}{tuple(shape)}".encode())
    return h


def _block_rows(width: int, itemsize: int = 4) -> int:
    return max(1, CHECK_BYTES // max(1, width * itemsize))


def dataset_checksum(ds) -> str:
    """sha256 of an HDF5 dataset's dtype, shape and values, read in blocks (flat memory)."""
    h = _hasher(ds.dtype, ds.shape)
    rows = _block_rows(int(np.prod(ds.shape[1:], dtype=np.int64)), ds.dtype.itemsize)
    for s in range(0, ds.shape[0], rows):
        h.update(np.ascontiguousarray(ds[s : s + rows]))
    return h.hexdigest()


@dataclass
class ActivationFile:
    """A finished activation file, opened for reading (arrays load on demand)."""

    path: Path
    identity: dict
    provenance: dict
    layers: list[str]
    n_rows: int
    checksums: dict | None = None

    @property
    def labels(self) -> np.ndarray:
        import h5py

        with h5py.File(self.path, "r") as f:
            return f["labels"][:]

    @property
    def indices(self) -> np.ndarray:
        import h5py

        with h5py.File(self.path, "r") as f:
            return f["indices"][:]

    def read(self, layer: str) -> np.ndarray:
        """One layer's features [N, D]; a group (``h2+h3``) is its members' features side by side."""
        import h5py

        from bench.layers import group_members, is_group

        if is_group(layer):
            return np.concatenate([self.read(member) for member in group_members(layer)], axis=1)
        if layer not in self.layers:
            raise BenchError(f"{self.path} holds no layer {layer!r}; it holds {', '.join(self.layers)}")
        with h5py.File(self.path, "r") as f:
            return f["layers"][layer][:]

    def verify(self, layers: list[str] | None = None) -> str:
        """'' when the labels, indices and ``layers`` (default: all) match the checksums written
        with the file, else what does not (one streaming read of those arrays)."""
        import h5py

        if not self.checksums:
            return "it has no checksums (written by an older igpt-bench)"
        names = ["labels", "indices"] + [f"layers/{layer}" for layer in (layers or self.layers)]
        try:
            with h5py.File(self.path, "r") as f:
                bad = [n for n in names if n not in f or dataset_checksum(f[n]) != self.checksums.get(n)]
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as e:  # flipped bytes in HDF5's structures
            return f"its data cannot be read back ({type(e).__name__})"
        return f"the checksum of {', '.join(bad)} does not match its data (changed since it was written)" if bad else ""


def _read_attrs(path: Path) -> dict:
    """Attributes of an activation file; BenchError when it is not one or cannot be read."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            attrs["_shapes"] = {name: f["layers"][name].shape for name in f["layers"]} if "layers" in f else {}
            attrs["_shapes"].update({name: f[name].shape for name in ("labels", "indices") if name in f})
    except OSError as e:
        raise BenchError(
            f"{path} is not a readable HDF5 file (truncated or corrupt: {str(e).splitlines()[0][:80]}); "
            "delete it and extract again"
        ) from None
    if attrs.get("format") != FORMAT:
        raise BenchError(f"{path} is not an igpt-bench activation file; choose another path or delete it")
    if int(attrs.get("format_version", -1)) != FORMAT_VERSION:
        raise BenchError(f"{path} has activation format version {attrs.get('format_version')}, "
                         f"this igpt-bench reads {FORMAT_VERSION}; extract again")
    try:
        attrs["identity"] = json.loads(attrs["identity"])
        attrs["provenance"] = json.loads(attrs["provenance"])
        attrs["checksums"] = json.loads(attrs["checksums"]) if "checksums" in attrs else None
    except (KeyError, TypeError, ValueError):
        raise BenchError(f"{path} has damaged attributes; delete it and extract again") from None
    return attrs


def open_activations(path: str | Path) -> ActivationFile:
    """Open a finished activation file; refuses foreign, truncated, unfinished or cut files (the
    checksums are checked by ``verify``, which reads the data)."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"activation file {path} does not exist; run `bench extract` first")
    a = _read_attrs(path)
    if not bool(a.get("complete")):
        raise BenchError(f"{path} is unfinished ({a.get('rows_done')}/{a.get('n_rows')} rows); "
                         "delete it and extract again")
    layers, n = list(a["identity"]["layers"]), int(a["n_rows"])
    widths = a["provenance"].get("layers", {})
    shapes = a["_shapes"]
    for name in ["labels", "indices", *layers]:
        want = (n,) if name in ("labels", "indices") else (n, widths.get(name, shapes.get(name, (0, 0))[-1]))
        if shapes.get(name) != want:
            raise DamagedFile(f"{path}: {name} has shape {shapes.get(name)}, not {want} (cut or missing); "
                              "delete it and extract again")
    return ActivationFile(path, a["identity"], a["provenance"], layers, n, a["checksums"])


def _identity_diff(a: dict, b: dict) -> str:
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(f"{k}: {str(a.get(k))[:24]} vs {str(b.get(k))[:24]}" for k in keys[:3])


def _reusable(out: Path, identity: dict, owned: bool = False) -> tuple[ActivationFile | None, str]:
    """(the file, '') when ``out`` holds ``identity`` intact; (None, why) when it holds it damaged
    (or, ``owned``, cannot be read at all); BenchError when it holds something else."""
    try:
        a = _read_attrs(out)
    except BenchError as e:
        if owned:
            return None, f"unreadable: {str(e).split(';')[0]}"
        raise
    if a["identity"] != identity:
        raise BenchError(f"{out} holds other activations ({_identity_diff(a['identity'], identity)}); "
                         "choose another --out or delete it")
    try:
        act = open_activations(out)
    except DamagedFile as e:
        return None, str(e).split(": ", 1)[1].split(";")[0]
    damaged = act.verify()
    return (None, damaged) if damaged else (act, "")


class NonFinite(BenchError):
    pass


def _first_nonfinite(arr: np.ndarray) -> int | None:
    bad = ~np.isfinite(arr)
    if not bad.any():
        return None
    return int(np.flatnonzero(bad.any(axis=1))[0])


OVERFLOW = 1e30  # activations this large are an overflow on the way, not features


class Degenerate(BenchError):
    """A layer's activations carry no information (every row the same) or are overflowing."""


def degenerate(low: np.ndarray, high: np.ndarray, n_rows: int) -> str:
    """'' for usable features, else what is wrong, from each feature's smallest and largest value
    over all rows: every row identical (all zero in particular), or values near float32's limit."""
    if max(float(np.abs(low).max(initial=0)), float(np.abs(high).max(initial=0))) > OVERFLOW:
        return f"values beyond {OVERFLOW:g} (overflowing)"
    if n_rows >= 2 and bool(np.all(low == high)):
        return "every row is all zero" if not np.any(low) else "every row is the same (constant features)"
    return ""


def parts_dir(out: Path) -> Path:
    return Path(out).with_name(Path(out).name + ".parts")


def shard_rows(n_rows: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of rank ``rank`` of ``world``: whole batches, so every batch holds the rows it
    holds in a single process (and gives the same numbers)."""
    batches = -(-n_rows // batch_size)
    lo, hi = batches * rank // world, batches * (rank + 1) // world
    return min(lo * batch_size, n_rows), min(hi * batch_size, n_rows)


def _shard_dir(parts: Path, rank: int, world: int) -> Path:
    return parts / f"shard-{rank}-of-{world}"


def _atomic_json(path: Path, doc: dict) -> None:
    atomic_write_bytes(path, json.dumps(doc).encode())


def _progress(shard: Path, meta: dict) -> int | None:
    """Rows done in ``shard`` if it was made for ``meta`` and its layer files hold them as they were
    written (each counted batch's checksum matches), else None: rows edited or cut after they were
    counted are never carried into a finished file."""
    try:
        progress = json.loads((shard / "progress.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(progress, dict) or progress.get("meta") != meta:
        return None
    try:
        done = int(progress.get("rows_done", 0))
    except (TypeError, ValueError):
        return None
    for i, w in enumerate(meta["widths"].values()):
        f = shard / f"{i:03d}.f32"
        if not f.is_file() or f.stat().st_size < (done - meta["rows"][0]) * w * 4:
            return None
    return done if _batches_intact(shard, meta, done, progress.get("batches")) else None


def _batch_digest(arrays) -> str:
    """The checksum of one batch: its rows of every layer, in layer order, as float32 bytes."""
    h = hashlib.sha256()
    for arr in arrays:
        h.update(memoryview(np.ascontiguousarray(arr, dtype=np.float32)).cast("B"))
    return h.hexdigest()


def _batches_intact(shard: Path, meta: dict, done: int, batches) -> bool:
    """Whether ``batches`` ([[row end, checksum], ...] in order) covers rows lo..done and each
    batch's bytes in the layer files still hash to its checksum."""
    lo = meta["rows"][0]
    if not isinstance(batches, list):
        return done == lo  # an empty shard needs none; counted rows without checksums are not trusted
    widths = list(meta["widths"].values())
    files = [open(shard / f"{i:03d}.f32", "rb") for i in range(len(widths))]  # noqa: SIM115
    try:
        start = lo
        for entry in batches:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int)
                    and start < entry[0] <= done):
                return False
            rows = entry[0] - start
            arrays = [np.frombuffer(f.read(rows * w * 4), dtype=np.float32) for f, w in zip(files, widths)]
            if any(len(a) != rows * w for a, w in zip(arrays, widths)) or _batch_digest(arrays) != entry[1]:
                return False
            start = entry[0]
        return start == done
    finally:
        _close(files)


def _prepare_parts(out: Path, meta: dict, world: int, log) -> int:
    """Rank 0, holding the lock: leave only shards this run can resume, and say how many rows
    they hold (what the space check need not count again)."""
    parts = parts_dir(out)
    legacy = out.with_name(out.name + ".partial")
    if legacy.exists():  # the single-file partials of igpt-bench before the parts folders
        log(f"discarding {legacy}: a partial file of an older igpt-bench")
        legacy.unlink()
    out.with_name(out.name + ".tmp").unlink(missing_ok=True)  # a killed assembly's
    if not parts.is_dir():
        return 0
    done = 0
    keep = set()
    for rank in range(world):
        lo, hi = shard_rows(meta["n_rows"], meta["batch_size"], rank, world)
        rows = _progress(_shard_dir(parts, rank, world), dict(meta, rows=[lo, hi]))
        if rows is not None:
            keep.add(_shard_dir(parts, rank, world).name)
            done += rows - lo
    for p in parts.iterdir():
        if p.name not in keep:
            log(f"discarding {p}: it was made by another configuration or number of processes, or is damaged")
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return done


def final_size(n_rows: int, widths: dict[str, int]) -> int:
    """A bound on a finished file's size: the arrays, plus HDF5's metadata (chunk indexes, attributes)."""
    data = n_rows * (4 * sum(widths.values()) + 16)
    return data + data // 64 + (64 << 10)


def _check_space(out: Path, n_rows: int, start: int, widths: dict[str, int]) -> None:
    """Before any work: room on the disk for the rest of the parts and the finished file, and a
    file size limit (``ulimit -f``) that lets the finished file be written. HDF5 does not survive
    a failed write (it leaves an unreadable file and may crash on close), so it must not run into one."""
    final = final_size(n_rows, widths)
    need = (n_rows - start) * 4 * sum(widths.values()) + final
    free = shutil.disk_usage(out.parent).free
    if free < need:
        raise BenchError(f"{out} needs about {need / 2**20:.1f} MiB more in {out.parent}, but {free / 2**20:.1f} "
                         "MiB are free; free space or choose another --out (or $BENCH_CACHE)")
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):
        return
    if limit != resource.RLIM_INFINITY and limit < final:
        raise BenchError(f"{out} will be about {final / 2**20:.1f} MiB, over this shell's file size limit of "
                         f"{limit / 2**20:.1f} MiB (ulimit -f); raise it or use --limit")


def _close(files) -> None:
    """Close the layer files, quietly: after a failed write, closing retries the buffered bytes
    and fails again, and what they hold is past the progress count anyway."""
    for f in files:
        try:
            f.close()
        except OSError:
            pass


class WriteFailed(BenchError):
    """Writing failed (a full disk): what is counted stays, and the same command resumes."""


def _write_error(e: OSError, where: Path, rows: int, n: int) -> BenchError:
    return WriteFailed(f"writing {where} failed ({e.strerror or e}) with {rows} of {n} rows kept; free space "
                      "(or fix the folder) and rerun the same command to resume")


def _extract_shard(shard: Path, meta: dict, widths: dict[str, int], batches, indices: np.ndarray,
                   progress) -> int:
    """Fill ``shard`` with rows ``meta["rows"]``, resuming after the rows its progress file
    counts; returns where it started. Each batch's rows are appended to one raw float32 file per
    layer, then the progress file is replaced (atomically) with the new count, so the counted rows
    are always on disk whole."""
    lo, hi = meta["rows"]
    start = _progress(shard, meta)
    if start is None:
        if shard.exists():
            shutil.rmtree(shard)
        shard.mkdir(parents=True)
        for i in range(len(widths)):
            (shard / f"{i:03d}.f32").touch()
        _atomic_json(shard / "progress.json", {"meta": meta, "rows_done": lo, "batches": []})
        start = lo
    digests = json.loads((shard / "progress.json").read_text())["batches"]
    for i, w in enumerate(widths.values()):
        os.truncate(shard / f"{i:03d}.f32", (start - lo) * w * 4)  # rows past the last count
    if progress is not None:
        progress.advance(start - lo)
    files = [open(shard / f"{i:03d}.f32", "ab") for i in range(len(widths))]  # noqa: SIM115
    done = start
    try:
        for b_start, b_end, feats in batches(start, hi):
            written = []
            for (layer, w), f in zip(widths.items(), files, strict=True):
                arr = np.ascontiguousarray(feats[layer], dtype=np.float32).reshape(b_end - b_start, w)
                written.append(arr)
                row = _first_nonfinite(arr)
                if row is not None:
                    raise NonFinite(
                        f"the backbone gave non-finite activations (NaN or inf) in layer {layer} at row "
                        f"{b_start + row} (dataset index {int(indices[b_start + row])}); check its weights "
                        "and inputs — nothing was kept")
                f.write(memoryview(arr).cast("B"))
            for f in files:
                f.flush()
                os.fsync(f.fileno())  # on the disk before the count says so (power loss too)
            digests.append([b_end, _batch_digest(written)])
            _atomic_json(shard / "progress.json", {"meta": meta, "rows_done": b_end, "batches": digests})
            done = b_end
            if progress is not None:
                progress.advance(b_end - b_start)
    except WriteFailed:
        _close(files)
        raise
    except BenchError:  # non-finite values, an unreadable image: a rerun would not go past them
        _close(files)
        shutil.rmtree(shard)
        raise
    except OSError as e:
        _close(files)
        raise _write_error(e, shard, done - lo, hi - lo) from None
    _close(files)
    return start


class Group:
    """The processes of a torchrun launch as the writer sees them: rank 0 decides and tells the
    others, and a user error on any rank ends every rank with the same one line (no rank is left
    waiting in a collective for one that gave up)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def share(self, obj):
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def decide(self, fn):
        """``fn()`` on rank 0, its result (or its BenchError) on every rank."""
        if self.world == 1:
            return fn()
        out = ("error", None)
        if self.rank == 0:
            try:
                out = ("ok", fn())
            except BenchError as e:
                self.share(("error", str(e)))
                raise
        kind, value = self.share(out)
        if kind == "error":
            raise BenchError(value)
        return value

    def each(self, fn, on_error=lambda kinds: None):
        """``fn()`` on every rank; if it raised a BenchError anywhere, every rank raises it (rank 0,
        first, runs ``on_error`` with the names of the error classes)."""
        if self.world == 1:
            try:
                return fn()
            except BenchError as e:
                on_error({type(e).__name__})
                raise
        import torch.distributed as dist

        result, err = None, None
        try:
            result = fn()
        except BenchError as e:
            err = e
        errors = [None] * self.world
        dist.all_gather_object(errors, (type(err).__name__, str(err)) if err else None)
        found = [e for e in errors if e]
        if found:
            if self.rank == 0:
                on_error({kind for kind, _ in found})
            if err is not None:
                raise err
            raise BenchError(found[0][1])
        return result


def write_activations(
    out: Path,
    identity: dict,
    provenance: dict,
    n_rows: int,
    labels: np.ndarray,
    indices: np.ndarray,
    widths: dict[str, int],
    batches,
    *,
    batch_size: int,
    progress=None,
    log=lambda msg: None,
    rank: int = 0,
    world: int = 1,
    owned: bool = False,
) -> tuple[ActivationFile, str]:
    """Fill ``out`` from ``batches(start, end) -> iterator of (start, end, {layer: array})``.

    Under torchrun (``world`` > 1, the process group started) every rank calls this: each
    extracts its shard of rows (``shard_rows``) into ``<out>.parts/shard-<rank>-of-<world>/``, and
    rank 0, which holds the lock meanwhile, writes the one file from the shards in rank order.
    ``owned``: ``out`` is a name the cache chose, so a file there that cannot even be read is
    made again (at a user's ``--out`` it is refused: it may be somebody else's file). Returns
    the opened file and what happened: "reused", "resumed …", "extracted", or "extracted again
    (why)" when a file with the same identity was damaged.
    """
    out = Path(out)
    group = Group(rank, world)
    act = group.decide(lambda: _reusable(out, identity, owned)[0] if out.exists() else None)
    if act is not None:
        return act, "reused"
    meta = {"identity": identity, "batch_size": batch_size, "n_rows": n_rows, "widths": widths}
    parts = parts_dir(out)
    with exclusive(out, "extracting", log) if rank == 0 else contextlib.nullcontext():
        kind, again, done = group.decide(lambda: _plan(out, identity, meta, world, owned, log))
        if kind == "extract":
            lo, hi = shard_rows(n_rows, batch_size, rank, world)
            group.each(lambda: _extract_shard(_shard_dir(parts, rank, world), dict(meta, rows=[lo, hi]), widths,
                                              batches, indices, progress),
                       on_error=lambda kinds: shutil.rmtree(parts, ignore_errors=True) if kinds - {"WriteFailed"}
                       else None)  # an input error comes back on a rerun: nothing is kept
            group.decide(lambda: _assemble(out, [_shard_dir(parts, r, world) for r in range(world)], identity,
                                           provenance, n_rows, labels, indices, widths, batch_size))
    act = open_activations(out)
    if kind == "reuse":
        return act, "reused"
    if again:
        return act, f"extracted again ({again})"
    if done:
        return act, f"resumed at row {done}" if world == 1 else f"resumed ({done} of {n_rows} rows were in)"
    return act, "extracted"


def _plan(out: Path, identity: dict, meta: dict, world: int, owned: bool, log) -> tuple[str, str, int]:
    """Rank 0, holding the lock: ("reuse", "", 0) when another process finished the file while this
    one waited; else ("extract", why a damaged file is made again or "", rows already in the parts),
    with the parts readied and the room for the rest checked."""
    again = ""
    if out.exists():
        act, again = _reusable(out, identity, owned)
        if act is not None:
            return "reuse", "", 0
        log(f"extracting {out} again: {again}")
        out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _prepare_parts(out, meta, world, log)
    _check_space(out, meta["n_rows"], done, meta["widths"])
    return "extract", again, done


def _assemble(out: Path, shards: list[Path], identity: dict, provenance: dict, n_rows: int, labels: np.ndarray,
              indices: np.ndarray, widths: dict[str, int], batch_size: int) -> None:
    """Write the HDF5 file from the shards (in row order) in one streaming pass that also computes
    the checksums; ``out`` appears only whole. A failed write leaves the shards, so a rerun starts
    here again."""
    import h5py

    tmp = out.with_name(out.name + ".tmp")
    checksums = {}
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "identity": json.dumps(identity, sort_keys=True),
                "provenance": json.dumps(provenance, sort_keys=True, default=str),
                "n_rows": n_rows,
                "rows_done": n_rows,
                "batch_size": batch_size,
                "complete": False,
            })
            for name, arr in (("labels", labels), ("indices", indices)):
                arr = np.ascontiguousarray(arr, dtype=np.int64)
                f.create_dataset(name, data=arr)
                checksums[name] = _hasher(arr.dtype, arr.shape)
                checksums[name].update(arr)
            g = f.create_group("layers")
            for i, (layer, d) in enumerate(widths.items()):
                chunk = int(max(1, min(n_rows, (1 << 20) // (4 * max(d, 1)))))
                ds = g.create_dataset(layer, shape=(n_rows, d), dtype="float32", chunks=(chunk, d))
                h = checksums[f"layers/{layer}"] = _hasher(np.float32, (n_rows, d))
                rows, at = _block_rows(d), 0
                low, high = np.full(d, np.inf, np.float32), np.full(d, -np.inf, np.float32)
                for shard in shards:
                    with open(shard / f"{i:03d}.f32", "rb") as src:
                        while True:
                            block = np.fromfile(src, dtype=np.float32, count=rows * d).reshape(-1, d)
                            if not len(block):
                                break
                            ds[at : at + len(block)] = block
                            h.update(block)
                            np.minimum(low, block.min(axis=0), out=low)
                            np.maximum(high, block.max(axis=0), out=high)
                            at += len(block)
                if at != n_rows:
                    raise DamagedFile(f"{parts_dir(out)} holds {at} of {n_rows} rows of {layer}; delete it and "
                                      "extract again")
                problem = degenerate(low, high, n_rows)
                if problem:
                    shutil.rmtree(shards[0].parent, ignore_errors=True)  # the same inputs give the same again
                    raise Degenerate(f"the backbone gave degenerate activations in layer {layer}: {problem}; check "
                                     "its weights (a scale that overflows the norm, truncated values) and inputs — "
                                     "nothing was kept")
            f.attrs["checksums"] = json.dumps({k: h.hexdigest() for k, h in checksums.items()}, sort_keys=True)
            f.attrs["complete"] = True
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
        shutil.rmtree(shards[0].parent)
    except (OSError, RuntimeError) as e:  # h5py raises RuntimeError for some failed writes
        tmp.unlink(missing_ok=True)
        raise _write_error(e if isinstance(e, OSError) else OSError(str(e).split("(")[0].strip()), out, n_rows,
                           n_rows) from None
    except (DamagedFile, Degenerate):
        tmp.unlink(missing_ok=True)
        raise
