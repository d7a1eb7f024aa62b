"""End to end through the CLI on real data: run, report, compare, list, show."""

import json

import pandas as pd

from tests.conftest import bench_subprocess


def test_run_resnet18_digits_prints_a_row_per_stage_and_writes_records(bench, tmp_path):
    r = bench("-q", "run", "--backbone", "resnet18", "--task", "linear-probe", "--dataset", "digits",
              "--results", tmp_path / "res")
    assert r.code == 0, r
    for stage in ("act1", "layer1", "layer2", "layer3", "layer4"):
        assert stage in r.out
    assert "val top-1" in r.out and "test top-1" in r.out and "chosen L2" in r.out
    (path,) = (tmp_path / "res").glob("resnet18__digits__linear-probe__*.json")
    doc = json.loads(path.read_text())
    recs = doc["records"]
    assert {(x["layer"], x["split"], x["metric"]) for x in recs} >= {
        ("layer1", "val", "top1"), ("layer1", "test", "top1"), ("layer1", "val", "l2")}
    rec = recs[0]
    for key in ("backbone", "fingerprint", "weights", "step", "tag", "run", "dataset", "task", "layer", "split",
                "metric", "value", "stderr", "seed", "config", "versions", "git_commit", "time"):
        assert key in rec
    assert rec["versions"]["torch"] and len(rec["fingerprint"]) == 64
    tops = [x["value"] for x in recs if x["metric"] == "top1"]
    assert all(0 <= v <= 100 for v in tops) and max(tops) > 80  # far above chance (10%)


def test_report_and_compare_through_the_real_console_script(tmp_path):
    res = tmp_path / "res"
    for b in ("pixels", "resnet18"):
        r = bench_subprocess("-q", "run", "-b", b, "-t", "linear-probe", "-d", "digits", "--limit", "300",
                             "--results", res, "-o", "l2_grid=1e-4,1e-2,1")
        assert r.code == 0, r
    r = bench_subprocess("report", res, "--format", "csv")
    assert r.code == 0, r
    df = pd.read_csv(__import__("io").StringIO(r.out))
    assert {"backbone", "dataset", "task", "layer", "split", "metric", "value"} <= set(df.columns)
    assert set(df.backbone) == {"pixels", "resnet18"}
    assert set(df[df.metric == "top1"].split) == {"val", "test"}
    md = bench_subprocess("report", res, "--long", "--format", "md", "--best")
    assert md.code == 0 and md.out.startswith("| backbone |"), md
    assert sum("*" in line for line in md.out.splitlines() if "| resnet18 |" in line) == 3  # one layer's 3 rows
    (a,) = res.glob("pixels__digits__linear-probe__*.json")
    (b,) = res.glob("resnet18__digits__linear-probe__*.json")
    c = bench_subprocess("compare", a, b, "--format", "csv")
    assert c.code == 0, c
    cmp = pd.read_csv(__import__("io").StringIO(c.out))
    best = cmp[(cmp.layer == "best by val") & (cmp.split == "test") & (cmp.metric == "top1")]
    assert len(best) == 1
    row = best.iloc[0]
    value = {k: float(row[k]) for k in ("pixels", "resnet18", "Δ resnet18")}
    assert abs(value["Δ resnet18"] - (value["resnet18"] - value["pixels"])) < 1e-9
    chosen = cmp[cmp.metric == "layer chosen"].iloc[0]
    assert chosen["pixels"] == "pixels" and chosen["resnet18"] in ("act1", "layer1", "layer2", "layer3", "layer4")


def test_a_finished_run_is_skipped_and_rerun_reuses_the_activation_cache(bench, tmp_path):
    args = ("run", "-b", "pixels", "-t", "linear-probe", "-d", "digits", "--limit", "200", "--results", tmp_path)
    first = bench(*args)
    second = bench(*args)
    third = bench(*args, "--rerun")
    assert first.code == second.code == third.code == 0
    notes = lambda r: [line.split(" ")[1] for line in r.err.splitlines()]  # noqa: E731 - "train: extracted …"
    assert notes(first) == ["extracted"] * 3
    assert second.err.startswith("skipped (done already") and len(second.err.splitlines()) == 1
    assert notes(third) == ["reused"] * 3
    table = lambda r: r.out.split("results")[0]  # noqa: E731
    assert table(first) == table(second) == table(third)  # same seed, same numbers
    assert len(list(tmp_path.glob("*.json"))) == 1


def test_listing_and_showing(bench):
    r = bench("backbones", "list", "resnet1*")
    assert r.code == 0 and "resnet18" in r.out and "pixels" not in r.out
    r = bench("backbones", "list")
    assert r.code == 0 and "pixels" in r.out and "convnext_atto" in r.out
    r = bench("backbones", "show", "resnet18", "--dataset", "digits")
    assert r.code == 0
    for layer, width in (("act1", "64"), ("layer1", "64"), ("layer2", "128"), ("layer3", "256"), ("layer4", "512")):
        assert any(layer in line and width in line for line in r.out.splitlines()), r.out
    r = bench("backbones", "show", "pixels", "--dataset", "digits")
    assert r.code == 0 and "64" in r.out
    r = bench("tasks", "list")
    assert r.code == 0 and "linear-probe" in r.out and "l2_grid" in r.out
    r = bench("datasets", "list")
    assert r.code == 0 and "fashion-mnist" in r.out


def test_a_group_without_its_command_shows_its_help(bench):
    for group in ("tasks", "backbones", "datasets"):
        r = bench(group)
        assert r.code == 0 and "Commands:" in r.out and "list" in r.out, (group, r)
        assert "\\n" not in r.out + r.err


def test_every_command_has_an_example_in_help(bench):
    for cmd in (["backbones", "list"], ["backbones", "show"], ["tasks", "list"], ["datasets", "list"],
                ["extract"], ["run"], ["report"], ["compare"], []):
        r = bench(*cmd, "--help")
        assert r.code == 0 and "Example" in r.out, cmd


def test_timm_prefix_names_the_same_model(bench, tmp_path):
    r = bench("-q", "extract", "-b", "timm/resnet18", "-d", "digits", "--split", "test", "--limit", "20",
              "--layers", "layer1", "--out", tmp_path / "a.h5")
    assert r.code == 0, r
    assert (tmp_path / "a.h5").is_file()


def test_demo_pretrains_probes_three_backbones_and_draws_completions(bench, tmp_path):
    r = bench("-q", "demo", "--steps", "20", "--results", tmp_path / "res")
    assert r.code == 0, r
    table = r.out[r.out.index("linear probe on digits"):]
    for name in ("pixels", "resnet18", "igpt", "layer4", "h4", "final"):
        assert name in table
    assert (tmp_path / "res" / "demo-completions.png").is_file()
    assert (tmp_path / "res" / "demo-igpt-tiny-digits" / "checkpoints" / "step-0000020").is_dir()
    assert len(list((tmp_path / "res").glob("*__digits__linear-probe__*.json"))) == 3


def test_backbones_show_prints_parameters_and_flops_per_image(bench):
    """FLOPs against the transformer's closed form: per block 24·T·d² for the four matrix
    products (qkv, proj, two MLP) and 4·T²·d for attention (scores and weighted sum)."""
    r = bench("backbones", "show", "igpt-2x64", "--dataset", "digits")  # 8x8 gray: T = 64 tokens
    assert r.code == 0, r
    layers, width, tokens = 2, 64, 64
    flops = layers * (24 * tokens * width**2 + 4 * tokens**2 * width)
    assert f"forward FLOPs per image to the last layer: {flops:,}" in r.out, r.out
    assert "parameters: 105,984" in r.out  # 17x64 + 64x64 embeddings, 2 blocks, final norm, 16x64 head
    r = bench("backbones", "show", "pixels", "--dataset", "digits")
    assert r.code == 0 and "parameters: 0;" in r.out
