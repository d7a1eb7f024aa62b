"""Extraction under bf16 autocast (`--precision bf16`): features close to fp32's, stored apart from
them, and results kept apart by identity; `auto` is fp32 on a CPU."""

import json

import numpy as np

from bench import api


def test_bf16_features_are_close_to_fp32_and_cached_apart(tmp_path):
    common = dict(layers="h1,final", limit=120, cache=tmp_path / "cache")
    f32 = api.extract("igpt-tiny", "digits", "val", **common)
    b16 = api.extract("igpt-tiny", "digits", "val", precision="bf16", **common)
    assert f32.path != b16.path and "bf16" in b16.path.name
    for layer in ("h1", "final"):
        a, b = f32.read(layer), b16.read(layer)
        assert b.dtype == np.float32 and a.shape == b.shape
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cos.min() > 0.99, (layer, cos.min())
        assert not np.array_equal(a, b)  # bf16 did run: other numbers
    again = api.extract("igpt-tiny", "digits", "val", precision="auto", **common)  # auto on a CPU: fp32
    assert again.path == f32.path and again.how.startswith("reused")


def test_bf16_results_are_apart_from_fp32_ones(bench, tmp_path):
    args = ("run", "-b", "resnet18", "-t", "linear-probe", "-d", "digits", "--limit", "150", "--layers", "layer4",
            "-o", "l2_grid=1e-2", "--results", tmp_path / "res")
    assert bench(*args).code == 0
    r = bench(*args, "--precision", "bf16")
    assert r.code == 0 and "skipped" not in r.out, r
    files = sorted((tmp_path / "res").glob("*.json"))
    assert len(files) == 2
    runs = [json.loads(f.read_text())["run"] for f in files]
    assert sorted(str(run["identity"].get("precision")) for run in runs) == ["None", "bf16"]
    assert sorted(run["config"]["precision"] for run in runs) == ["bf16", "fp32"]
    r = bench(*args, "--precision", "auto")  # fp32 on a CPU: the first run, done already
    assert r.code == 0 and "skipped" in r.out, r


def test_bf16_on_a_cpu_without_bf16_instructions_warns(tmp_path, monkeypatch):
    """Where the CPU has neither AVX512-BF16 nor AMX, bf16 autocast is emulated and slower than
    fp32 (bench perf's bf16 row, docs/performance.md): the run says so; fp32 says nothing,
    and neither does bf16 where the instructions are there."""
    import bench.runtime as runtime

    common = dict(layers="final", limit=40, cache=tmp_path / "cache")
    for hardware, precision, warned in ((None, "bf16", True), (None, "fp32", False), ("amx_bf16", "bf16", False)):
        monkeypatch.setattr(runtime, "cpu_bf16_hardware", lambda hardware=hardware: hardware)
        lines = []
        api.extract("igpt-tiny", "digits", "val", precision=precision, log=lines.append, **common)
        assert any("without AVX512-BF16 or AMX" in line for line in lines) == warned, (hardware, precision, lines)
