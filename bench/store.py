"""The HDF5 activation store: one file per backbone fingerprint x dataset x split (x layers).

Layout of a file::

    /labels            int64 [N]          class ids
    /indices           int64 [N]          row numbers in the dataset's published split
    /layers/<name>     float32 [n, D]     chunked, resizable; grows batch by batch
    attrs: format, format_version, identity (JSON), provenance (JSON), n_rows, rows_done, complete

``identity`` holds what must match for a file to be reused or resumed (backbone fingerprint,
dataset, split, limit, seed, layers, a digest of the input images and labels). Extraction writes
``<out>.partial`` and renames it to ``<out>`` when every row is in, so a finished name is always a
finished file; a killed run leaves the partial file and the same command resumes from its last
flushed batch. A file whose identity differs is refused, never mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.errors import BenchError

FORMAT = "igpt-bench/activations"
FORMAT_VERSION = 1


def data_digest(images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (images, labels, indices):
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


def find_superset(identity: dict, cache_dir: Path | None = None) -> ActivationFile | None:
    """A finished cached file with the same identity but more layers, if there is one: asking
    for a subset of layers already extracted costs nothing."""
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
            return act
    return None


def check_writable(path: Path, what: str = "--out") -> None:
    """Fail early, before any work, if ``path`` cannot be created (probes with a temporary file
    in the nearest existing folder, so it also holds for root and read-only mounts)."""
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise BenchError(f"{path} is a folder; give {what} a file name")
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise BenchError(f"cannot write {path}: {existing} is a file, not a folder; choose another {what}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is read-only")
    except OSError as e:
        raise BenchError(f"cannot write {path} ({e.strerror or e}); choose another {what}") from None


@dataclass
class ActivationFile:
    """A finished activation file, opened for reading (arrays load on demand)."""

    path: Path
    identity: dict
    provenance: dict
    layers: list[str]
    n_rows: int

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


def _read_attrs(path: Path) -> dict:
    """Attributes of an activation file; BenchError when it is not one or cannot be read."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            layer_names = list(f["layers"].keys()) if "layers" in f else []
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
    except (KeyError, TypeError, ValueError):
        raise BenchError(f"{path} has damaged attributes; delete it and extract again") from None
    attrs["_layers_present"] = layer_names
    return attrs


def open_activations(path: str | Path) -> ActivationFile:
    """Open a finished activation file; refuses foreign, truncated or unfinished files."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"activation file {path} does not exist; run `bench extract` first")
    a = _read_attrs(path)
    if not bool(a.get("complete")):
        raise BenchError(f"{path} is unfinished ({a.get('rows_done')}/{a.get('n_rows')} rows); "
                         "rerun the same `bench extract` to finish it")
    layers = list(a["identity"]["layers"])
    if set(layers) - set(a["_layers_present"]):
        raise BenchError(f"{path} lacks some of its layers; delete it and extract again")
    return ActivationFile(path, a["identity"], a["provenance"], layers, int(a["n_rows"]))


def _identity_diff(a: dict, b: dict) -> str:
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(f"{k}: {str(a.get(k))[:24]} vs {str(b.get(k))[:24]}" for k in keys[:3])


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
) -> tuple[ActivationFile, str]:
    """Fill ``out`` from ``batches(start) -> iterator of (start, end, {layer: array})``.

    Returns the opened file and what happened: "reused", "resumed at row K" or "extracted".
    """
    import h5py

    out = Path(out)
    if out.exists():
        a = _read_attrs(out)
        if a["identity"] != identity:
            raise BenchError(f"{out} holds other activations ({_identity_diff(a['identity'], identity)}); "
                             "choose another --out or delete it")
        return open_activations(out), "reused"

    partial = out.with_name(out.name + ".partial")
    start = 0
    if partial.exists():
        try:
            a = _read_attrs(partial)
            if (a["identity"] == identity and int(a.get("batch_size", -1)) == batch_size
                    and set(widths) <= set(a["_layers_present"])):
                start = int(a["rows_done"])
            else:
                log(f"discarding {partial}: it was made by another configuration")
                partial.unlink()
        except BenchError:
            log(f"discarding unreadable {partial}")
            partial.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)

    mode = "a" if start > 0 else "w"  # with no finished batch there is nothing worth keeping
    with h5py.File(partial, mode) as f:
        if mode == "w":
            f.attrs.update({
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "identity": json.dumps(identity, sort_keys=True),
                "provenance": json.dumps(provenance, sort_keys=True, default=str),
                "n_rows": n_rows,
                "rows_done": 0,
                "batch_size": batch_size,
                "complete": False,
            })
            f.create_dataset("labels", data=labels.astype(np.int64))
            f.create_dataset("indices", data=indices.astype(np.int64))
            g = f.create_group("layers")
            for layer, d in widths.items():
                rows = int(max(1, min(n_rows, (1 << 20) // (4 * max(d, 1)))))
                g.create_dataset(layer, shape=(0, d), maxshape=(None, d), dtype="float32", chunks=(rows, d))
            f.flush()
        g = f["layers"]
        # A kill between a resize and the rows_done update can leave extra rows: drop them.
        for layer in widths:
            if g[layer].shape[0] != start:
                g[layer].resize(start, axis=0)
        if progress is not None:
            progress.advance(start)
        for b_start, b_end, feats in batches(start):
            for layer, arr in feats.items():
                ds = g[layer]
                ds.resize(b_end, axis=0)
                ds[b_start:b_end] = arr
            f.attrs["rows_done"] = b_end
            f.flush()
            if progress is not None:
                progress.advance(b_end - b_start)
        f.attrs["complete"] = True
    os.replace(partial, out)
    return open_activations(out), (f"resumed at row {start}" if start else "extracted")
