"""Dataset loaders: splits, carve-outs, --limit, and each file format, on small synthetic files.

Every test builds the files it needs under tmp_path (nothing is downloaded). The conftest's
autouse fixture gives each test its own BENCH_CACHE and removes BENCH_DATA_ROOT.
"""

import gzip
import os
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.datasets import load_split
from bench.errors import BenchError
from tests.conftest import assert_user_error, bench_subprocess, need_fashion_mnist

rng = np.random.default_rng(1234)


def assert_partition(splits, total):
    """The splits' indices are pairwise disjoint and together are exactly 0..total-1."""
    all_idx = np.concatenate([s.indices for s in splits])
    assert len(all_idx) == total
    assert np.array_equal(np.sort(all_idx), np.arange(total))


# -- digits: carve-outs ---------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_digits_split_is_uint8_nhwc_with_int64_labels(split):
    data = load_split("digits", split)
    assert data.images.dtype == np.uint8
    assert data.images.shape == (len(data), 8, 8, 1)
    assert data.labels.dtype == np.int64 and data.indices.dtype == np.int64
    assert data.images.max() == 255  # sklearn's 0..16 scaled to the full byte range


def test_digits_train_val_test_are_disjoint_and_cover_all_1797_rows():
    splits = [load_split("digits", s) for s in ("train", "val", "test")]
    assert_partition(splits, 1797)
    train, val, test = splits
    assert len(test) == round(1797 * 0.2)
    assert len(val) == round((1797 - len(test)) * 0.1)
    assert "test_carve" in test.info and "val_carve" in val.info


@pytest.mark.parametrize("split", ["val", "test"])
def test_digits_carve_outs_are_deterministic_and_ignore_the_run_seed(split):
    first = load_split("digits", split, seed=0)
    again = load_split("digits", split, seed=0)
    other_seed = load_split("digits", split, seed=123)
    assert np.array_equal(first.indices, again.indices)
    assert np.array_equal(first.indices, other_seed.indices)


@pytest.mark.parametrize("split, fraction_of_all", [("test", 0.2), ("val", 0.8 * 0.1)], ids=["test", "val"])
def test_digits_carve_outs_are_stratified(split, fraction_of_all):
    everything = np.concatenate([load_split("digits", s).labels for s in ("train", "val", "test")])
    carved = load_split("digits", split).labels
    assert set(carved.tolist()) == set(range(10))  # every class present
    per_class_all, per_class_carved = Counter(everything.tolist()), Counter(carved.tolist())
    for c in range(10):  # and in proportion to its share of the dataset
        assert abs(per_class_carved[c] - fraction_of_all * per_class_all[c]) <= 2, (c, per_class_carved)


# -- --limit --------------------------------------------------------------------------------------

def test_limit_takes_a_sorted_stratified_subset_of_the_split():
    full = load_split("digits", "train")
    sub = load_split("digits", "train", limit=50, seed=0)
    assert len(sub) == 50 and sub.images.shape == (50, 8, 8, 1)
    assert set(sub.labels.tolist()) == set(range(10))
    assert np.all(np.diff(sub.indices) > 0)
    assert set(sub.indices.tolist()) <= set(full.indices.tolist())  # taken from train, not val/test
    assert sub.info["limit"] == {"n": 50, "seed": 0, "size": 50}
    assert sub.info["size_before_limit"] == len(full)


def test_limit_subset_follows_the_seed():
    a = load_split("digits", "train", limit=50, seed=0)
    a_again = load_split("digits", "train", limit=50, seed=0)
    b = load_split("digits", "train", limit=50, seed=1)
    assert np.array_equal(a.indices, a_again.indices)
    assert not np.array_equal(a.indices, b.indices)


def test_limit_larger_than_the_split_gives_the_whole_split():
    full = load_split("digits", "val")
    limited = load_split("digits", "val", limit=100_000)
    assert np.array_equal(limited.indices, full.indices)
    assert np.array_equal(limited.images, full.images)


@pytest.mark.parametrize("bad", [0, -3])
def test_limit_must_be_positive(bad):
    with pytest.raises(BenchError, match="--limit"):
        load_split("digits", "train", limit=bad)


# -- MNIST / Fashion-MNIST: IDX files -------------------------------------------------------------

def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file: >HBB (0, 0x08, ndim), then ndim big-endian uint32 dims, then data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_idx_dataset(folder: Path, n_train=30, n_test=20) -> dict:
    """The four published MNIST-style files; returns the arrays written."""
    arrays = {
        "train": (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), np.arange(n_train) % 10),
        "test": (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), np.arange(n_test)[::-1] % 10),
    }
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = arrays[split]
        write_idx_gz(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx_gz(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return arrays


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("layout", ["data_root", "data_root/<name>", "BENCH_DATA_ROOT"])
def test_idx_datasets_are_found_and_round_trip(name, layout, tmp_path, monkeypatch):
    root = tmp_path / "data"
    arrays = write_idx_dataset(root / name if layout == "data_root/<name>" else root)
    if layout == "BENCH_DATA_ROOT":
        monkeypatch.setenv("BENCH_DATA_ROOT", str(root))
        data_root = None
    else:
        data_root = root

    test = load_split(name, "test", data_root)
    images, labels = arrays["test"]
    assert test.images.shape == (20, 28, 28, 1) and test.images.dtype == np.uint8
    assert np.array_equal(test.images[..., 0], images)
    assert np.array_equal(test.labels, labels) and test.labels.dtype == np.int64

    train = load_split(name, "train", data_root)
    images, labels = arrays["train"]
    assert train.images.shape[1:] == (28, 28, 1)
    assert np.array_equal(train.images[..., 0], images[train.indices])
    assert np.array_equal(train.labels, labels[train.indices])


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_val_is_carved_from_train(name, tmp_path):
    write_idx_dataset(tmp_path, n_train=30)
    train = load_split(name, "train", tmp_path)
    val = load_split(name, "val", tmp_path)
    assert val.info["source_split"] == "train"
    assert val.info["val_carve"]["size"] == len(val) == 3
    assert_partition([train, val], 30)


def truncate_payload(path: Path) -> None:
    """Keep the header (which still claims the full shape) but drop most of the pixels."""
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 3]))


def truncate_gzip_stream(path: Path) -> None:
    """A download cut short: the .gz file itself ends early."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("truncate", [truncate_payload, truncate_gzip_stream])
def test_truncated_idx_file_is_a_user_error(truncate, tmp_path):
    write_idx_dataset(tmp_path)
    broken = tmp_path / "t10k-images-idx3-ubyte.gz"
    truncate(broken)
    with pytest.raises(BenchError, match="download it again") as e:
        load_split("mnist", "test", tmp_path)
    assert str(broken) in str(e.value)


def test_corrupted_idx_gzip_is_a_user_error_wherever_the_damage_is(tmp_path):
    write_idx_dataset(tmp_path, n_test=20)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    # Blank images compress well, so damage hits Huffman-coded data (zlib.error), not just the CRC.
    write_idx_gz(images, np.zeros((20, 28, 28), dtype=np.uint8))
    good = images.read_bytes()
    for pos in range(10, len(good)):  # every byte after the 10-byte gzip header
        damaged = bytearray(good)
        damaged[pos] ^= 0x5A
        try:
            if gzip.decompress(bytes(damaged)) == gzip.decompress(good):
                continue  # flipped only the padding bits of the last deflate byte: no damage
        except Exception:
            pass
        images.write_bytes(bytes(damaged))
        with pytest.raises(BenchError, match="download it again"):
            load_split("mnist", "test", tmp_path)


# -- image folders --------------------------------------------------------------------------------

CAT, DOG = (200, 30, 10), (10, 30, 200)  # solid colours tell the classes apart after loading


def write_images(folder: Path, colour, n, size=(16, 16)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.new("RGB", size, colour).save(folder / f"{k:03d}.png")


def test_imagefolder_pool_labels_follow_sorted_class_names_and_carves_test_and_val(tmp_path):
    write_images(tmp_path / "dog", DOG, 12)  # written first, but 'cat' < 'dog' gets label 0
    write_images(tmp_path / "cat", CAT, 12)
    Image.new("RGB", (24, 20), DOG).save(tmp_path / "dog" / "zz_odd_size.png")

    splits = [load_split("imagefolder", s, tmp_path) for s in ("train", "val", "test")]
    assert_partition(splits, 25)
    train, val, test = splits
    assert len(test) == 5 and len(val) == 2
    for data in splits:
        assert data.images.shape[1:] == (16, 16, 3)
        is_dog = data.indices >= 12  # files are listed cat/000..011, then dog/000..011, dog/zz_odd_size
        assert np.array_equal(data.labels, is_dog.astype(np.int64))
        for image, dog in zip(data.images, is_dog):
            assert np.all(image == (DOG if dog else CAT))  # the odd-sized dog too, after resizing


def test_imagefolder_resizes_and_center_crops_an_odd_sized_image(tmp_path):
    write_images(tmp_path / "cat", CAT, 12)
    wide = Image.new("RGB", (80, 32), (0, 0, 0))  # twice the size, 5:2: red edge, black centre, blue edge
    wide.paste((255, 0, 0), (0, 0, 20, 32))
    wide.paste((0, 0, 255), (60, 0, 80, 32))
    wide.save(tmp_path / "cat" / "zz_wide.png")

    by_index = {}
    for split in ("train", "val", "test"):
        data = load_split("imagefolder", split, tmp_path)
        assert data.images.shape[1:] == (16, 16, 3)  # the common size wins
        by_index.update(zip(data.indices.tolist(), data.images))
    assert sorted(by_index) == list(range(13))
    # Shorter side 32 -> 16 makes it 40x16; the centre 16 columns are all black.
    assert np.array_equal(by_index[12], np.zeros((16, 16, 3), np.uint8))


def test_imagefolder_with_train_and_test_folders(tmp_path):
    for split, n in (("train", 10), ("test", 4)):
        write_images(tmp_path / split / "cat", CAT, n)
        write_images(tmp_path / split / "dog", DOG, n)

    test = load_split("imagefolder", "test", tmp_path)
    assert len(test) == 8 and "test_carve" not in test.info
    assert np.array_equal(test.labels, [0, 0, 0, 0, 1, 1, 1, 1])
    train, val = load_split("imagefolder", "train", tmp_path), load_split("imagefolder", "val", tmp_path)
    assert val.info["val_carve"]["size"] == len(val) == 2
    assert_partition([train, val], 20)


def test_imagefolder_needs_a_data_root():
    with pytest.raises(BenchError, match="--data-root"):
        load_split("imagefolder", "train")


# -- through the real CLI -------------------------------------------------------------------------

def test_cli_missing_dataset_files_is_one_line_naming_the_tried_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = bench_subprocess("extract", "--backbone", "pixels", "--dataset", "cifar10", "--split", "train",
                         "--data-root", empty, env={"BENCH_CACHE": str(tmp_path / "cache")})
    assert_user_error(r, str(empty), "data_batch_1", "not found")


def test_cli_unknown_dataset_suggests_the_close_name(tmp_path):
    r = bench_subprocess("extract", "--backbone", "pixels", "--dataset", "digitz", "--split", "train",
                         env={"BENCH_CACHE": str(tmp_path / "cache")})
    assert_user_error(r, "did you mean", "'digits'")


def test_cli_datasets_list_shows_every_builtin():
    r = bench_subprocess("datasets", "list", env={"COLUMNS": "200"})
    assert r.code == 0, r
    for name in ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "stl10", "imagefolder"):
        assert name in r.out, name


# -- the real Fashion-MNIST, where installed ------------------------------------------------------

def test_system_fashion_mnist_test_split():
    need_fashion_mnist()  # skips with the reason, or fails when CI=true
    test = load_split("fashion-mnist", "test")
    assert test.images.shape == (10000, 28, 28, 1) and test.images.dtype == np.uint8
    assert Counter(test.labels.tolist()) == {c: 1000 for c in range(10)}


def _many_images(root, n, size=64):
    from PIL import Image

    base = np.linspace(0, 255, size * size * 3).reshape(size, size, 3).astype(np.uint8)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.roll(base, i, axis=1)).save(root / ("a", "b")[i % 2] / f"{i:05d}.png", compress_level=1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak from Linux's /proc")
def test_an_imagefolder_is_decoded_a_batch_at_a_time_so_peak_memory_stays_flat(tmp_path):
    """`bench extract` (resnet18's first stage) over 600 and over 4,800 images of 64x64 in fresh
    processes: the peak resident memory barely moves, where decoding the split whole would add
    its pixels (52 MiB more for the larger folder); the lazy images equal an eager decode."""
    from bench.dataset_files import FolderImages
    from bench.measure import _PEAK

    peaks = {}
    for n in (600, 4800):
        root = tmp_path / f"f{n}"
        _many_images(root, n)
        cmd = [sys.executable, "-c", _PEAK, str(tmp_path / f"{n}.peak"), "-q", "extract", "-b", "resnet18",
               "--layers", "act1", "--image-size", "32", "-d", "imagefolder", "--data-root", str(root), "--split",
               "train", "--batch-size", "64", "--out", str(tmp_path / f"{n}.h5")]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert p.returncode == 0, p.stderr
        peaks[n] = int((tmp_path / f"{n}.peak").read_text().split()[1])  # kB
    grown = (peaks[4800] - peaks[600]) / 1024
    assert grown < 16, f"peak grew by {grown:.1f} MiB for 8x the images ({peaks})"
    data = load_split("imagefolder", "train", tmp_path / "f600")
    assert isinstance(data.images, FolderImages)
    eager = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in data.images.files])
    np.testing.assert_array_equal(np.asarray(data.images), eager)
    np.testing.assert_array_equal(data.images[[3, 1]], eager[[3, 1]])
    np.testing.assert_array_equal(data.images[5:9], eager[5:9])
    np.testing.assert_array_equal(data.images[7], eager[7])


def test_imagefolder_16_bit_gray_keeps_its_top_8_bits_not_clipped_to_white(tmp_path):
    gray = (np.arange(16 * 16).reshape(16, 16) * 200).astype(np.uint16)  # 0..51000
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(6):
            Image.fromarray(gray).save(tmp_path / c / f"{i}.png")
    data = load_split("imagefolder", "train", tmp_path)
    img = data.images[0]
    np.testing.assert_array_equal(img[..., 0], (gray >> 8).astype(np.uint8))
    assert (img == 255).mean() < 0.01


def test_imagefolder_splits_share_train_s_image_size(tmp_path):
    for split, size in (("train", 16), ("test", 32)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (size, size), (i * 40, 10, 200)).save(tmp_path / split / c / f"{i}.png")
    train, test = load_split("imagefolder", "train", tmp_path), load_split("imagefolder", "test", tmp_path)
    assert train.images.shape[1:] == test.images.shape[1:] == (16, 16, 3)


def test_an_image_that_fails_to_decode_mid_extraction_leaves_nothing(bench, tmp_path, isolated_cache):
    for c in ("a", "b"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(40):
            Image.new("RGB", (8, 8), (i * 5, 10, 200)).save(tmp_path / "f" / c / f"{i:02d}.png")
    bad = tmp_path / "f" / "b" / "39.png"
    full = (tmp_path / "f" / "a" / "00.png").read_bytes()
    big = Image.effect_noise((64, 64), 50).convert("RGB")
    big.save(bad)
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # the header is whole, the pixels are not
    assert full
    r = bench("-q", "extract", "-b", "pixels", "-d", "imagefolder", "--data-root", tmp_path / "f", "--split", "train",
              "--batch-size", "8")
    assert_user_error(r, "cannot read image", "39.png")
    assert not [p for p in isolated_cache.rglob("*") if p.is_file()]  # no parts, no lock, no file
