"""Activation files never give wrong numbers: checksums verified on reuse (a tampered file is
extracted again, logged), non-finite activations and weights stopped with where they are, a write
failure leaves a partial whose rows are valid and whose resume equals an uninterrupted run, and a
file that cannot fit on the disk or under `ulimit -f` is refused before any work."""

import errno
import json
import resource
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

import bench.store as store
import bench.store_writer as writer
from bench.store import open_activations
from tests.conftest import assert_user_error

ARGS = ("extract", "-b", "pixels", "-d", "digits", "--split", "train", "--batch-size", "64")


def _clean(bench, tmp_path):
    out = tmp_path / "clean.h5"
    assert bench("-q", *ARGS, "--out", out).code == 0
    act = open_activations(out)
    return out, act.read("pixels"), act.labels


def _edit_values(f):
    f["layers/pixels"][3, :5] += 0.25


def _shuffle_labels(f):
    y = f["labels"][:]
    f["labels"][:] = np.roll(y, 1)


def _edit_indices(f):
    f["indices"][0] = 10**6


def _cut_layer(f):
    x = f["layers/pixels"][:-7]
    del f["layers/pixels"]
    f["layers"].create_dataset("pixels", data=x)


def _nan_values(f):
    f["layers/pixels"][10, 0] = np.nan


def _drop_checksums(f):
    del f.attrs["checksums"]


def _forge_checksum(f):
    sums = json.loads(f.attrs["checksums"])
    sums["layers/pixels"] = "0" * 64
    f.attrs["checksums"] = json.dumps(sums)


TAMPER = {"values edited": _edit_values, "labels shuffled": _shuffle_labels, "indices edited": _edit_indices,
          "layer cut short": _cut_layer, "NaN written in": _nan_values, "no checksums": _drop_checksums,
          "checksum forged": _forge_checksum}


@pytest.mark.parametrize("case", TAMPER)
def test_a_tampered_file_is_extracted_again_with_a_log_line(bench, tmp_path, case):
    out, ref_x, ref_y = _clean(bench, tmp_path)
    with h5py.File(out, "r+") as f:
        TAMPER[case](f)
    r = bench(*ARGS, "--out", out)
    assert r.code == 0, r
    assert "extracting" in r.err and "again" in r.err, r.err
    assert r.out.startswith("extracted again"), r.out
    act = open_activations(out)
    assert act.verify() == ""
    np.testing.assert_array_equal(act.read("pixels"), ref_x)
    np.testing.assert_array_equal(act.labels, ref_y)


def test_a_tampered_cache_file_is_not_reused_by_a_run(bench, isolated_cache):
    run = ("-q", "run", "-b", "pixels", "-t", "linear-probe", "-d", "digits", "-o", "l2_grid=1e-2", "--results")
    first = bench(*run, "r1")
    assert first.code == 0, first
    (train,) = [p for p in isolated_cache.rglob("*.h5") if "-train-" in p.name]
    with h5py.File(train, "r+") as f:
        _shuffle_labels(f)
    second = bench(*run, "r2")
    assert second.code == 0, second
    (a,), (b,) = [json.loads(p.read_text()) for p in (isolated_cache.parent / "r1").glob("*.json")], \
        [json.loads(p.read_text()) for p in (isolated_cache.parent / "r2").glob("*.json")]
    assert a["run"]["splits"]["train"]["cache"] == "extracted"
    assert b["run"]["splits"]["train"]["cache"].startswith("extracted again (the checksum of labels")
    assert [r["value"] for r in a["records"]] == [r["value"] for r in b["records"]]


def test_verify_names_what_changed(bench, tmp_path):
    out, _, _ = _clean(bench, tmp_path)
    assert open_activations(out).verify() == ""
    with h5py.File(out, "r+") as f:
        _edit_values(f)
    assert "layers/pixels" in open_activations(out).verify()


def test_non_finite_activations_stop_with_the_layer_and_row(bench, tmp_path, monkeypatch):
    from backbones.pixels import PixelsBackbone

    real = PixelsBackbone.features

    def features(self, x, layers):
        out = real(self, x, layers)
        out["pixels"] = out["pixels"].clone()
        if len(out["pixels"]) > 5:
            out["pixels"][5, 2] = float("inf")
        return out

    monkeypatch.setattr(PixelsBackbone, "features", features)
    out = tmp_path / "a.h5"
    r = bench("-q", *ARGS, "--out", out)
    assert_user_error(r, "non-finite", "layer pixels at row 5", "dataset index")
    assert not out.exists() and not writer.parts_dir(out).exists()


def test_non_finite_weights_are_refused(bench, tmp_path):
    import torch
    from safetensors.torch import save_file

    assert bench("-q", "pretrain", "-b", "igpt-tiny", "-d", "digits", "--limit", "100", "--steps", "2",
                 "--batch-size", "8", "--warmup", "1", "--out", tmp_path / "run").code == 0
    ckpt = tmp_path / "run" / "checkpoints" / "step-0000002"
    from safetensors.torch import load_file

    sd = load_file(str(ckpt / "model.safetensors"))
    key = sorted(sd)[3]
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] = torch.nan
    save_file(sd, str(ckpt / "model.safetensors"))
    r = bench("-q", "extract", "-b", "igpt", "--weights", ckpt, "-d", "digits", "--split", "test", "--out",
              tmp_path / "x.h5")
    assert_user_error(r, "non-finite", key)
    assert not (tmp_path / "x.h5").exists()


class _FailingFile:
    """A layer file that takes ``room`` more bytes and then fails as a full disk does (the bytes
    that fit are written: a torn row)."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        data = bytes(data)
        if len(data) > self.room:
            self.f.write(data[: self.room])
            self.f.flush()
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_a_write_failure_leaves_valid_rows_and_the_resume_equals_a_clean_run(bench, tmp_path, monkeypatch):
    ref_out, ref_x, ref_y = _clean(bench, tmp_path)
    row = 64 * 4
    monkeypatch.setattr(writer, "open", lambda p, mode="r": _FailingFile(open(p, mode), 5 * 64 * row + 100)
                        if "a" in mode else open(p, mode), raising=False)
    out = tmp_path / "a.h5"
    r = bench("-q", *ARGS, "--out", out)
    assert_user_error(r, "No space left on device", "320 of 1294 rows kept", "rerun the same command")
    assert not out.exists()
    parts = writer.parts_dir(out) / "shard-0-of-1"
    assert json.loads((parts / "progress.json").read_text())["rows_done"] == 320
    assert (parts / "000.f32").stat().st_size == 320 * row + 100  # a torn row past the count
    monkeypatch.undo()
    r = bench(*ARGS, "--out", out)
    assert r.code == 0 and r.out.startswith("resumed at row 320"), r
    act = open_activations(out)
    np.testing.assert_array_equal(act.read("pixels"), ref_x)
    np.testing.assert_array_equal(act.labels, ref_y)
    with h5py.File(out, "r") as a, h5py.File(ref_out, "r") as b:
        assert a.attrs["checksums"] == b.attrs["checksums"]
    assert not parts.parent.exists()


def test_a_file_over_the_size_limit_is_refused_before_any_work(tmp_path):
    """A real limit (ulimit -f), in a child process: HDF5 must never meet a failed write."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    out = tmp_path / "a.h5"
    p = subprocess.run([sys.executable, "-m", "bench", "-q", *ARGS, "--out", str(out)], preexec_fn=limit,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "ulimit -f" in p.stderr, p.stderr
    assert not out.exists() and not writer.parts_dir(out).exists()


def test_a_disk_too_small_is_refused_before_any_work(bench, tmp_path, monkeypatch):
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    out = tmp_path / "a.h5"
    assert_user_error(bench("-q", *ARGS, "--out", out), "MiB are free", "free space")
    assert not out.exists() and not writer.parts_dir(out).exists()


def test_sigterm_ends_an_extraction_as_ctrl_c_does_and_the_rerun_resumes(tmp_path):
    import os
    import time

    out = tmp_path / "a.h5"
    cmd = [sys.executable, "-m", "bench", "-q", "extract", "-b", "resnet18", "-d", "digits", "--split", "train",
           "--image-size", "96", "--batch-size", "16", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    progress = writer.parts_dir(out) / "shard-0-of-1" / "progress.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads(progress.read_text())["rows_done"] >= 32:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted; rerun the same command to resume" in err, err
    assert not (tmp_path / ".a.h5.lock").exists()  # the lock went with the process
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "resumed at row" in again.stdout, again.stderr


def test_hdf5_structure_damage_found_on_reuse_is_damage_not_a_crash(bench, tmp_path, monkeypatch):
    """Bytes flipped inside HDF5's own structures make h5py raise RuntimeError or KeyError on read:
    verify reports it like a checksum mismatch, for a named file and for a cached superset alike."""
    out, ref_x, _ = _clean(bench, tmp_path)

    def broken(ds):
        raise RuntimeError("Can't read data (wrong B-tree signature)")

    monkeypatch.setattr(store, "dataset_checksum", broken)
    assert open_activations(out).verify() == "its data cannot be read back (RuntimeError)"
    r = bench(*ARGS, "--out", out)
    assert r.code == 0 and r.out.startswith("extracted again (its data cannot be read back"), r
    monkeypatch.undo()
    np.testing.assert_array_equal(open_activations(out).read("pixels"), ref_x)


def test_counted_rows_edited_before_a_resume_are_extracted_again_not_kept(bench, tmp_path, monkeypatch):
    """Each counted batch has its checksum in progress.json: a part changed after it was counted is
    discarded on resume, so the finished file equals a clean run's."""
    ref_out, ref_x, _ = _clean(bench, tmp_path)
    row = 64 * 4
    monkeypatch.setattr(writer, "open", lambda p, mode="r": _FailingFile(open(p, mode), 5 * 64 * row + 100)
                        if "a" in mode else open(p, mode), raising=False)
    out = tmp_path / "a.h5"
    assert bench("-q", *ARGS, "--out", out).code == 2
    monkeypatch.undo()
    part = writer.parts_dir(out) / "shard-0-of-1" / "000.f32"
    data = bytearray(part.read_bytes())
    data[10 * row : 10 * row + 4] = np.float32(123.0).tobytes()  # one counted value, changed
    part.write_bytes(bytes(data))
    r = bench(*ARGS, "--out", out)
    assert r.code == 0 and not r.out.startswith("resumed"), r
    assert "discarding" in r.err and "damaged" in r.err, r
    np.testing.assert_array_equal(open_activations(out).read("pixels"), ref_x)
    with h5py.File(out, "r") as a, h5py.File(ref_out, "r") as b:
        assert a.attrs["checksums"] == b.attrs["checksums"]
