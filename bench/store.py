"""The HDF5 activation store's format and reading: one file per backbone fingerprint x dataset x
split (x layers), and where the cache keeps it.

Layout of a finished file::

    /labels            int64 [N]          class ids
    /indices           int64 [N]          row numbers in the dataset's published split
    /layers/<name>     float32 [N, D]     chunked
    attrs: format, format_version, identity (JSON), provenance (JSON), n_rows, rows_done, complete,
           checksums (JSON: sha256 of each layer's data and of the labels and indices)

``identity`` holds what must match for a file to be reused or resumed (backbone fingerprint,
dataset, split, limit, seed, layers, a digest of the input images and labels).

Writing (parts, resume, assembly, torchrun shards) is ``bench.store_writer``'s.

Reading. A file is reused only if its identity matches (another is refused, never mixed) and its
checksums match its data (a mismatch, a cut layer or a file without checksums is logged and
extracted again).
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


class DamagedFile(BenchError):
    """An activation file whose data no longer matches what was written (or never had checksums)."""


CHECK_BYTES = 8 << 20  # how much of a layer one streaming step (checksum, assembly) holds: flat memory


def hasher(dtype, shape):
    h = hashlib.sha256()
    h.update(f"{np.dtype(dtype).str}{tuple(shape)}".encode())
    return h


def block_rows(width: int, itemsize: int = 4) -> int:
    return max(1, CHECK_BYTES // max(1, width * itemsize))


def dataset_checksum(ds) -> str:
    """sha256 of an HDF5 dataset's dtype, shape and values, read in blocks (flat memory)."""
    h = hasher(ds.dtype, ds.shape)
    rows = block_rows(int(np.prod(ds.shape[1:], dtype=np.int64)), ds.dtype.itemsize)
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


def reusable(out: Path, identity: dict, owned: bool = False) -> tuple[ActivationFile | None, str]:
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

