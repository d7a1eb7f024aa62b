"""The HDF5 activation store: layout, provenance, reuse, resume after SIGKILL, refusal of strangers."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from bench.store import open_activations
from tests.conftest import assert_user_error

EXTRACT = ["-q", "extract", "-b", "resnet18", "-d", "digits", "--split", "train", "--limit", "400",
           "--image-size", "96", "--batch-size", "16"]


def _extract_cmd(out):
    return [sys.executable, "-m", "bench", *EXTRACT, "--out", str(out)]


def test_file_layout_and_provenance(bench, tmp_path):
    out = tmp_path / "acts.h5"
    r = bench("-q", "extract", "-b", "resnet18", "-d", "digits", "--split", "val", "--layers", "layer3,layer1",
              "--out", out)
    assert r.code == 0, r
    act = open_activations(out)
    assert act.layers == ["layer1", "layer3"]  # depth order
    with h5py.File(out, "r") as f:
        assert f["layers/layer1"].shape == (act.n_rows, 64) and f["layers/layer3"].shape == (act.n_rows, 256)
        assert f["layers/layer1"].chunks is not None
        assert f.attrs["complete"] and f.attrs["rows_done"] == act.n_rows
        assert set(json.loads(f.attrs["checksums"])) == {"labels", "indices", "layers/layer1", "layers/layer3"}
        prov = json.loads(f.attrs["provenance"])
    assert prov["fingerprint"] == act.identity["fingerprint"]
    assert prov["config"]["preprocessing"]["resize"] == [32, 32]
    assert prov["data"]["split"] == "val" and prov["data"]["val_carve"]["size"] == act.n_rows
    assert {"torch", "timm", "h5py"} <= set(prov["versions"])
    assert len(act.labels) == len(act.indices) == act.n_rows


def test_sigkill_then_rerun_resumes_to_identical_arrays(tmp_path):
    killed, clean = tmp_path / "killed.h5", tmp_path / "clean.h5"
    env = dict(os.environ)
    proc = subprocess.Popen(_extract_cmd(killed), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    parts = killed.with_name(killed.name + ".parts")
    deadline = time.time() + 240
    rows = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            rows = json.loads((parts / "shard-0-of-1" / "progress.json").read_text())["rows_done"]
        except (OSError, ValueError, KeyError):
            rows = 0
        if rows >= 64:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "extraction finished before it could be killed; make it slower"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert parts.is_dir() and not killed.exists()

    again = subprocess.run(_extract_cmd(killed), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resumed at row" in again.stdout
    resumed_at = int(again.stdout.split("resumed at row ")[1].split(":")[0])
    assert resumed_at >= 64
    assert not parts.exists()

    ref = subprocess.run(_extract_cmd(clean), env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0 and "extracted" in ref.stdout
    a, b = open_activations(killed), open_activations(clean)
    assert a.identity == b.identity
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.indices, b.indices)
    for layer in a.layers:
        np.testing.assert_array_equal(a.read(layer), b.read(layer))


def test_existing_file_from_other_inputs_is_refused(bench, tmp_path):
    out = tmp_path / "a.h5"
    assert bench("-q", "extract", "-b", "pixels", "-d", "digits", "--split", "test", "--out", out).code == 0
    before = out.read_bytes()
    r = bench("-q", "extract", "-b", "pixels", "-d", "digits", "--split", "val", "--out", out)
    assert_user_error(r, "holds other activations", "choose another --out")
    assert out.read_bytes() == before
    r = bench("-q", "extract", "-b", "pixels", "-d", "digits", "--split", "test", "--out", out)
    assert r.code == 0 and r.out.startswith("reused")


def test_foreign_and_truncated_hdf5_are_refused(bench, tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    r = bench("-q", "extract", "-b", "pixels", "-d", "digits", "--split", "test", "--out", foreign)
    assert_user_error(r, "not an igpt-bench activation file")

    good = tmp_path / "good.h5"
    assert bench("-q", "extract", "-b", "pixels", "-d", "digits", "--split", "test", "--out", good).code == 0
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    r = bench("-q", "extract", "-b", "pixels", "-d", "digits", "--split", "test", "--out", trunc)
    assert_user_error(r, "not a readable HDF5 file")
    with pytest.raises(Exception, match="not a readable HDF5 file"):
        open_activations(trunc)


def test_stale_partial_in_the_cache_is_discarded_not_mixed(bench, isolated_cache):
    args = ("extract", "-b", "pixels", "-d", "digits", "--split", "test")
    assert bench(*args).code == 0
    (path,) = list(isolated_cache.rglob("*.h5"))
    # Forge the parts of another configuration beside it, then delete the finished one.
    parts = path.with_name(path.name + ".parts") / "shard-0-of-1"
    parts.mkdir(parents=True)
    ident = json.loads(h5py.File(path, "r").attrs["identity"])
    ident["fingerprint"] = "0" * 64
    (parts / "progress.json").write_text(json.dumps({"meta": {"identity": ident}, "rows_done": 5}))
    (parts / "000.f32").write_bytes(b"\0" * 5 * 64 * 4)
    ref = open_activations(path).read("pixels")
    path.unlink()
    r = bench(*args)
    assert r.code == 0 and "discarding" in r.err and "extracted" in r.out
    np.testing.assert_array_equal(open_activations(path).read("pixels"), ref)


def test_a_subset_of_cached_layers_reuses_the_bigger_file(bench):
    args = ("-q", "extract", "-b", "resnet18", "-d", "digits", "--split", "test", "--limit", "50")
    first = bench(*args, "--layers", "all")
    assert first.code == 0 and first.out.startswith("extracted")
    sub = bench(*args, "--layers", "layer2,layer4")
    assert sub.code == 0 and sub.out.startswith("reused (a cached file with more layers)")
    other_seed = bench(*args, "--layers", "layer2", "--seed", "1")  # other random init: other fingerprint
    assert other_seed.out.startswith("extracted")
