"""The committed reference results: made by the committed code, complete, and the numbers their
READMEs quote are the numbers in their records."""

from pathlib import Path

import pytest

from bench import api
from bench.report import render, study_tables

ROOT = Path(__file__).resolve().parent.parent / "results" / "fashion-mnist"


def test_reference_results_hold_every_protocol_tables_plots_and_the_page():
    df = api.report(ROOT / "records")
    runs = {(b, t) for b, t in df[["backbone", "task"]].drop_duplicates().itertuples(index=False)}
    for backbone in ("pixels", "resnet18", "igpt"):
        for task in ("linear-probe", "knn", "low-data-probe"):
            assert (backbone, task) in runs, (backbone, task)
    assert ("resnet18", "finetune") in runs and ("igpt", "finetune") in runs
    concat = df[(df.backbone == "igpt") & (df.task == "linear-probe")].layer.astype(str)
    assert concat.str.contains("+", regex=False).any()  # the five layers around the best, concatenated
    for plot in ("probe-depth", "low-data", "finetune-curves"):
        assert (ROOT / "plots" / f"{plot}.png").stat().st_size > 10_000
    page = (ROOT / "report.html").read_text()
    assert page.count("<table>") >= 4 and page.count("data:image/png;base64,") == 3
    readme = (ROOT / "README.md").read_text()
    assert "scripts/fashion-mnist-reference.sh" in readme


def _study():
    df = api.report(ROOT / "correlation" / "records")
    return df, df[df.study.notna()]


def test_the_correlation_readme_quotes_its_records():
    df, study = _study()
    readme = (ROOT / "correlation" / "README.md").read_text()
    for _, table in study_tables(df):
        assert render(table, "md") in readme  # the tables, as `bench report --format md` renders them
    stat = study[(study.kind == "stat") & (study.quality == "bits_per_dim") & (study.metric == "spearman")].iloc[0]
    assert f"**ρ = {stat.value:.2f}** (95% CI [{stat.lo:.2f}, {stat.hi:.2f}], n = {int(stat.n)})" in readme
    best = study[(study.kind == "best") & (study.split == "test")]
    top = best.loc[best.value.astype(float).idxmax()]
    assert f"best iGPT linear probe: **{float(top.value):.2f}** test top-1 ({top.point}, {top.layer})" in readme
    pixels = df[(df.backbone == "pixels") & (df.split == "test") & (df.metric == "top1")]
    assert len(pixels) == 1 and f"pixels at the same limit: {float(pixels.value.iloc[0]):.2f}" in readme
    assert "igpt 8x128" in set(study["size"].dropna())  # at least 8 blocks deep
    assert study[study.kind == "best"].groupby("size").point.nunique().min() >= 6  # at least 6 saves per size


@pytest.mark.parametrize("size", ["igpt 4x256", "igpt 8x128"])
def test_the_correlation_readme_says_where_the_best_layer_is(size):
    _, study = _study()
    rows = study[(study.kind == "best") & (study.split == "test") & (study["size"] == size)]
    last = rows.loc[rows.step.astype(float).idxmax()]
    blocks = int(size.split()[-1].split("x")[0])
    inside = last.layer not in ("h0", f"h{blocks}", "final")
    readme = (ROOT / "correlation" / "README.md").read_text()
    claim = (f"{size}, last checkpoint: best layer {last.layer} of h0…h{blocks} "
             f"({'strictly inside' if inside else 'not strictly inside'})")
    assert claim in readme
