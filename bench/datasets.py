"""Datasets: uint8 images (N, H, W, C) and int64 labels for the splits train, val and test.

Each built-in reads the files its authors publish, from a folder found in this order:
``--data-root``, ``$BENCH_DATA_ROOT``, then the well-known system place (Fashion-MNIST: Debian's
``dataset-fashion-mnist`` package). A dataset without a published ``val`` split gets a
deterministic, stratified carve-out of ``train`` (``VAL_FRACTION``, seed ``SPLIT_SEED``, never the
run seed, so every run sees the same val); one without a ``test`` split gets one the same way.
``--limit N`` then takes a stratified subset of at most N rows of the asked split, seeded by the
run seed. The readers of the published file formats are ``bench.dataset_files``.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np

from bench.dataset_files import IMAGE_SUFFIXES, FolderImages, read_cifar_batch, read_idx, read_stl10
from bench.errors import BenchError
from bench.registry import DATASETS

SPLITS = ("train", "val", "test")
SPLIT_SEED = 0
VAL_FRACTION = 0.1
TEST_FRACTION = 0.2  # only for datasets that publish no test split


@dataclass
class SplitData:
    """One split, ready to feed a backbone. ``indices`` index the dataset's published split."""

    images: np.ndarray  # uint8 (N, H, W, C), or FolderImages (decoded when indexed) for an imagefolder
    labels: np.ndarray  # int64 (N,)
    indices: np.ndarray  # int64 (N,)
    info: dict = field(default_factory=dict)  # provenance: files, carve-out, limit

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def digest(self) -> str:
        """sha256 of images, labels and indices: what the cache and results identities key on
        (computed once per split, however many identities need it)."""
        from bench.store import data_digest

        return data_digest(self.images, self.labels, self.indices)


class Dataset:
    """Base for a dataset plugin: say where the files are and read a published split."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    published_splits: ClassVar[tuple[str, ...]] = ("train", "test")
    system_dirs: ClassVar[tuple[str, ...]] = ()
    subdirs: ClassVar[tuple[str, ...]] = ()  # names tried under a root, besides the root itself
    required_files: ClassVar[tuple[str, ...]] = ()
    how_to_get: ClassVar[str] = ""

    def __init__(self, data_root: str | os.PathLike | None = None):
        self.data_root = data_root

    # -- locating files ---------------------------------------------------------------------
    def candidate_dirs(self) -> list[Path]:
        """An explicit ``--data-root`` is the only place looked at (a copy found elsewhere would
        be recorded under the wrong root); else ``$BENCH_DATA_ROOT``, then the system places."""
        roots = [self.data_root] if self.data_root else [r for r in (os.environ.get("BENCH_DATA_ROOT"),) if r]
        dirs = []
        for root in roots:
            root = Path(root).expanduser()
            dirs.append(root)
            dirs.extend(root / sub for sub in (self.name, *self.subdirs))
        if not self.data_root:
            dirs.extend(Path(d) for d in self.system_dirs)
        return dirs

    def locate(self) -> Path:
        tried = self.candidate_dirs()
        for d in tried:
            if all((d / f).is_file() for f in self.required_files):
                return d
        where = ", ".join(str(d) for d in tried) or "nowhere (no --data-root, no $BENCH_DATA_ROOT)"
        raise BenchError(
            f"dataset {self.name!r}: files {', '.join(self.required_files)} not found; tried "
            f"{where}; {self.how_to_get}"
        )

    def read(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Images (N, H, W, C) uint8 and labels (N,) of a published split."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int | None:
        return None


# -- splits, carve-outs, limits ------------------------------------------------------------------

def _stratified_take(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted positions of a stratified random subset of size n (plain random if too few rows)."""
    from sklearn.model_selection import train_test_split

    pos = np.arange(len(labels))
    if n >= len(labels):
        return pos
    counts = Counter(labels.tolist())
    stratify = labels if n >= len(counts) and min(counts.values()) >= 2 else None
    take, _ = train_test_split(pos, train_size=n, stratify=stratify, random_state=seed)
    return np.sort(take)


def _carve(labels: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(kept, carved) sorted positions: a stratified, SPLIT_SEED-seeded carve-out."""
    n_carve = max(1, int(round(len(labels) * fraction)))
    carved = _stratified_take(labels, n_carve, SPLIT_SEED)
    kept = np.setdiff1d(np.arange(len(labels)), carved)
    return kept, carved


MAX_SEED = 2**32 - 1  # what numpy and scikit-learn accept as a seed


def get_dataset(name: str, data_root: str | os.PathLike | None = None) -> Dataset:
    cls = DATASETS.get(name)
    if data_root and not Path(data_root).expanduser().is_dir():
        raise BenchError(f"--data-root {data_root} is not a folder; pass the folder that holds the dataset's files")
    return cls(data_root)


def check_labels(name: str, split: str, labels: np.ndarray, n_classes: int | None) -> None:
    """Labels are class ids 0..n_classes-1 (a label file that says otherwise is damaged)."""
    if len(labels) == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    top = n_classes - 1 if n_classes else None
    if lo < 0 or (top is not None and hi > top):
        bad = lo if lo < 0 else hi
        row = int(np.flatnonzero(labels == bad)[0])
        raise BenchError(f"dataset {name!r} {split}: label {bad} at row {row} is outside 0..{top if top is not None else 'N'}"
                         "; the label file is damaged, replace it")


def load_split(
    name: str,
    split: str,
    data_root: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> SplitData:
    """Load one split of a registered dataset, carving val/test where none is published."""
    if split not in SPLITS:
        raise BenchError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise BenchError(f"--limit must be a positive integer, got {limit!r}")
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise BenchError(f"--seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    ds = get_dataset(name, data_root)
    info: dict = {"dataset": name, "split": split}
    pub = ds.published_splits

    if split in pub and split != "train":
        images, labels = ds.read(split)
        pos = np.arange(len(labels))
        source_split = split
    else:
        # train, or a split carved out of the published train: test first, then val.
        images, labels = ds.read("train")
        pos = np.arange(len(labels))
        source_split = "train"
    if len(images) != len(labels):
        raise BenchError(f"dataset {name!r} {source_split}: {len(images)} images but {len(labels)} labels; "
                         "the files are damaged or mismatched, replace them")
    check_labels(name, source_split, labels, ds.num_classes)
    if source_split == "train":
        if "test" not in pub:
            kept, carved = _carve(labels, TEST_FRACTION)
            info["test_carve"] = {"fraction": TEST_FRACTION, "seed": SPLIT_SEED, "size": int(len(carved))}
            pos = carved if split == "test" else kept
        if split != "test" and "val" not in pub:
            kept, carved = _carve(labels[pos], VAL_FRACTION)
            info["val_carve"] = {"fraction": VAL_FRACTION, "seed": SPLIT_SEED, "size": int(len(carved))}
            pos = pos[carved] if split == "val" else pos[kept]
    if len(pos) == 0 or (split == "train" and len(pos) < 2):
        carved = " after val/test were carved out of train" if {"val_carve", "test_carve"} & set(info) else ""
        raise BenchError(f"dataset {name!r}: the {split} split holds {len(pos)} image(s){carved}; "
                         "add images (a few per class at least)")
    info["source_split"] = source_split
    info["size_before_limit"] = int(len(pos))
    if limit is not None:
        sub = _stratified_take(labels[pos], limit, seed)
        pos = pos[sub]
        info["limit"] = {"n": limit, "seed": seed, "size": int(len(pos))}
    images = images.take(pos) if isinstance(images, FolderImages) else np.ascontiguousarray(images[pos])
    return SplitData(images=images, labels=labels[pos].astype(np.int64), indices=pos.astype(np.int64), info=info)


# -- the built-in datasets ----------------------------------------------------------------------

class _IDXDataset(Dataset):
    files_by_split: ClassVar[dict[str, tuple[str, str]]] = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
    required_files = tuple(f for pair in files_by_split.values() for f in pair)
    num_classes = 10

    def read(self, split):
        d = self.locate()
        img_file, lab_file = self.files_by_split[split]
        images = read_idx(d / img_file)[..., None]
        labels = read_idx(d / lab_file).astype(np.int64)
        if len(images) != len(labels):
            raise BenchError(f"{d}: {len(images)} images but {len(labels)} labels; download the files again")
        return images, labels


class FashionMNIST(_IDXDataset):
    name = "fashion-mnist"
    description = "Zalando Fashion-MNIST, 28x28 grayscale, 10 classes, 60k train / 10k test"
    system_dirs = ("/usr/share/datasets/fashion-mnist",)
    subdirs = ("FashionMNIST/raw", "fashion_mnist")
    how_to_get = (
        "install it with `apt-get install dataset-fashion-mnist` or put the four IDX .gz files "
        "under --data-root"
    )


class MNIST(_IDXDataset):
    name = "mnist"
    description = "MNIST handwritten digits, 28x28 grayscale, 10 classes, 60k train / 10k test"
    system_dirs = ("/usr/share/datasets/mnist",)
    subdirs = ("MNIST/raw",)
    how_to_get = "put the four MNIST IDX .gz files under --data-root or $BENCH_DATA_ROOT"


class Digits(Dataset):
    name = "digits"
    description = "scikit-learn's embedded 8x8 digits (1797 images, 10 classes); test and val carved out"
    published_splits = ("train",)
    num_classes = 10

    def read(self, split):
        from sklearn.datasets import load_digits

        d = load_digits()
        images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        return images, d.target.astype(np.int64)


class CIFAR10(Dataset):
    name = "cifar10"
    description = "CIFAR-10, 32x32 RGB, 10 classes, 50k train / 10k test (python pickle batches)"
    subdirs = ("cifar-10-batches-py", "cifar10/cifar-10-batches-py")
    required_files = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
    how_to_get = "extract cifar-10-python.tar.gz under --data-root or $BENCH_DATA_ROOT"
    num_classes = 10

    def read(self, split):
        d = self.locate()
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        parts = [read_cifar_batch(d / n, b"labels") for n in names]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class CIFAR100(Dataset):
    name = "cifar100"
    description = "CIFAR-100 (fine labels), 32x32 RGB, 100 classes, 50k train / 10k test"
    subdirs = ("cifar-100-python", "cifar100/cifar-100-python")
    required_files = ("train", "test")
    how_to_get = "extract cifar-100-python.tar.gz under --data-root or $BENCH_DATA_ROOT"
    num_classes = 100

    def read(self, split):
        return read_cifar_batch(self.locate() / split, b"fine_labels")


class STL10(Dataset):
    name = "stl10"
    description = "STL-10 labelled splits, 96x96 RGB, 10 classes, 5k train / 8k test (binary files)"
    subdirs = ("stl10_binary", "stl10/stl10_binary")
    required_files = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")
    how_to_get = "extract stl10_binary.tar.gz under --data-root or $BENCH_DATA_ROOT"
    num_classes = 10

    def read(self, split):
        return read_stl10(self.locate(), split)


class ImageFolder(Dataset):
    """``root/<class>/*.png|jpg`` (one pool: test and val are carved out), or ``root/train/<class>/…``
    with ``root/test/…`` (and optionally ``root/val/…``). Class ids follow sorted class names.
    Images of mixed sizes are resized (shorter side) and center-cropped to the most common size."""

    name = "imagefolder"
    description = "your own images: --data-root DIR with DIR/<class>/*.png|jpg (or DIR/train, DIR/test)"

    def __init__(self, data_root=None):
        super().__init__(data_root)
        root = data_root or os.environ.get("BENCH_DATA_ROOT")
        if not root:
            raise BenchError("dataset 'imagefolder' needs --data-root DIR holding DIR/<class>/*.png|jpg")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise BenchError(f"dataset 'imagefolder': {self.root} is not a folder; pass --data-root DIR")
        self.published_splits = tuple(
            s for s in SPLITS if (self.root / s).is_dir()
        ) if (self.root / "train").is_dir() and (self.root / "test").is_dir() else ("train",)

    def _split_root(self, split: str) -> Path:
        return self.root / split if self.published_splits != ("train",) else self.root

    def classes(self) -> list[str]:
        base = self._split_root("train")
        return sorted(p.name for p in base.iterdir() if p.is_dir())

    def read(self, split):
        classes = self.classes()
        if not classes:
            raise BenchError(f"dataset 'imagefolder': no class folders in {self._split_root('train')}")
        files, labels = [], []
        for i, c in enumerate(classes):
            folder = self._split_root(split) / c
            if not folder.is_dir():
                continue
            for p in sorted(folder.iterdir()):
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(p)
                    labels.append(i)
        if not files:
            raise BenchError(f"dataset 'imagefolder': no .png/.jpg images under {self._split_root(split)}")
        if split != "train":
            extra = sorted(p.name for p in self._split_root(split).iterdir() if p.is_dir() and p.name not in classes)
            if extra:
                raise BenchError(f"dataset 'imagefolder': {split} has class folders that train lacks "
                                 f"({', '.join(extra[:3])}); add them to train or remove them")
        # Every split at train's most common size, so that features line up across splits.
        size = None if split == "train" else self._train_size()
        return FolderImages.scan(files, size), np.asarray(labels, dtype=np.int64)

    def _train_size(self) -> tuple[int, int]:
        from PIL import Image

        sizes = Counter()
        for c in self.classes():
            for p in sorted((self._split_root("train") / c).iterdir()):
                if p.suffix.lower() in IMAGE_SUFFIXES:
                    try:
                        with Image.open(p) as im:  # the header only
                            sizes[im.size] += 1
                    except (OSError, Image.DecompressionBombError) as e:
                        raise BenchError(f"cannot read image {p} ({e}); remove or replace it") from None
        if not sizes:
            raise BenchError(f"dataset 'imagefolder': no .png/.jpg images under {self._split_root('train')}")
        return sizes.most_common(1)[0][0]
