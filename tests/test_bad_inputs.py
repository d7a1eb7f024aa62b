"""Every bad input is a user error: one line saying what to do, exit 2, no traceback, nothing
written. A table across every command (damaged dataset files, hostile images, malformed results,
non-finite weights, out-of-range numbers, impossible paths); the searched-for cases are in
test_bad_inputs_searched.py."""

import gzip
import json
import pickle
import struct

import numpy as np
import pytest

from tests.conftest import assert_user_error

# -- fixtures: small damaged datasets, hostile images, bad result files, bad weights ------------


def _idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes())


def _idx_root(root, train_labels, test_labels=None, n_images=None):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n = len(train_labels) if n_images is None else n_images
    test_labels = np.arange(20) % 10 if test_labels is None else test_labels
    _idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
    _idx(root / "train-labels-idx1-ubyte.gz", train_labels)
    _idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (len(test_labels), 28, 28)))
    _idx(root / "t10k-labels-idx1-ubyte.gz", test_labels)
    return root


def _cifar_root(root, labels, n_images):
    root.mkdir(parents=True)
    data = np.zeros((n_images, 3072), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": list(labels)}, f)
    return root


def _stl_root(root, label_byte):
    root.mkdir(parents=True)
    for split in ("train", "test"):
        np.zeros(4 * 3 * 96 * 96, dtype=np.uint8).tofile(root / f"{split}_X.bin")
        np.array([1, 2, label_byte, 3], dtype=np.uint8).tofile(root / f"{split}_y.bin")
    return root


def _folder(root, classes, per_class, size=(8, 8)):
    from PIL import Image

    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", size, (i * 20 % 255, 40, 90)).save(root / c / f"{i}.png")
    return root


def _bomb_folder(root):
    from PIL import Image

    _folder(root, ["a", "b"], 6)
    Image.new("1", (5000, 5000)).save(root / "a" / "bomb.png")  # 25 Mpx in a few kB
    return root


def _results(path, records):
    doc = {"format": "igpt-bench/results", "version": 2, "run": {"identity": {}}, "records": records}
    path.write_text(json.dumps(doc))
    return path


GOOD = {"metric": "top1", "value": 90.0, "backbone": "pixels", "dataset": "digits", "task": "linear-probe",
        "layer": "pixels", "split": "test", "run": "abc"}


def _nan_weights(path):
    import timm
    import torch
    from safetensors.torch import save_file

    sd = timm.create_model("resnet18", in_chans=1).state_dict()
    sd["conv1.weight"] = sd["conv1.weight"].clone()
    sd["conv1.weight"][0, 0, 0, 0] = torch.inf
    path = path.with_suffix(".safetensors")
    save_file(sd, str(path))
    return path


def study_records():
    """A whole correlation study's records (four checkpoints), as ``bench run -t correlation`` writes them."""
    from tasks.correlation import Correlation

    points = [{"label": f"tiny@step{i}", "size": "igpt 2x8", "backbone": "igpt", "weights": None, "step": i,
               "records": [{"task": "linear-probe", "metric": "top1", "layer": f"h{j}", "layer_index": j, "split": s,
                            "value": 50.0 + i + j + (s == "test"), "n": 100} for j in range(2) for s in ("val", "test")]
               + [{"task": "sample-quality", "metric": "bits_per_dim", "layer": "model", "split": "val",
                   "value": 3.0 - i / 10}]} for i in range(1, 5)]
    task = Correlation()
    stamp = {"task": "correlation", "dataset": "digits", "tag": None, "seed": 0, "limit": None, "run": "5a1d1e5a1d1e"}
    records = [dict(stamp, **r) for r in task.combine(points, task.parse_options({"bootstrap": 100}), seed=0)]
    return [dict(r, layer_index=i) for i, r in enumerate(records)]


def _study(path, keep=lambda r: True, change=lambda r: r):
    return _results(path, [change(dict(r)) for r in study_records() if keep(r)])


def _without(key, kind):
    return lambda r: {k: v for k, v in r.items() if not (k == key and r["kind"] == kind)}


def _checkpoint_three_ways(root):
    import os
    import shutil

    step = root / "run" / "checkpoints" / "step-0000001"
    step.mkdir(parents=True)
    (step / "igpt.json").write_text(json.dumps({"format": "igpt-bench/igpt-checkpoint", "step": 1}))
    (step / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    os.symlink(step, root / "link")
    shutil.copytree(step, root / "copy")
    return root


def _lying_checkpoint(root, **config):
    """A checkpoint folder whose igpt.json claims ``config`` (over igpt-tiny's)."""
    root.mkdir(parents=True)
    meta = {"format": "igpt-bench/igpt-checkpoint", "image": [8, 8], "step": 1,
            "config": {"n_colors": 16, "n_positions": 64, "n_embd": 64, "n_layer": 4, "n_head": 4, "n_inner": None,
                       "eps": 1e-5, **config}}
    (root / "igpt.json").write_text(json.dumps(meta))
    (root / "palette.json").write_text("{}")
    (root / "model.safetensors").write_bytes(b"\0" * 64)
    return root


FIXTURES = {
    "idx-label-200": lambda p: _idx_root(p, np.r_[np.arange(39) % 10, 200]),
    "idx-label-255": lambda p: _idx_root(p, np.arange(40) % 10, test_labels=np.r_[np.arange(19) % 10, 255]),
    "idx-count-mismatch": lambda p: _idx_root(p, np.arange(40) % 10, n_images=30),
    "idx-truncated": lambda p: (_idx_root(p, np.arange(40) % 10), (p / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08"))[0],
    "idx-one-class": lambda p: _idx_root(p, np.zeros(40, dtype=int), test_labels=np.zeros(20, dtype=int)),
    "cifar-more-labels": lambda p: _cifar_root(p, list(range(10)) * 2, 10),
    "cifar-huge-label": lambda p: _cifar_root(p, [0, 1, 2, 10**6], 4),
    "stl-label-0": lambda p: _stl_root(p, 0),
    "folder-one-class": lambda p: _folder(p, ["only"], 12),
    "folder-one-per-class": lambda p: _folder(p, ["a", "b", "c"], 1),
    "folder-bomb": _bomb_folder,
    "folder-not-image": lambda p: (_folder(p, ["a", "b"], 6), (p / "a" / "x.png").write_bytes(b"not a png"))[0],
    "folder-empty": lambda p: (p.mkdir(), p)[1],
    "results-value-text": lambda p: _results(p, [dict(GOOD, value="ninety")]),
    "results-no-metric": lambda p: _results(p, [{k: v for k, v in GOOD.items() if k != "metric"}]),
    "results-record-list": lambda p: _results(p, [[1, 2, 3]]),
    "results-layer-number": lambda p: _results(p, [dict(GOOD, layer=3)]),
    "results-value-bool": lambda p: _results(p, [dict(GOOD, value=True)]),
    "results-records-dict": lambda p: _results(p, {"a": GOOD}),
    "results-step-text": lambda p: _results(p, [dict(GOOD, step="ten")]),
    "results-not-json": lambda p: (p.write_text("{not json"), p)[1],
    "results-good": lambda p: _results(p, [GOOD]),
    "weights-inf": _nan_weights,
    "not-weights": lambda p: (p.write_bytes(b"not a state dict" * 10), p)[1],
    "study-fake": lambda p: _study(p, keep=lambda r: r["kind"] == "stat"),
    "study-two-points": lambda p: _study(p, keep=lambda r: r.get("point") not in ("tiny@step3", "tiny@step4")),
    "study-no-gap-share": lambda p: _study(p, change=_without("gap_share", "separation")),
    "study-kind-unknown": lambda p: _study(p, change=lambda r: dict(r, kind="banana") if r["kind"] == "stat" else r),
    "study-unknown": lambda p: _study(p, change=lambda r: dict(r, study="causation")),
    "study-matched-no-groups": lambda p: _study(p, change=lambda r: dict(r, scope="matched steps", groups=None)
                                                if r["kind"] == "stat" else r),
    "study-unmeasured-quality": lambda p: _study(p, keep=lambda r: r["kind"] != "quality"),
    "ckpt-three-ways": _checkpoint_three_ways,
    "ckpt-512x16384": lambda p: _lying_checkpoint(p, n_embd=16384, n_layer=512, n_head=8),
    "ckpt-heads-3-of-64": lambda p: _lying_checkpoint(p, n_head=3),
    "ckpt-width-text": lambda p: _lying_checkpoint(p, n_embd="wide"),
    "results-top1-negative": lambda p: _results(p, [dict(GOOD, value=-5.0)]),
    "results-stderr-negative": lambda p: _results(p, [dict(GOOD, stderr=-1.0)]),
    "results-records-twice": lambda p: _results(p, [GOOD, GOOD]),
    "folder-test-only-class": lambda p: (_folder(p / "train", ["a", "b"], 6), _folder(p / "test", ["a", "b", "eel"], 2),
                                         p)[2],
}

OUT = ["--results", "{tmp}/res"]
RUN = ["run", "-t", "linear-probe", *OUT]
EXTRACT = ["extract", "--split", "train", "--out", "{tmp}/out/a.h5"]

# (case id, arguments with {fixture-name} and {tmp} placeholders, fragments of the one line)
CASES = [
    # datasets: damaged files
    ("idx label 200", [*RUN, "-b", "pixels", "-d", "fashion-mnist", "--data-root", "{idx-label-200}"], ["label 200", "outside 0..9"]),
    ("idx label 255 in test", [*RUN, "-b", "pixels", "-d", "fashion-mnist", "--data-root", "{idx-label-255}"], ["label 255"]),
    ("idx counts differ", [*EXTRACT, "-b", "pixels", "-d", "fashion-mnist", "--data-root", "{idx-count-mismatch}"], ["30 images but 40 labels"]),
    ("idx truncated", [*EXTRACT, "-b", "pixels", "-d", "fashion-mnist", "--data-root", "{idx-truncated}"], ["not a readable IDX file"]),
    ("idx one class", [*RUN, "-b", "pixels", "-d", "fashion-mnist", "--data-root", "{idx-one-class}"], ["single class", "two classes"]),
    ("cifar more labels", [*EXTRACT, "-b", "pixels", "-d", "cifar10", "--data-root", "{cifar-more-labels}"], ["10 images but 20 labels"]),
    ("cifar huge label", [*EXTRACT, "-b", "pixels", "-d", "cifar10", "--data-root", "{cifar-huge-label}"], ["label 1000000"]),
    ("stl label byte 0", [*EXTRACT, "-b", "pixels", "-d", "stl10", "--data-root", "{stl-label-0}"], ["label -1"]),
    ("folder one class", [*RUN, "-b", "pixels", "-d", "imagefolder", "--data-root", "{folder-one-class}"], ["single class"]),
    ("folder one per class", [*RUN, "-b", "pixels", "-d", "imagefolder", "--data-root", "{folder-one-per-class}"], ["split holds", "add images"]),
    ("folder bomb", [*EXTRACT, "-b", "pixels", "-d", "imagefolder", "--data-root", "{folder-bomb}"], ["5000x5000", "pixel limit"]),
    ("folder bad image", [*EXTRACT, "-b", "pixels", "-d", "imagefolder", "--data-root", "{folder-not-image}"], ["cannot read image", "x.png"]),
    ("folder empty", [*EXTRACT, "-b", "pixels", "-d", "imagefolder", "--data-root", "{folder-empty}"], ["no class folders"]),
    ("data root missing", [*RUN, "-b", "pixels", "-d", "fashion-mnist", "--data-root", "{tmp}/nonexistent"], ["--data-root", "not a folder"]),
    ("data root is a file", [*RUN, "-b", "pixels", "-d", "fashion-mnist", "--data-root", "/dev/null"], ["not a folder"]),
    ("data root lacks files", [*RUN, "-b", "pixels", "-d", "fashion-mnist", "--data-root", "{folder-empty}"], ["not found", "folder-empty"]),
    ("imagefolder without root", [*RUN, "-b", "pixels", "-d", "imagefolder"], ["needs --data-root"]),
    # numbers out of range
    ("seed -1", [*RUN, "-b", "pixels", "-d", "digits", "--seed", "-1", "--limit", "100"], ["--seed"]),
    ("seed 2**32", [*RUN, "-b", "pixels", "-d", "digits", "--seed", str(2**32), "--limit", "100"], ["--seed"]),
    ("extract seed -1", [*EXTRACT, "-b", "pixels", "-d", "digits", "--seed", "-1"], ["--seed"]),
    ("pretrain seed 2**32", ["pretrain", "-b", "igpt-tiny", "-d", "digits", "--steps", "2", "--seed", str(2**32), "--out", "{tmp}/run"], ["--seed"]),
    ("pretrain seed -1", ["pretrain", "-b", "igpt-tiny", "-d", "digits", "--steps", "2", "--seed", "-1", "--out", "{tmp}/run"], ["--seed"]),
    ("image size 100000", [*EXTRACT, "-b", "resnet18", "-d", "digits", "--image-size", "100000"], ["--image-size", "1024"]),
    ("image size 0", [*RUN, "-b", "resnet18", "-d", "digits", "--image-size", "0"], ["--image-size"]),
    ("pretrain image size 1000", ["pretrain", "-b", "igpt-tiny", "-d", "digits", "--steps", "2", "--image-size", "1000", "--out", "{tmp}/run"], ["--image-size"]),
    ("limit 0", [*EXTRACT, "-b", "pixels", "-d", "digits", "--limit", "0"], ["--limit"]),
    ("limit text", [*RUN, "-b", "pixels", "-d", "digits", "--limit", "many"], ["--limit", "many"]),
    ("batch size 0", [*EXTRACT, "-b", "pixels", "-d", "digits", "--batch-size", "0"], ["--batch-size"]),
    ("sample n huge", ["sample", "-b", "igpt-tiny", "--n", "100000000", "--out", "{tmp}/out/s.png"], ["--n"]),
    ("benchmark sample n huge", ["benchmark", "sample", "-b", "igpt-tiny", "--n", "100000000"], ["--n"]),
    ("complete n 0", ["complete", "-b", "igpt-tiny", "-d", "digits", "--n", "0", "--keep-rows", "4", "--out", "{tmp}/out/c.png"], ["--n"]),
    ("pretrain steps 0", ["pretrain", "-b", "igpt-tiny", "-d", "digits", "--steps", "0", "--out", "{tmp}/run"], ["--steps"]),
    ("pretrain lr nan", ["pretrain", "-b", "igpt-tiny", "-d", "digits", "--steps", "2", "--lr", "nan", "--out", "{tmp}/run"], ["--lr"]),
    ("pretrain save-at past steps", ["pretrain", "-b", "igpt-tiny", "-d", "digits", "--steps", "2", "--save-at", "5", "--out", "{tmp}/run"], ["--save-at"]),
    ("pretrain batch over processes", ["pretrain", "-b", "igpt-tiny", "-d", "digits", "--steps", "2", "--batch-size", "-3", "--out", "{tmp}/run"], ["--batch-size"]),
    ("demo steps 1", ["demo", "--steps", "1", "--results", "{tmp}/res"], ["--steps"]),
    ("knn k 0", [*RUN[:2], "knn", *OUT, "-b", "pixels", "-d", "digits", "-o", "k=0"], ["k"]),
    ("probe grid text", [*RUN, "-b", "pixels", "-d", "digits", "-o", "l2_grid=abc"], ["l2_grid"]),
    ("probe max_iter 0", [*RUN, "-b", "pixels", "-d", "digits", "-o", "max_iter=0"], ["max_iter"]),
    ("option without =", [*RUN, "-b", "pixels", "-d", "digits", "-o", "max_iter"], ["KEY=VALUE"]),
    ("benchmark knn dim 0", ["benchmark", "knn", "--dim", "0"], ["--dim"]),
    ("benchmark pretrain size 65", ["benchmark", "pretrain", "-b", "igpt-tiny", "--image-size", "65"], ["--image-size"]),
    ("perf unknown row", ["perf", "--only", "warp"], ["--only"]),
    ("perf rows' options with a command", ["perf", "--quick", "--only", "probe", "knn"],
     ["--quick, --only", "bench perf knn"]),
    ("perf threads before its command", ["perf", "--threads", "2", "knn"], ["--threads", "bench perf knn --threads"]),
    # found by a hostile session: numbers that overflowed, NaN that slipped past ranges, sizes past memory
    ("l2 grid huge", [*RUN, "-b", "pixels", "-d", "digits", "-o", "l2_grid=1e39"], ["l2_grid", "1e-12..1e6"]),
    ("l2 grid subnormal", [*RUN, "-b", "pixels", "-d", "digits", "-o", "l2_grid=1e-45"], ["l2_grid"]),
    ("low-data seeds huge", [*RUN[:2], "low-data-probe", *OUT, "-b", "pixels", "-d", "digits", "-o", "seeds=99999999999"], ["seeds", "1..1000"]),
    ("sample temperature tiny", ["sample", "-b", "igpt-tiny", "--temperature", "1e-40", "--out", "{tmp}/out/s.png"], ["--temperature", "0.01"]),
    ("complete temperature tiny", ["complete", "-b", "igpt-tiny", "-d", "digits", "--keep-rows", "4", "--temperature", "1e-300", "--out", "{tmp}/out/c.png"], ["--temperature"]),
    ("sample-quality temperature tiny", [*RUN[:2], "sample-quality", *OUT, "-b", "igpt-tiny", "-d", "digits", "-o", "temperature=1e-40"], ["temperature"]),
    ("sample-quality bad inception file", [*RUN[:2], "sample-quality", *OUT, "-b", "igpt-tiny", "-d", "digits", "-o", "n=20", "-o", "extractor=inception:{not-weights}"], ["not-weights"]),
    ("pretrain lr 1e300", ["pretrain", "-b", "igpt-tiny", "-d", "digits", "--steps", "2", "--lr", "1e300", "--out", "{tmp}/run"], ["--lr"]),
    ("pretrain weight decay nan", ["pretrain", "-b", "igpt-tiny", "-d", "digits", "--steps", "2", "--weight-decay", "nan", "--out", "{tmp}/run"], ["--weight-decay", "finite"]),
    ("pretrain grad clip inf", ["pretrain", "-b", "igpt-tiny", "-d", "digits", "--steps", "2", "--grad-clip", "inf", "--out", "{tmp}/run"], ["--grad-clip"]),
    ("benchmark knn temperature nan", ["benchmark", "knn", "--temperature", "nan"], ["--temperature"]),
    ("benchmark knn too big", ["benchmark", "knn", "--n-train", "99999999999", "--dim", "99999999"], ["GiB", "lower"]),
    ("benchmark pretrain colors huge", ["benchmark", "pretrain", "-b", "igpt-tiny", "--colors", "100000000"], ["--colors"]),
    ("igpt shape past memory", ["benchmark", "pretrain", "-b", "igpt-512x16384"], ["parameters", "smaller shape"]),
    ("igpt side too large", ["backbones", "show", "igpt-3x8", "--image-size", "1024"], ["128x128"]),
    ("compare one file twice", ["compare", "{results-good}", "{results-good}"], ["two or more runs"]),
    # option ranges: every task option is bounded above too, checked before any work
    ("correlation bootstrap huge", [*RUN[:2], "correlation", *OUT, "-b", "igpt-tiny", "-d", "digits", "-o", "bootstrap=2000000000"], ["bootstrap", "1..100000"]),
    ("probe max_iter huge", [*RUN, "-b", "pixels", "-d", "digits", "-o", "max_iter=1000000000"], ["max_iter", "1..100000"]),
    ("probe patience huge", [*RUN, "-b", "pixels", "-d", "digits", "-o", f"patience={10**20}"], ["patience", "0..100"]),
    ("probe grid of 101 strengths", [*RUN, "-b", "pixels", "-d", "digits", "-o", "l2_grid=" + ",".join(f"{10 ** (-x / 20):.6g}" for x in range(101))], ["l2_grid", "101 values", "at most 100"]),
    ("knn block_size huge", [*RUN[:2], "knn", *OUT, "-b", "pixels", "-d", "digits", "-o", "block_size=1000000000000"], ["block_size", "1..4194304"]),
    ("knn 101 k values", [*RUN[:2], "knn", *OUT, "-b", "pixels", "-d", "digits", "-o", "k=" + ",".join(map(str, range(1, 102)))], ["option k=", "101 values", "at most 100"]),
    ("low-data max_iter huge", [*RUN[:2], "low-data-probe", *OUT, "-b", "pixels", "-d", "digits", "-o", "max_iter=99999999"], ["max_iter", "1..100000"]),
    ("low-data 101 budgets", [*RUN[:2], "low-data-probe", *OUT, "-b", "pixels", "-d", "digits", "-o", "shots=" + ",".join(map(str, range(1, 102)))], ["shots", "at most 100"]),
    ("finetune patience huge", [*RUN[:2], "finetune", *OUT, "-b", "pixels", "-d", "digits", "-o", "patience=5000"], ["patience", "0..1000"]),
    ("finetune 21 rates", [*RUN[:2], "finetune", *OUT, "-b", "pixels", "-d", "digits", "-o", "lr=" + ",".join(f"{(x + 1) / 100}" for x in range(21))], ["lr", "at most 20"]),
    ("sample-quality batch_size huge", [*RUN[:2], "sample-quality", *OUT, "-b", "igpt-tiny", "-d", "digits", "-o", "batch_size=10000000"], ["batch_size", "1..65536"]),
    ("correlation n past the split", [*RUN[:2], "correlation", *OUT, "-b", "igpt-tiny", "-b", "igpt-2x16", "-b", "igpt-3x8", "-d", "digits", "--limit", "100", "-o", "n=100000"], ["n=100000", "larger than the val split"]),
    ("correlation one checkpoint three ways", [*RUN[:2], "correlation", *OUT, "-b", "igpt", "-d", "digits", "--weights", "{ckpt-three-ways}/run/checkpoints/step-0000001", "--weights", "{ckpt-three-ways}/link", "--weights", "{ckpt-three-ways}/copy"], ["at least 3 checkpoints, got 1", "same weights files once"]),
    ("correlation run folder and its checkpoint", [*RUN[:2], "correlation", *OUT, "-b", "igpt", "-d", "digits", "--weights", "{ckpt-three-ways}/run", "--weights", "{ckpt-three-ways}/run/checkpoints/./step-0000001", "--weights", "{ckpt-three-ways}/copy"], ["got 1", "step-0000001, ", "/copy are "]),
    ("sample-quality inception folder without weights", [*RUN[:2], "sample-quality", *OUT, "-b", "igpt-tiny", "-d", "digits", "-o", "extractor=inception:{folder-empty}"], ["folder-empty holds no weights file"]),
    ("folder test-only class", ["extract", "--split", "test", "--out", "{tmp}/out/a.h5", "-b", "pixels", "-d", "imagefolder", "--data-root", "{folder-test-only-class}"], ["eel", "train lacks"]),
    # sharding and submitting a sweep
    ("shard 0/0", [*RUN, "-b", "pixels", "-d", "digits", "--shard", "0/0"], ["--shard 0/0", "number of shards"]),
    ("shard 2/2", [*RUN, "-b", "pixels", "-d", "digits", "--shard", "2/2"], ["--shard 2/2", "below N"]),
    ("shard -1/2", [*RUN, "-b", "pixels", "-d", "digits", "--shard", "-1/2"], ["'-1/2' is not K/N"]),
    ("shard a/b", [*RUN, "-b", "pixels", "-d", "digits", "--shard", "a/b"], ["'a/b' is not K/N"]),
    ("shard 3", [*RUN, "-b", "pixels", "-d", "digits", "--shard", "3"], ["'3' is not K/N"]),
    ("submit option alone", [*RUN, "-b", "pixels", "-d", "digits", "-S", "timeout_min=5"], ["goes with --submit"]),
    ("submit option unknown", [*RUN, "-b", "pixels", "-d", "digits", "--submit", "local", "-S", "nonsense=1"], ["--submit-option", "nonsense"]),
    ("submit option text", [*RUN, "-b", "pixels", "-d", "digits", "--submit", "local", "-S", "timeout_min=abc"], ["timeout_min"]),
    ("submit unknown", [*RUN, "-b", "pixels", "-d", "digits", "--submit", "pbs"], ["--submit", "slurm"]),
    # names
    ("unknown backbone", [*RUN, "-b", "resnet81", "-d", "digits"], ["unknown backbone", "resnet18"]),
    ("unknown dataset", [*RUN, "-b", "pixels", "-d", "digitz"], ["unknown dataset", "digits"]),
    ("unknown split", ["extract", "-b", "pixels", "-d", "digits", "--split", "dev", "--out", "{tmp}/out/a.h5"], ["--split"]),
    ("unknown layer", [*EXTRACT, "-b", "resnet18", "-d", "digits", "--layers", "layer7"], ["layer7"]),
    ("unknown igpt shape", ["pretrain", "-b", "igpt-huge", "-d", "digits", "--steps", "2", "--out", "{tmp}/run"], ["igpt"]),
    ("backbones show unknown", ["backbones", "show", "resnet81"], ["resnet18"]),
    ("bad tag", [*RUN, "-b", "pixels", "-d", "digits", "--tag", "a/b"], ["--tag"]),
    ("unknown precision", [*EXTRACT, "-b", "pixels", "-d", "digits", "--precision", "fp8"], ["--precision"]),
    ("unknown device", [*EXTRACT, "-b", "pixels", "-d", "digits", "--device", "tpu"], ["device"]),
    # weights
    ("weights missing", [*RUN, "-b", "resnet18", "-d", "digits", "--weights", "{tmp}/nope.safetensors"], ["do not exist"]),
    ("weights with inf", [*RUN, "-b", "resnet18", "-d", "digits", "--weights", "{weights-inf}"], ["non-finite", "conv1.weight"]),
    ("weights for pixels", [*RUN, "-b", "pixels", "-d", "digits", "--weights", "{weights-inf}"], ["pixels"]),
    ("checkpoint claiming 512x16384", [*RUN[:2], "bits-per-dim", *OUT, "-b", "igpt", "-d", "digits", "--weights", "{ckpt-512x16384}"], ["igpt.json", "parameters", "smaller model"]),
    ("checkpoint of 3 heads over 64 wide", [*RUN[:2], "bits-per-dim", *OUT, "-b", "igpt", "-d", "digits", "--weights", "{ckpt-heads-3-of-64}"], ["n_embd 64 is not divisible by n_head 3"]),
    ("checkpoint of a text width", [*EXTRACT, "-b", "igpt", "-d", "digits", "--weights", "{ckpt-width-text}"], ["n_embd = 'wide'", "whole number"]),
    ("igpt weights folder empty", [*EXTRACT, "-b", "igpt", "-d", "digits", "--weights", "{folder-empty}"], ["folder-empty"]),
    # results files for report / compare
    ("report value text", ["report", "{results-value-text}"], ["record 0", "value", "not a number"]),
    ("report no metric", ["report", "{results-no-metric}"], ["record 0", "metric"]),
    ("report record list", ["report", "{results-record-list}"], ["record 0", "not an object"]),
    ("report layer number", ["report", "{results-layer-number}"], ["layer", "not text"]),
    ("report value bool", ["report", "{results-value-bool}"], ["value", "not a number"]),
    ("report records dict", ["report", "{results-records-dict}"], ["no list of records"]),
    ("report step text", ["report", "{results-step-text}"], ["step", "not a whole number"]),
    ("compare damaged files", ["compare", "{results-value-text}", "{results-no-metric}"], ["record 0"]),
    ("report top1 negative", ["report", "{results-top1-negative}"], ["top1 = '-5.0'", "0..100"]),
    ("report stderr negative", ["report", "{results-stderr-negative}"], ["stderr = '-1.0'", "a number in 0..", "(a spread)"]),
    ("report records twice", ["report", "{results-records-twice}"], ["record 1 measures what record 0 does"]),
    ("report fake study", ["report", "{study-fake}"], ["study-fake", "holds 0 checkpoints"]),
    ("report study of two checkpoints", ["report", "{study-two-points}", "--summary"], ["study-two-points", "holds 2 checkpoints"]),
    ("report study without a field", ["report", "{study-no-gap-share}"], ["study-no-gap-share", "(separation) without its gap_share"]),
    ("report study of unknown kind", ["report", "{study-kind-unknown}"], ["study-kind-unknown", "'banana'"]),
    ("report unknown study", ["report", "{study-unknown}", "--format", "md"], ["'causation'", "does not know"]),
    ("report study matched steps without groups", ["report", "{study-matched-no-groups}"], ["matched steps without its groups"]),
    ("report study of an unmeasured quality", ["report", "{study-unmeasured-quality}"], ["'bits_per_dim'", "no checkpoint was measured in"]),
    ("compare fake study", ["compare", "{study-fake}", "{results-good}"], ["study-fake", "holds 0 checkpoints"]),
    ("report not json", ["report", "{results-not-json}"], ["not a readable results file"]),
    ("report missing", ["report", "{tmp}/nothing-here"], ["does not exist"]),
    ("report /dev/null", ["report", "/dev/null"], ["/dev/null", "not a results file"]),
    ("report empty folder", ["report", "{folder-empty}"], ["no results files"]),
    # output paths
    ("out is a folder", ["extract", "-b", "pixels", "-d", "digits", "--split", "test", "--out", "{folder-empty}"], ["folder"]),
    ("out under a file", ["extract", "-b", "pixels", "-d", "digits", "--split", "test", "--out", "/dev/null/a.h5"], ["cannot write"]),
    ("results under a file", [*RUN[:3], "--results", "/dev/null/res", "-b", "pixels", "-d", "digits"], ["cannot write"]),
    ("pretrain out under /proc", ["pretrain", "-b", "igpt-tiny", "-d", "digits", "--steps", "2", "--out", "/proc/run"], ["cannot write"]),
]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad-inputs")
    return {name: make(base / name) for name, make in FIXTURES.items()}


def _snapshot(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("case, args, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(bench, tmp_path, fixtures, case, args, fragments):
    before = {name: _snapshot(p) if p.is_dir() else p.read_bytes() for name, p in fixtures.items()}
    filled = [a.format(tmp=tmp_path, **{k: str(v) for k, v in fixtures.items()})
              if "{" in a else a for a in args]
    r = bench(*filled)
    assert_user_error(r, *fragments)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == [], written  # no results, activation files, parts, locks or checkpoints
    after = {name: _snapshot(p) if p.is_dir() else p.read_bytes() for name, p in fixtures.items()}
    assert after == before  # the inputs are left as they were


def test_the_table_is_large_and_covers_every_command():
    assert len(CASES) >= 60
    commands = {args[0] for _, args, _ in CASES}
    assert {"run", "extract", "report", "compare", "sample", "complete", "pretrain", "demo", "benchmark", "perf",
            "backbones"} <= commands


# -- the offline hub fails fast, with a whole message --------------------------------------------


def test_an_unreachable_hub_is_not_retried(bench, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    online = []
    real = huggingface_hub.snapshot_download

    def spy(*a, local_files_only=False, **kw):
        if not local_files_only:
            online.append(a)
        return real(*a, local_files_only=local_files_only, **kw)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    r = bench("-q", "extract", "-b", "igpt", "--weights", "openai/imagegpt-small", "-d", "digits", "--split",
              "test", "--out", tmp_path / "a.h5")
    assert_user_error(r, "openai/imagegpt-small", "the hub was not tried", "127.0.0.1:9 is unreachable")
    assert online == []
    assert r.err.rstrip().endswith("or pass a local folder")  # whole, not cut mid-word
