"""The committed reference results: made by the committed code, complete, free of the paths of the
machine that made them, and every number their READMEs state is a number of their records (or a
target of the study, or a fact of the format), so a README cannot drift from what it reports."""

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
from scipy import stats

from backbones.base import recorded_weights
from bench import api
from bench.records import collect, read_results
from bench.render import render
from bench.report import study_tables
from bench.runs import frame
from bench.study import _label
from tasks.correlation import Correlation

RESULTS = Path(__file__).resolve().parent.parent / "results"
ROOT = RESULTS / "fashion-mnist"
ABSOLUTE = re.compile(r"(?<![\w.~-])/(?:work|tmp|root|home|Users|mnt|data|scratch|var)/")


def test_no_committed_results_file_names_a_path_of_the_machine_that_made_it():
    files = [f for f in RESULTS.rglob("*") if f.suffix in (".json", ".jsonl", ".md", ".html", ".txt")]
    assert len(files) > 50
    found = {str(f.relative_to(RESULTS)): m.group(0) for f in files for m in [ABSOLUTE.search(f.read_text())] if m}
    assert not found, found


def test_a_record_keeps_the_weights_as_named_and_its_identity_however_they_are_named(bench, tmp_path, monkeypatch,
                                                                                    tiny_run):
    monkeypatch.setenv("BENCH_CACHE", "cache")  # a relative cache: the activation paths are relative too
    shutil.copytree(tiny_run, tmp_path / "runs" / "tiny")
    knn = ["-q", "run", "-b", "igpt", "-t", "knn", "-d", "digits", "--limit", "200", "--layers", "final"]
    files = {}
    for name, weights in [("relative", "runs/tiny"), ("absolute", tmp_path / "runs" / "tiny"),
                          ("elsewhere", tiny_run)]:
        r = bench(*knn, "--weights", weights, "--results", f"res-{name}")
        assert r.code == 0, r
        (files[name],) = (tmp_path / f"res-{name}").glob("*.json")
    doc = {name: json.loads(f.read_text()) for name, f in files.items()}
    for name in ("relative", "absolute"):
        assert doc[name]["run"]["weights"] == "runs/tiny/checkpoints/step-0000012"
        assert doc[name]["run"]["config"]["backbone_options"]["weights"] == "runs/tiny"
        assert doc[name]["run"]["backbone_provenance"]["config"]["source"]["weights"] == "runs/tiny/checkpoints/step-0000012"
        assert str(tmp_path) not in files[name].read_text()
    assert doc["elsewhere"]["run"]["weights"] == "tiny/checkpoints/step-0000012"  # a run outside: from its folder
    assert doc["elsewhere"]["run"]["config"]["backbone_options"]["weights"] == "tiny"
    assert files["relative"].name == files["absolute"].name  # one checkpoint, one identity, however named
    assert doc["relative"]["run"]["identity"] == doc["absolute"]["run"]["identity"]
    assert {r["weights"] for r in doc["relative"]["records"]} == {"runs/tiny/checkpoints/step-0000012"}
    report = bench("report", "res-relative", "--format", "md")
    assert report.code == 0 and "| igpt tiny@step12 | final |" in report.out, report


def test_the_recorded_weights_text_follows_a_simple_rule(tmp_path):
    (tmp_path / "results" / "run1" / "finetuned").mkdir(parents=True)
    (tmp_path / "model.pt").write_bytes(b"")
    loaded = str(tmp_path / "results" / "run1" / "finetuned")
    assert recorded_weights(loaded, loaded, tmp_path / "results") == "run1/finetuned"  # under the results folder
    assert recorded_weights(loaded, "results/run1", "elsewhere") == "results/run1/finetuned"  # relative: as named
    assert recorded_weights(str(tmp_path / "model.pt"), "./model.pt") == "model.pt"
    assert recorded_weights("/hub/cache/snapshots/abc/model.safetensors", "openai/imagegpt-small") == \
        "openai/imagegpt-small"  # a hub id names them
    for label in ("pretrained", "random-init(seed=0)", None):
        assert recorded_weights(label, None) == label


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
    assert "scripts/fashion-mnist-reference.sh" in readme and "scripts/fashion-mnist-study.sh" in readme


# -- every number a README states ------------------------------------------------------------------

# Numbers a README may state that are no record's: the study's targets (issue text), the machine and
# the image format.
TARGETS = {"8", "0.05", "88", "-0.9", "-0.7", "0"}
FACTS = {"2", "256"}  # a 2-core CPU; 256 gray levels of a uint8 image
NUMBER = re.compile(r"(?<![\w@×/.−-])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w×/]|\.\d)")


def prose_numbers(text: str) -> list[str]:
    """The numbers a Markdown text states outside code and tables; names such as h4, 4x256, 14×14,
    ResNet-18 or top-1 are not numbers."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`]*`", "", text)
    text = "\n".join(line for line in text.splitlines() if not line.startswith("|"))
    return NUMBER.findall(text)


def assert_readme_states_only(readme: str, claims: list[str]) -> None:
    """Each claim (text built from the records) is in the README, and every number of its prose is
    one of the claims' numbers, a target or a fact."""
    missing = [c for c in claims if c not in readme]
    assert not missing, missing
    known = set(prose_numbers(" ".join(claims))) | TARGETS | FACTS
    untested = sorted(set(prose_numbers(readme)) - known)
    assert not untested, f"numbers the README states that no test checks: {untested}"


def test_prose_numbers_skip_names_code_and_tables():
    text = "h4 of 4x256 at 14×14, ResNet-18 top-1 `--limit 2000`\n| 1.5 |\n```\n--steps 5000\n```\n" \
           "is 85.00 (-0.92, 54,000 rows; 1, 5, 10)."
    assert prose_numbers(text) == ["85.00", "-0.92", "54,000", "1", "5", "10"]


def _f(x: float) -> str:
    return f"{float(x):.2f}"


def _top1(df, task: str, split: str = "test"):
    rows = df[(df.task == task) & (df.split == split) & (df.metric == "top1") & df.curve.isna()]
    return rows[rows.shots.isna()] if "shots" in rows else rows


def _best_by_val(df, task: str, backbone: str):
    """(layer, test top-1) of the single layer with the best val top-1 (the shallowest on a tie)."""
    val = _top1(df, task, "val")
    val = val[(val.backbone == backbone) & ~val.layer.astype(str).str.contains("+", regex=False)]
    layer = val.sort_values("layer_index").loc[val.sort_values("layer_index").value.astype(float).idxmax()].layer
    test = _top1(df, task)
    return layer, float(test[(test.backbone == backbone) & (test.layer == layer)].value.iloc[0])


def fashion_claims() -> list[str]:
    """What results/fashion-mnist/README.md states, built from its records."""
    df = api.report(ROOT / "records")
    df["curve"] = df["curve"] if "curve" in df else np.nan
    runs = {f.name: json.loads(f.read_text())["run"] for f in collect([ROOT / "records"])}
    igpt = next(r for r in runs.values() if r["backbone"] == "igpt" and r["task"] == "linear-probe")
    model = igpt["backbone_provenance"]["config"]["model"]
    train_rows = igpt["splits"]["train"]["rows"]
    lp = _top1(df, "linear-probe")
    test = {r.layer: float(r.value) for r in lp[lp.backbone == "igpt"].itertuples()}
    layer, igpt_top1 = _best_by_val(df, "linear-probe", "igpt")
    pixels = lp[lp.backbone == "pixels"].iloc[0]
    mine = lp[(lp.backbone == "igpt") & (lp.layer == layer)].iloc[0]
    diff = igpt_top1 - float(pixels.value)
    se = math.hypot(float(mine.stderr), float(pixels.stderr))
    knn_layer, knn_igpt = _best_by_val(df, "knn", "igpt")
    knn = _top1(df, "knn")
    low = df[(df.task == "low-data-probe") & (df.split == "test") & (df.metric == "top1")]
    shots = sorted(low.shots.dropna().unique())
    pix_low = [float(low[(low.backbone == "pixels") & (low.shots == s)].value.iloc[0]) for s in shots]
    igpt_low = [low[(low.backbone == "igpt") & (low.shots == s)].value.astype(float).max() for s in shots]
    assert all(p > i for p, i in zip(pix_low, igpt_low))  # pixels win every budget, even against the best layer

    ft = {r["backbone"]: r for r in runs.values() if r["task"] == "finetune"}
    ft_test = {b: float(_top1(df, "finetune").query("backbone == @b").value.iloc[0]) for b in ft}
    curves = df[(df.task == "finetune") & df.curve.notna()]
    first_val = {b: float(curves[(curves.backbone == b) & (curves.split == "val") & (curves.epoch == 1)].value.iloc[0])
                 for b in ft}
    gen = float(curves[(curves.backbone == "igpt") & (curves.metric == "gen_loss")].value.iloc[-1]) / math.log(2)
    log = [json.loads(line) for line in (ROOT / "pretrain-log.jsonl").read_text().splitlines()]
    ft_lr, last_lr = ft["igpt"]["config"]["task_options"]["lr"], log[-1]["lr"]
    assert ft_lr == 5 * last_lr and ft_test["igpt"] < igpt_top1  # "five times", "below its own linear probe"
    ft_opts = {b: (ft[b]["config"]["task_options"]["epochs"], ft[b]["splits"]["train"]["rows"]) for b in ft}
    resnet = lp[lp.backbone == "resnet18"].set_index("layer").value.astype(float)
    resnet_run = next(r for r in runs.values() if r["backbone"] == "resnet18")
    assert "init" not in resnet_run["backbone_provenance"]["config"]  # built with timm's zero_init_last=True

    corr = _recombined()
    wide_last = corr[(corr.kind == "best") & (corr.split == "test") & (corr["size"] == f"igpt {model['n_layer']}x"
                                                                                       f"{model['n_embd']}")]
    wide_last = wide_last.loc[wide_last.step.astype(float).idxmax()]
    probed = [json.loads(f.read_text())["run"] for f in collect([ROOT / "correlation" / "records"])]
    assert wide_last.point == f"{Path(igpt['weights']).parts[-3]}@step{igpt['step']}" and any(  # the same checkpoint, probed on fewer rows there
        r.get("fingerprint") == igpt["fingerprint"] and r["task"] == "linear-probe" for r in probed)
    return [
        f"`igpt-wide` ({model['n_layer']} blocks × {model['n_embd']})",
        f"at 14×14 with a\n{model['n_colors']}-color palette; every probe uses all {train_rows:,} training images",
        "test top-1\n  " + ", ".join(f"{_f(test[x])} ({x})" for x in ("h1", "h2", "h3", "h4")) + f", {_f(test['final'])} "
        f"(final); val chooses {layer}, the top block.",
        f"The {int(corr.limit.iloc[0]):,}-row probe of the same checkpoint in `correlation/` chose {wide_last.layer}",
        f"Linear probe: iGPT {_f(igpt_top1)} against raw pixels {_f(pixels.value)},\n  a difference of {_f(diff)} "
        f"with a standard error of {_f(se)}",
        f"Pixels win kNN ({_f(knn[knn.backbone == 'pixels'].value.iloc[0])} against the iGPT's {_f(knn_igpt)})",
        f"({', '.join(str(int(s)) for s in shots)} labels per class: {', '.join(map(_f, pix_low))} test\n  top-1, "
        f"against the best iGPT layer's {', '.join(map(_f, igpt_low))})",
        f"at 14×14 and {model['n_colors']} gray levels",
        f"concatenated reach\n  {_f(max(v for k, v in test.items() if '+' in str(k)))}",
        f"ResNet-18: {ft_opts['resnet18'][0]} epochs over all {ft_opts['resnet18'][1]:,} training rows,\n  "
        f"{_f(ft_test['resnet18'])} test top-1",
        f"iGPT: {ft_opts['igpt'][0]} epoch over {ft_opts['igpt'][1]:,} rows at lr {ft_lr:g}, five times its last "
        f"pretraining\n  rate ({last_lr:g}): {_f(ft_test['igpt'])}, below its own linear probe",
        f"averaged\n  {gen:.2f} bits/dim against {log[-1]['val_bits_per_dim']:.2f} at the end of pretraining",
        f"(ResNet-18 {_f(first_val['resnet18'])}, iGPT {_f(first_val['igpt'])})",
        f"(linear probe {_f(resnet['layer4'])}, kNN {_f(knn[(knn.backbone == 'resnet18') & (knn.layer == 'layer4')].value.iloc[0])} "
        f"test top-1; layer2 {_f(resnet['layer2'])})",
        f"The only model here has {model['n_layer']} blocks",
        f"{_f(igpt_top1)} is below 88",
        f"fine-tuned {_f(ft_test['igpt'])} against {_f(ft_test['resnet18'])} under unequal budgets",
    ]


def test_the_reference_readme_states_only_numbers_of_its_records():
    assert_readme_states_only((ROOT / "README.md").read_text(), fashion_claims())


# -- the correlation study ---------------------------------------------------------------------------

def _study():
    df = api.report(ROOT / "correlation" / "records")
    return df, df[df.study.notna()]


def _recombined():
    """The study's records as the current ``tasks/correlation.py`` combines the committed member
    records (the committed study record predates the per-size, partial and matched-step rows)."""
    folder = ROOT / "correlation" / "records"
    by_run, sizes, study = {}, {}, None
    for f in collect([folder]):
        run = json.loads(f.read_text())["run"]
        if "members" in run:
            study = run
            continue
        by_run[run["run"]] = read_results(f)
        model = run["backbone_provenance"]["config"].get("model")
        if model:
            sizes[run["run"]] = f"{run['backbone']} {model['n_layer']}x{model['n_embd']}"
    points = []
    for ids in study["identity"]["members"]:
        records = [r for i in ids for r in by_run[i]]
        first = records[0]
        points.append({"label": _label(first), "size": sizes[ids[0]], "backbone": first["backbone"],
                       "weights": first.get("weights"), "step": first.get("step"), "records": records, "run": ids})
    task = Correlation()
    raw = task.combine(points, task.parse_options(study["identity"]["options"]), study["identity"]["seed"])
    return frame([dict(r, task="correlation", dataset=study["dataset"], run="recomputed", seed=study["seed"],
                       limit=study["limit"], layer_index=i) for i, r in enumerate(raw)])


def _ci(row) -> str:
    return f"95% CI [{_f(row.lo)}, {_f(row.hi)}]"


def correlation_claims() -> dict[str, str]:
    """What results/fashion-mnist/correlation/README.md states, built from its records: the
    README's {PLACEHOLDER} -> text."""
    df, _ = _study()
    corr = _recombined()
    stat = corr[(corr.kind == "stat") & (corr.quality == "bits_per_dim")]
    pooled = stat[(stat.scope == "all checkpoints") & (stat.metric == "spearman")].iloc[0]
    partial = stat[stat.scope == "partial given step"].iloc[0]
    matched = stat[stat.scope == "matched steps"].iloc[0]
    sep = corr[(corr.kind == "separation") & (corr.quality == "bits_per_dim")].iloc[0]
    assert sep.separable is False or sep.separable == 0  # the study's own check: step and quality are one here
    best = corr[(corr.kind == "best") & (corr.split == "test")]
    steps, acc = best.step.astype(float).to_numpy(), best.value.astype(float).to_numpy()
    quality = corr[(corr.kind == "quality") & (corr.metric == "bits_per_dim")].set_index("point").value.astype(float)
    bpd = quality.loc[best.point].to_numpy()
    rng = np.random.default_rng(0)  # the share of bootstrap resamples (whole checkpoints) with ρ <= -0.9
    idx = rng.integers(0, len(bpd), size=(10000, len(bpd)))
    rho = np.array([stats.spearmanr(bpd[i], acc[i])[0] for i in idx])
    share = float(np.mean(rho[np.isfinite(rho)] <= -0.9))
    val = corr[(corr.kind == "best") & (corr.split == "val")]
    assert (val.gap.astype(float) <= val.val_stderr.astype(float)).all()  # every runner-up within one SE
    assert int(val.val_n.iloc[0]) == int(corr.limit.iloc[0])
    top = best.loc[best.value.astype(float).idxmax()]
    pixels = df[(df.backbone == "pixels") & (df.split == "test") & (df.metric == "top1")]
    assert len(pixels) == 1 and float(pixels.value.iloc[0]) > float(top.value)

    def last(size):
        rows = best[best["size"] == size]
        row = rows.loc[rows.step.astype(float).idxmax()]
        blocks = int(size.split()[-1].split("x")[0])
        inside = row.layer not in ("h0", f"h{blocks}", "final")
        return (f"{size}, last checkpoint: best layer {row.layer} of h0…h{blocks} "
                f"({'strictly inside' if inside else 'not strictly inside'})")

    return {
        "RHO": _f(pooled.value), "RHO_LO": _f(pooled.lo), "RHO_HI": _f(pooled.hi), "RHO_N": str(int(pooled.n)),
        "STEP_BPD": _f(sep.value), "GAP": f"{float(sep.gap):.3f}",
        "STEP_ACC": _f(stats.spearmanr(steps, acc)[0]), "SHARE": f"{100 * share:.0f}",
        "PARTIAL": _f(partial.value), "PARTIAL_CI": _ci(partial), "MATCHED": _f(matched.value),
        "MATCHED_CI": _ci(matched), "BEST_WIDE": last("igpt 4x256"), "BEST_MINI": last("igpt 8x128"),
        "BEST_PROBE": f"**{_f(top.value)}** test top-1 ({top.point}, {top.layer})",
        "PIXELS": f"pixels at the same limit: {_f(pixels.value.iloc[0])}",
        "TABLES": "\n\n".join(f"### {title}\n\n{render(table, 'md')}" for title, table in study_tables(corr)),
    }


def test_the_correlation_readme_states_only_numbers_of_its_records():
    df, study = _study()
    readme = (ROOT / "correlation" / "README.md").read_text()
    claims = correlation_claims()
    intro = _recombined()
    limit, n = int(intro.limit.iloc[0]), json.loads(next((ROOT / "correlation" / "records").glob("study__*.json"))
                                                    .read_text())["run"]["identity"]["options"]["n"]
    shapes = dict.fromkeys(tuple(str(s).split()[-1].split("x")) for s in intro["size"].dropna())
    (wide, mini) = shapes  # the two sizes, in the study's order
    texts = list(claims.values()) + [f"`igpt-wide` ({wide[0]} blocks × {wide[1]}) and `igpt-mini` ({mini[0]} blocks × {mini[1]})",f"on {limit:,} training rows, bits/dim on {limit:,} val rows, {n} samples per checkpoint",
              f"one standard error of {limit:,} val images"]
    assert_readme_states_only(readme, texts)
    # the committed study record's pooled rows are the recomputed ones
    committed = study[study.kind == "stat"][["quality", "metric", "value", "lo", "hi"]].reset_index(drop=True)
    corr = _recombined()
    again = corr[(corr.kind == "stat") & (corr.scope == "all checkpoints")][["quality", "metric", "value", "lo", "hi"]]
    assert np.allclose(committed[["value", "lo", "hi"]].astype(float),
                       again.reset_index(drop=True)[["value", "lo", "hi"]].astype(float))
    assert "igpt 8x128" in set(study["size"].dropna())  # at least 8 blocks deep
    assert study[study.kind == "best"].groupby("size").point.nunique().min() >= 6  # at least 6 saves per size


# -- the redo's script ---------------------------------------------------------------------------------

def test_the_study_script_runs_its_whole_chain_on_the_cpu_at_toy_scale(tmp_path):
    """scripts/fashion-mnist-study.sh is the redo of this folder (hours on the CPU, minutes on a
    GPU): its toy CPU route (tiny sizes, a few steps, 50 rows) keeps its commands in step with the
    CLI, and what it writes names no absolute path."""
    import os
    import subprocess
    import sys

    from tests.conftest import need_fashion_mnist

    need_fashion_mnist()
    env = {**os.environ, "DEVICE": "cpu", "STEPS": "6", "DEEP_STEPS": "6", "LIMIT": "50", "N": "5",
           "SIZES": "igpt-1x16", "DEEP": "igpt-2x16", "FT_EPOCHS": "1", "SHOTS": "1", "PRECISION": "bf16",
           "EXTRACTOR": "pixels", "LRS_IGPT": "1e-3,3e-3", "LRS_RESNET": "1e-3,3e-3", "RES": "res", "RUNS": "runs",
           "BENCH": f"{sys.executable} -m bench", "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("BENCH_CACHE")  # the script's own, under RUNS
    r = subprocess.run(["bash", str(RESULTS.parent / "scripts" / "fashion-mnist-study.sh")], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = tmp_path / "res"
    steps = [line.split(":")[0] for line in (res / "times.txt").read_text().splitlines()]
    assert steps == ["pretrain-igpt-1x16", "pretrain-igpt-2x16", "correlation", "depth-igpt", "probes-igpt", "probes-pixels-view",
                     "probes-pixels-resnet18", "finetune-igpt", "finetune-resnet18", "report"]
    for size in ("igpt-1x16", "igpt-2x16"):
        assert len(list((tmp_path / "runs" / size / "checkpoints").glob("step-*"))) == 6  # six saves each
    df = api.report([res / "records", res / "correlation"])
    stats_rows = df[(df.task == "correlation") & (df.get("kind") == "stat")]
    assert {"all checkpoints", "partial given step"} <= set(stats_rows.scope.dropna())
    assert {"igpt", "pixels", "pixels-view", "resnet18"} <= set(df.backbone.dropna())
    chosen = df[(df.task == "finetune") & (df.split == "val") & (df.metric == "top1") & df.curve.isna()]
    assert len(chosen) == 2  # one fine-tune per backbone, its rate chosen on val
    paired = (res / "paired.md").read_text()
    assert "pixels-view" in paired and "finetune" in paired and "McNemar" in paired
    assert "two layers" in (res / "depth-paired.md").read_text()
    depth = api.report(res / "depth")  # the deep model's last three saves: every layer, and bits/dim on val
    assert sorted(depth[depth.task == "linear-probe"].step.astype(int).unique()) == [4, 5, 6]
    assert set(depth[depth.metric == "bits_per_dim"].split) == {"val"}
    precision = {json.loads(f.read_text())["run"]["config"]["precision"]
                 for f in [*(res / "depth").glob("*linear-probe*.json"), *(res / "records").glob("igpt@*linear-probe*.json")]}
    assert len(precision) == 1  # the last save's layers are one extraction for depth/ and records/
    assert (res / "report.html").is_file() and (res / "results.md").is_file()
    assert (res / "igpt-2x16-pretrain-log.jsonl").is_file()
    written = [f for f in res.rglob("*") if f.suffix in (".json", ".jsonl", ".md", ".html")]
    assert not [f for f in written if str(tmp_path) in f.read_text()]  # relative folders: relative records
