"""Readers of the files datasets are published in: IDX (MNIST, Fashion-MNIST, optionally gzipped),
CIFAR python pickles (numpy arrays only, so a tampered file cannot run code), STL-10 binaries, and
folders of image files decoded lazily (``FolderImages``). Each refuses a damaged file in one line
saying what to do."""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from bench.errors import BenchError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
MAX_PIXELS = 4096 * 4096  # per image of an imagefolder: larger ones are refused before decoding


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return arr.reshape(shape)
    except (OSError, ValueError, struct.error, EOFError, zlib.error) as e:
        raise BenchError(f"{path} is not a readable IDX file ({e}); download it again") from None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of numpy arrays) and refuses any other object, so a
    tampered file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # arrays pickled with protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and the labels under ``label_key`` of one CIFAR python batch."""
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(d[label_key], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as e:
        raise BenchError(f"{path} is not a CIFAR python batch ({e}); download it again") from None
    if len(data) != len(labels):
        raise BenchError(f"{path}: {len(data)} images but {len(labels)} labels; download it again")
    return data, labels


def read_stl10(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 96, 96, 3) uint8 and labels 0..9 of STL-10's ``<split>_X.bin`` / ``<split>_y.bin``."""
    raw = np.fromfile(folder / f"{split}_X.bin", dtype=np.uint8)
    labels = np.fromfile(folder / f"{split}_y.bin", dtype=np.uint8).astype(np.int64) - 1
    if raw.size % (3 * 96 * 96) or raw.size // (3 * 96 * 96) != len(labels):
        raise BenchError(f"{folder}: {split}_X.bin and {split}_y.bin do not match; extract them again")
    # Stored column-major per image: (N, C, W, H) -> (N, H, W, C).
    images = raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)
    return np.ascontiguousarray(images), labels


class FolderImages:
    """The images of an imagefolder split, decoded only when indexed (a batch at a time), so a
    folder of a million files is never in memory whole. ``scan`` reads every file once, in one
    streaming pass, for its size (the most common one is the split's; others are resized and
    center-cropped to it) and the sha256 of its bytes (what the split's data digest is made of).
    Indexing with an int, a slice or an index array gives uint8 (n, H, W, 3) like a numpy array;
    ``np.asarray`` decodes all of them."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, files: list[Path], hashes: list[bytes], size: tuple[int, int]):
        self.files, self.hashes, self.size = files, hashes, size
        self.shape = (len(files), size[1], size[0], 3)

    @classmethod
    def scan(cls, files: list[Path], size: tuple[int, int] | None = None) -> FolderImages:
        import hashlib
        import io

        from PIL import Image

        hashes, sizes = [], Counter()
        for p in files:
            try:
                data = p.read_bytes()
                with Image.open(io.BytesIO(data)) as im:  # the header only
                    dims = im.size
            except (OSError, Image.DecompressionBombError) as e:
                raise BenchError(f"cannot read image {p} ({e}); remove or replace it") from None
            if dims[0] * dims[1] > MAX_PIXELS:
                raise BenchError(f"image {p} is {dims[0]}x{dims[1]}, over the {MAX_PIXELS:,}-pixel limit of an "
                                 "imagefolder; downscale it or remove it")
            hashes.append(hashlib.sha256(data).digest())
            sizes[dims] += 1
        return cls(list(files), hashes, size or sizes.most_common(1)[0][0])

    def __len__(self) -> int:
        return len(self.files)

    def take(self, rows) -> FolderImages:
        """The images at ``rows``, still undecoded."""
        rows = np.asarray(rows, dtype=np.int64)
        return FolderImages([self.files[i] for i in rows], [self.hashes[i] for i in rows], self.size)

    def content_digest(self) -> bytes:
        """What stands for the pixels in a data digest: the files' own hashes, in order, and the size."""
        import hashlib

        h = hashlib.sha256(f"imagefolder{self.shape}".encode())
        for d in self.hashes:
            h.update(d)
        return h.digest()

    def _decode(self, p: Path) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(p) as im:
                im = _to_rgb(im, p)
        except (OSError, Image.DecompressionBombError) as e:
            raise BenchError(f"cannot read image {p} ({e}); remove or replace it") from None
        return np.asarray(im if im.size == self.size else _resize_center_crop(im, self.size))

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            return self._decode(self.files[idx])
        rows = range(len(self))[idx] if isinstance(idx, slice) else np.arange(len(self))[np.asarray(idx)]
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        for k, i in enumerate(rows):
            out[k] = self._decode(self.files[i])
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def _to_rgb(im, path):
    """8-bit RGB: 16-bit gray (PIL's I;16 modes, or I holding 0..65535) keeps its top 8 bits,
    where a plain convert would clip every value over 255 to white."""
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im)
        if a.min() < 0 or a.max() > 65535:
            raise BenchError(f"image {path} has 32-bit integer pixels; save it with 8 or 16 bits per channel")
        im = Image.fromarray((a.astype(np.uint32) >> 8).astype(np.uint8), "L")
    elif im.mode == "F":
        raise BenchError(f"image {path} has floating-point pixels; save it with 8 or 16 bits per channel")
    return im.convert("RGB")


def _resize_center_crop(im, size):
    from PIL import Image

    w, h = size
    scale = max(w / im.width, h / im.height)
    im = im.resize((max(w, round(im.width * scale)), max(h, round(im.height * scale))), Image.BILINEAR)
    left, top = (im.width - w) // 2, (im.height - h) // 2
    return im.crop((left, top, left + w, top + h))
