"""Writing an activation file (the format is ``bench.store``'s).

Extraction appends each batch's rows to one raw float32 file per layer in ``<out>.parts/`` and
then replaces ``progress.json`` there (atomically) with the new row count and that batch's
checksum, so the rows the progress file counts are always on disk whole: a kill, or a write that
fails (disk full), leaves a partial whose counted rows are valid, and the same command resumes
after them (dropping any rows past the count) once every counted batch still matches its checksum
(a part edited or cut since is discarded and extracted again). When every row is in, the HDF5
file is written from the parts in one streaming pass that also computes the checksums, and
renamed into place: a finished name is always a finished file. One process at a time writes a
given file (``bench.lock``): others wait, then reuse it. Non-finite activations stop the
extraction with the layer and row. Under torchrun each rank writes its own shard of rows and
rank 0 assembles them (``bench.distributed.Group`` carries the decisions).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from bench.distributed import Group
from bench.errors import BenchError
from bench.files import atomic_write_bytes, check_space
from bench.lock import exclusive
from bench.store import (
    FORMAT,
    FORMAT_VERSION,
    ActivationFile,
    DamagedFile,
    block_rows,
    hasher,
    open_activations,
    reusable,
)


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


def batch_digest(arrays) -> str:
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
            if any(len(a) != rows * w for a, w in zip(arrays, widths)) or batch_digest(arrays) != entry[1]:
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
    """Before any work: room on the disk for the rest of the parts and the finished file, which a
    file size limit (``ulimit -f``) must also let be written."""
    final = final_size(n_rows, widths)
    check_space(out, (n_rows - start) * 4 * sum(widths.values()) + final, final,
                instead="choose another --out (or $BENCH_CACHE)", smaller="use --limit")


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
            digests.append([b_end, batch_digest(written)])
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
    act = group.decide(lambda: reusable(out, identity, owned)[0] if out.exists() else None)
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
        act, again = reusable(out, identity, owned)
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
                checksums[name] = hasher(arr.dtype, arr.shape)
                checksums[name].update(arr)
            g = f.create_group("layers")
            for i, (layer, d) in enumerate(widths.items()):
                chunk = int(max(1, min(n_rows, (1 << 20) // (4 * max(d, 1)))))
                ds = g.create_dataset(layer, shape=(n_rows, d), dtype="float32", chunks=(chunk, d))
                h = checksums[f"layers/{layer}"] = hasher(np.float32, (n_rows, d))
                rows, at = block_rows(d), 0
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
