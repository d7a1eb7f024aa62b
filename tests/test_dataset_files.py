"""The binary dataset formats on small synthetic files: CIFAR-10/100 pickled batches (read
without unpickling code) and STL-10's binaries, each checked against the layout it documents."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from bench.datasets import load_split
from bench.errors import BenchError
from tests.test_datasets import assert_partition

rng = np.random.default_rng(1234)


# -- CIFAR-10 / CIFAR-100: python pickle batches --------------------------------------------------

def random_hwc_images(n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def cifar_rows(images_hwc: np.ndarray) -> np.ndarray:
    """CIFAR's row layout: 1024 red values, then 1024 green, then 1024 blue, each row-major 32x32."""
    return np.stack([
        np.concatenate([img[:, :, 0].ravel(), img[:, :, 1].ravel(), img[:, :, 2].ravel()])
        for img in images_hwc
    ])


def write_pickle(path: Path, obj, protocol=2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(folder: Path, per_batch=4, n_test=6, protocol=2) -> dict:
    """data_batch_1..5 and test_batch like the published ones; returns the HWC images and labels."""
    out = {"train": ([], []), "test": ([], [])}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else per_batch
        images, labels = random_hwc_images(n), rng.integers(0, 10, n).tolist()
        write_pickle(folder / name, {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": cifar_rows(images),
            b"filenames": [f"img_{k}.png".encode() for k in range(n)],
        }, protocol)
        split = "test" if name == "test_batch" else "train"
        out[split][0].append(images)
        out[split][1].extend(labels)
    return {s: (np.concatenate(imgs), np.array(labs)) for s, (imgs, labs) in out.items()}


# Protocol 2 is what the published files use; 4 is pickle.dump's default, 5 its highest.
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_batches_load_as_hwc(protocol, tmp_path):
    expected = write_cifar10(tmp_path / "cifar-10-batches-py", protocol=protocol)

    test = load_split("cifar10", "test", tmp_path)
    images, labels = expected["test"]
    assert test.images.shape == (6, 32, 32, 3) and test.images.dtype == np.uint8
    assert np.array_equal(test.images, images)
    assert np.array_equal(test.labels, labels)

    train, val = load_split("cifar10", "train", tmp_path), load_split("cifar10", "val", tmp_path)
    images, labels = expected["train"]  # the five batches, in order
    assert_partition([train, val], 20)
    assert np.array_equal(train.images, images[train.indices])
    assert np.array_equal(val.labels, labels[val.indices])


def test_cifar10_pixel_layout_is_channel_major_then_row_major(tmp_path):
    row = np.zeros(3072, dtype=np.uint8)
    row[0 * 1024 + 0 * 32 + 1] = 11  # red at (h=0, w=1)
    row[1 * 1024 + 1 * 32 + 0] = 22  # green at (h=1, w=0)
    row[2 * 1024 + 31 * 32 + 5] = 33  # blue at (h=31, w=5)
    folder = tmp_path / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        write_pickle(folder / name, {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]})
    write_pickle(folder / "test_batch", {b"data": row[None], b"labels": [7]})

    image = load_split("cifar10", "test", tmp_path).images[0]
    assert image[0, 1, 0] == 11 and image[1, 0, 1] == 22 and image[31, 5, 2] == 33
    assert image.sum() == 11 + 22 + 33


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    expected = {}
    for split, n in (("train", 30), ("test", 10)):
        images, fine = random_hwc_images(n), rng.integers(0, 100, n)
        write_pickle(folder / split, {b"data": cifar_rows(images), b"fine_labels": fine.tolist(),
                                      b"coarse_labels": (fine // 5).tolist()})
        expected[split] = images, fine

    test = load_split("cifar100", "test", tmp_path)
    assert np.array_equal(test.images, expected["test"][0])
    assert np.array_equal(test.labels, expected["test"][1])
    train = load_split("cifar100", "train", tmp_path)
    assert np.array_equal(train.images, expected["train"][0][train.indices])
    assert np.array_equal(train.labels, expected["train"][1][train.indices])


class _Exploit:
    """Unpickling this runs a call: what a tampered CIFAR batch could do."""

    def __init__(self, call):
        self.call = call

    def __reduce__(self):
        return self.call


@pytest.mark.parametrize("attack", ["open", "os.system"])
def test_cifar_batch_with_a_malicious_pickle_is_refused_without_running_it(attack, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    marker = tmp_path / "pwned"
    call = (open, (str(marker), "w")) if attack == "open" else (os.system, (f"touch '{marker}'",))
    write_pickle(folder / "data_batch_3", {b"data": _Exploit(call), b"labels": [0]})

    with pytest.raises(BenchError, match="data_batch_3") as e:
        load_split("cifar10", "train", tmp_path)
    assert "refusing" in str(e.value)
    assert not marker.exists()


# -- STL-10: binary files -------------------------------------------------------------------------

def write_stl10(folder: Path, n_train=10, n_test=5) -> dict:
    """{split}_X.bin holds (N, C, W, H) uint8 (column-major images); {split}_y.bin labels 1..10."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        raw = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)  # indexed [n, c, w, h]
        labels = (np.arange(n) % 10 + 1).astype(np.uint8)
        (folder / f"{split}_X.bin").write_bytes(raw.tobytes())
        (folder / f"{split}_y.bin").write_bytes(labels.tobytes())
        out[split] = raw, labels
    return out


def test_stl10_images_are_transposed_to_hwc_and_labels_start_at_zero(tmp_path):
    expected = write_stl10(tmp_path / "stl10_binary")
    raw, labels = expected["test"]

    test = load_split("stl10", "test", tmp_path)
    assert test.images.shape == (5, 96, 96, 3) and test.images.dtype == np.uint8
    assert np.array_equal(test.images, np.einsum("ncwh->nhwc", raw))
    for n, h, w, c in [(0, 0, 1, 0), (1, 2, 70, 1), (4, 95, 3, 2)]:
        assert test.images[n, h, w, c] == raw[n, c, w, h]
    assert np.array_equal(test.labels, labels.astype(np.int64) - 1)
    assert test.labels.min() == 0 and test.labels.dtype == np.int64

    train = load_split("stl10", "train", tmp_path)
    assert set(train.labels.tolist()) <= set(range(10))
    assert np.array_equal(train.images, np.einsum("ncwh->nhwc", expected["train"][0])[train.indices])


# -- imagefolder ----------------------------------------------------------------------------------
