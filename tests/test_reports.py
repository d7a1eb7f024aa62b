"""Reports people look at: PNG plots and one self-contained HTML page, checked in a real browser."""

import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from bench import api
from bench.records import write_results
from bench.report import summary
from tests.conftest import assert_user_error

PROBE = ("-o", "l2_grid=1e-3,1e-1")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Probe results of two backbones, plus a low-data run and a fine-tune run written as their
    tasks write them (means over seeds with a spread; per-epoch curve records)."""
    res = tmp_path_factory.mktemp("res")
    for backbone in ("igpt-tiny", "resnet18"):
        api.run(backbone, "linear-probe", "digits", limit=200, results=res, options={"l2_grid": "1e-3,1e-1"},
                cache=tmp_path_factory.mktemp("cache"))
    stamp = {"backbone": "pixels", "dataset": "digits", "seed": 0, "fingerprint": "f" * 64, "weights": None,
             "step": None, "tag": None}
    low = [dict(stamp, run="lowdata00001", task="low-data-probe", layer="pixels", split=split, metric="top1",
                value=60.0 + 8 * np.log(shots) + (split == "val"), stderr=3.0 / shots, std=3.0 / shots, shots=shots,
                seeds=5, layer_index=0) for shots in (1, 5, 10) for split in ("val", "test")]
    write_results(res / "pixels__digits__low-data-probe__lowdata00001.json", {}, low)
    curve = [dict(stamp, backbone="resnet18", run="finetune0001", task="finetune", layer="layer4", split=split,
                  metric=metric, value=value, epoch=epoch, curve=True, layer_index=0)
             for epoch in (1, 2, 3) for split, metric, value in (("train", "loss", 2.0 / epoch),
                                                                 ("val", "top1", 80 + 5 * epoch))]
    final = [dict(stamp, backbone="resnet18", run="finetune0001", task="finetune", layer="layer4", split=split,
                  metric="top1", value=value, stderr=1.0, epoch=3, layer_index=0)
             for split, value in (("val", 95.0), ("test", 94.0))]
    write_results(res / "resnet18__digits__finetune__finetune0001.json", {}, curve + final)
    return res


def test_plot_folder_gets_the_three_plots(bench, results, tmp_path):
    from PIL import Image

    r = bench("report", results, "--plot", tmp_path / "plots")
    assert r.code == 0, r
    names = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert names == ["finetune-curves.png", "low-data.png", "probe-depth.png"], r.err
    for name in names:
        with Image.open(tmp_path / "plots" / name) as im:
            assert im.size[0] > 500 and im.size[1] > 300


def test_summary_shows_spread_over_seeds_and_hides_curves(results):
    table = summary(api.report(results))
    low = table[table.task == "low-data-probe"]
    assert list(low.shots) == [1, 5, 10] and low["± test top1"].tolist() == [3.0, 0.6, 0.3]
    tune = table[table.task == "finetune"]
    assert len(tune) == 1 and tune["test top1"].iloc[0] == 94.0  # the final row only, not the curve
    probe = table[table.task == "linear-probe"]
    assert probe.groupby("run").best.sum().tolist() == [1, 1]  # one best layer per run


@pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true", reason="Debian's chromium is not installed")
def test_html_report_renders_its_tables_and_images_in_headless_chromium(bench, results, tmp_path):
    """The page is opened by a real browser and screenshotted: the table header colour and the
    plots' line colour must be on screen (an image that failed to load would show neither line)."""
    from PIL import Image

    assert CHROMIUM, "CI must install Debian's chromium (.ci/run)"
    page = tmp_path / "report.html"
    r = bench("report", results, "--format", "html", "--out", page)
    assert r.code == 0, r
    text = page.read_text()
    assert text.count("<table>") == 3 and text.count("data:image/png;base64,") == 3 and "src='http" not in text
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1200,4200",
                    f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)

    def count(rgb, tol=6):
        return int((np.abs(pixels - np.array(rgb)).max(axis=1) <= tol).sum())

    assert count((223, 232, 245)) > 3 * 2000  # three tables' header rows (#dfe8f5)
    assert count((255, 243, 196)) > 1000  # the best rows' highlight (#fff3c4)
    assert count((31, 119, 180)) > 2000  # matplotlib's first line colour: the plots were drawn


def test_bad_report_output_options(bench, results, tmp_path):
    assert_user_error(bench("report", results, "--out", tmp_path / "r.txt"), "--format md")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(bench("report", results, "--plot", blocker / "plots"), "cannot write")
    assert_user_error(bench("report", results, "--format", "html", "--out", blocker / "r.html"), "cannot write")
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("*.html"))


def test_compare_pivots_runs_with_deltas_against_the_first(results):
    files = sorted(str(p) for p in results.glob("*linear-probe*.json"))
    table = api.compare(*files)
    assert isinstance(table, pd.DataFrame) and [c for c in table.columns if c.startswith("Δ")] == ["Δ resnet18"]
