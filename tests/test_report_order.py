"""Reports a researcher can read: runs in the order of what they are, repeats over seeds pooled into
mean ± std (n), integers as integers, Markdown that survives a pipe, compare per (dataset, task)."""

import io

import numpy as np
import pandas as pd
import pytest

from bench import api
from bench.errors import BenchError
from bench.records import write_results
from bench.report import summary
from bench.runs import frame, natural_key, pool_seeds, run_order

LAYERS = ["h0", "h1", "h2", "final"]


def _records(run, *, step=None, weights=None, seed=0, task="linear-probe", dataset="digits", backbone="igpt",
             values=None, layers=LAYERS, tag=None, extra_metric=None):
    """The records a probe writes, with made-up numbers: val and test top-1 per layer (and the
    chosen L2 strength, a setting rather than a score)."""
    stamp = {"backbone": backbone, "fingerprint": "f" * 64, "weights": weights, "step": step, "tag": tag,
             "run": run, "dataset": dataset, "task": task, "seed": seed, "limit": 300,
             "config": {"backbone_options": {"pretrained": False, "weights": weights, "image_size": None,
                                             "seed": seed},
                        "task_options": {"l2_grid": [0.001]}, "layers": list(layers), "batch_size": 256,
                        "device": "cpu", "precision": "fp32"}}
    out = []
    for i, layer in enumerate(layers):
        for split in ("val", "test"):
            value = (values or {}).get((layer, split), 50.0 + i + (split == "test"))
            out.append(dict(stamp, layer=layer, layer_index=i, split=split, metric="top1", value=value, stderr=2.0))
        out.append(dict(stamp, layer=layer, layer_index=i, split="val", metric=extra_metric or "l2", value=20.0))
    return out


def _write(folder, name, records):
    return write_results(folder / f"{name}.json", {}, records)


@pytest.fixture
def sweep(tmp_path):
    """A checkpoint sweep saved at steps 50, 100, 150, 200 (named so that text order differs)."""
    res = tmp_path / "res"
    for step in (200, 50, 150, 100):
        weights = f"/runs/tiny/checkpoints/step-{step}"
        _write(res, f"igpt@step{step}__digits__linear-probe__{step:012d}", _records(f"{step:012d}", step=step,
                                                                                    weights=weights))
    return res


def test_checkpoints_order_by_step_everywhere(bench, sweep):
    df = api.report(sweep)
    assert list(dict.fromkeys(df.step)) == [50, 100, 150, 200]
    table = summary(df)
    assert list(dict.fromkeys(table.run)) == [f"igpt tiny@step{s}" for s in (50, 100, 150, 200)]
    assert list(table.layer[:4]) == LAYERS  # final after hL

    r = bench("report", sweep)  # the summary is the default
    assert r.code == 0, r
    positions = [r.out.index(f"tiny@step{s} ") for s in (50, 100, 150, 200)]
    assert positions == sorted(positions), r.out

    cmp = api.compare(sweep)
    runs = [c for c in cmp.columns if c.startswith("igpt")]
    assert runs == [f"igpt tiny@step{s}" for s in (50, 100, 150, 200)]
    assert [c for c in cmp.columns if c.startswith("Δ")] == [f"Δ igpt tiny@step{s}" for s in (100, 150, 200)]
    assert list(dict.fromkeys(cmp.layer))[:4] == LAYERS

    html = sweep.parent / "r.html"
    assert bench("report", sweep, "--format", "html", "--out", html).code == 0
    text = html.read_text()
    positions = [text.index(f"tiny@step{s}<") for s in (50, 100, 150, 200)]
    assert positions == sorted(positions)


def test_compare_against_a_named_run(sweep, bench):
    cmp = api.compare(sweep, against="igpt tiny@step150")
    assert [c for c in cmp.columns if c.startswith("igpt")][0] == "igpt tiny@step150"
    row = cmp[(cmp.layer == "h1") & (cmp.split == "test")].iloc[0]
    assert row["Δ igpt tiny@step50"] == row["igpt tiny@step50"] - row["igpt tiny@step150"]
    (file,) = sweep.glob("igpt@step100__*.json")
    assert api.compare(sweep, against=file.name).columns[5] == "igpt tiny@step100"
    with pytest.raises(BenchError, match="names none of the runs"):
        api.compare(sweep, against="nope")
    r = bench("compare", sweep, "--against", "nope")
    assert r.code == 2 and "names none of the runs" in r.err


@pytest.fixture
def seeds(tmp_path):
    """One experiment repeated over seeds 0, 1, 2 (h1 wins twice, h2 once), and a second run."""
    res = tmp_path / "seeds"
    val = {0: {("h1", "val"): 70.0, ("h1", "test"): 71.0},
           1: {("h1", "val"): 72.0, ("h1", "test"): 73.0},
           2: {("h2", "val"): 90.0, ("h1", "test"): 75.0}}
    for seed in (0, 1, 2):
        _write(res, f"pixels__digits__linear-probe__seed{seed:08d}",
               _records(f"seed{seed:08d}", seed=seed, backbone="resnet18", values=val[seed]))
    _write(res, "pixels__digits__linear-probe__other0000000", _records("other0000000", backbone="pixels",
                                                                        layers=["pixels"]))
    return res


def test_runs_that_differ_only_in_seed_are_one_row_of_mean_and_std(bench, seeds):
    table = summary(api.report(seeds))
    resnet = table[table.run == "resnet18"]
    assert len(resnet) == len(LAYERS) and set(resnet.seed) == {"0–2 (n=3)"}
    h1 = resnet[resnet.layer == "h1"].iloc[0]
    assert h1["test top1"] == pytest.approx(73.0) and h1["± test top1"] == pytest.approx(np.std([71, 73, 75], ddof=1))
    assert h1.won == "2/3" and h1.best and resnet[resnet.layer == "h2"].iloc[0].won == "1/3"

    r = bench("report", seeds)
    assert r.code == 0, r
    assert "0–2 (n=3)" in r.out and "73.00 ± 2.00" in r.out, r.out
    md = bench("report", seeds, "--format", "md")
    assert "| resnet18 | 0–2 (n=3) | h1 * | 64.33 ± 11.59 | 73.00 ± 2.00 |" in md.out, md.out

    html = seeds / "r.html"
    assert bench("report", seeds, "--format", "html", "--out", html).code == 0
    assert "73.00 ± 2.00" in html.read_text() and "0–2 (n=3)" in html.read_text()

    cmp = api.compare(seeds)
    assert "resnet18 (n=3)" in cmp.columns and "± resnet18 (n=3)" in cmp.columns
    chosen = cmp[cmp.metric == "layer chosen"].iloc[0]
    assert chosen["resnet18 (n=3)"] == "h1 2/3, h2 1/3"
    c = bench("compare", seeds)
    assert c.code == 0 and "resnet18 (n=3)" in c.out and "73.00 ± 2.00" in c.out, c

    long = bench("report", seeds, "--long", "--format", "csv")
    assert sorted(pd.read_csv(io.StringIO(long.out)).seed.unique()) == [0, 1, 2]


def test_runs_with_other_options_are_not_pooled(seeds):
    records = _records("lim0000000", seed=3, backbone="resnet18")
    for r in records:
        r["limit"] = 100
    _write(seeds, "resnet18__digits__linear-probe__lim0000000", records)
    table = summary(api.report(seeds))
    assert set(table[table.run.str.startswith("resnet18")].seed) == {"0–2 (n=3)", "3"}


def test_integers_print_as_integers_and_markdown_is_whole(bench, tmp_path):
    res = tmp_path / "res"
    _write(res, "pixels__digits__knn__aaaa", _records("aaaa", backbone="pix|els", layers=["pixels"], task="knn",
                                                      extra_metric="k"))
    r = bench("report", res, "--long", "--format", "md")
    assert r.code == 0
    assert "| k | 20 |" in r.out and "| 300 |" in r.out and "300.00" not in r.out, r.out
    assert "pix\\|els" in r.out
    out = tmp_path / "r.md"
    assert bench("report", res, "--format", "md", "--out", out).code == 0
    assert out.read_text().endswith("|\n")
    s = bench("report", res, "--summary", "--long")
    assert s.code == 2 and "choose one" in s.err


def test_compare_groups_a_mixed_folder_and_leaves_out_settings(bench, tmp_path):
    res = tmp_path / "mixed"
    _write(res, "a__digits__linear-probe__a1", _records("a1", backbone="pixels", layers=["pixels"]))
    _write(res, "b__digits__linear-probe__b1", _records("b1", backbone="resnet18"))
    _write(res, "c__digits__knn__c1", _records("c1", backbone="pixels", layers=["pixels"], task="knn",
                                                extra_metric="k"))
    _write(res, "d__digits__knn__d1", _records("d1", backbone="resnet18", task="knn", extra_metric="k"))
    from tests.test_bad_inputs import study_records

    _write(res, "study__digits__correlation__s1", [dict(r, run="s1") for r in study_records()])  # a whole study
    tables = api.compare_tables(res)
    assert [t.split(":")[0] for t, _ in tables] == ["linear-probe · digits", "knn · digits"]
    for _, table in tables:
        assert set(table.metric) == {"top1", "layer chosen"}
        assert "nan" not in table.columns and len([c for c in table.columns if not c.startswith("Δ")]) == 7
    assert "k" in set(api.compare_tables(res, all_metrics=True)[1][1].metric)
    with pytest.raises(BenchError, match="2 \\(dataset, task\\) pairs"):
        api.compare(res)
    r = bench("compare", res)
    assert r.code == 0 and "knn · digits" in r.out and "linear-probe · digits" in r.out, r


def test_run_order_reads_numbers_in_names():
    assert natural_key("step-50") < natural_key("step-100") < natural_key("step-150")
    df = frame(_records("x", weights="w/ckpt-100.safetensors") + _records("y", weights="w/ckpt-20.safetensors"))
    order = run_order(df)
    assert order["y"] < order["x"]
    assert pool_seeds(df.iloc[:0]).empty


def test_compare_refuses_one_run_given_twice(bench, sweep, tmp_path):
    import shutil

    (file, *_) = sorted(sweep.glob("*.json"))
    copy = tmp_path / "elsewhere" / "renamed.json"
    copy.parent.mkdir()
    shutil.copy(file, copy)
    r = bench("compare", file, copy)
    assert r.code == 2 and "hold the same run" in r.err and len(r.err.strip().splitlines()) == 1, r
    with pytest.raises(BenchError, match="hold the same run"):
        api.compare(sweep, copy.parent)
