"""results/fashion-mnist/study-cpu/: the reference study's CPU route, as committed. Every number its
README states is rebuilt here from its records (through the same ``bench.api`` a user reads them
with), so the README cannot drift from what the records say, and each target's verdict is the
records' verdict."""

import json
import re
from pathlib import Path

from bench import api
from bench.records import collect
from tests.test_committed_results import FACTS, TARGETS, _f, prose_numbers

STUDY = Path(__file__).resolve().parent.parent / "results" / "fashion-mnist" / "study-cpu"
SIZES = ("igpt-2x32", "igpt-4x64", "igpt-8x64")
MAIN = "igpt-8x128"


def _ci(row) -> str:
    return f"[{_f(row.lo)}, {_f(row.hi)}]"


def _runs(folder: Path) -> list[dict]:
    return [json.loads(f.read_text())["run"] for f in collect([folder])]


def _study_record():
    """The study's own rows (one study file: partial studies of a subset are not committed)."""
    studies = list((STUDY / "correlation").glob("study__*.json"))
    assert len(studies) == 1, studies
    df = api.report(STUDY / "correlation")
    return df[df.study.notna()]


def correlation_claims() -> list[str]:
    corr = _study_record()
    stat = corr[(corr.kind == "stat") & (corr.quality == "bits_per_dim")]
    pooled = stat[(stat.scope == "all checkpoints") & (stat.metric == "spearman")].iloc[0]
    partial = stat[stat.scope == "partial given step"].iloc[0]
    matched = stat[stat.scope == "matched steps"].iloc[0]
    within = stat[stat.scope == "within size"]
    sep = corr[(corr.kind == "separation") & (corr.quality == "bits_per_dim")].iloc[0]
    quality = corr[(corr.kind == "quality") & (corr.metric == "bits_per_dim")]
    best = corr[(corr.kind == "best") & (corr.split == "test")]
    last_step = int(best.step.astype(float).max())
    last_acc = {r.size: r for r in best.itertuples() if int(float(r.step)) == last_step}
    bpd = dict(zip(quality.point, quality.value.astype(float)))
    last_bpd = {size: bpd[r.point] for size, r in last_acc.items()}
    steps = sorted({int(float(s)) for s in best.step})
    b_met = float(pooled.value) <= -0.9 and float(pooled.hi) < -0.7 and float(partial.value) < 0 \
        and float(partial.hi) < 0
    runs = _runs(STUDY / "correlation")
    probe = next(r for r in runs if r["task"] == "linear-probe")
    quality_run = next(r for r in runs if r["task"] == "sample-quality")
    study = next(r for r in runs if "members" in r)
    claims = [
        f"{probe['backbone_provenance']['config']['model']['n_colors']}-color palette",
        f"all {probe['splits']['train']['rows']:,}",
        f"the {quality_run['splits']['val']['rows']:,} val",
        f"{study['identity']['options']['n']} samples each",
        f"same {probe['splits']['test']['rows']:,} test images",
        f"steps {', '.join(f'{s:,}' for s in steps)}",
        "bits/dim at step " + f"{last_step:,}: " + ", ".join(f"{v:.3f} ({s})" for s, v in last_bpd.items()),
        "best-layer test top-1 " + ", ".join(f"{_f(r.value)} ({s}, {r.layer})" for s, r in last_acc.items()),
        f"largest gap at one step {float(sep.gap):.3f} bits/dim",
        f"pooled Spearman ρ {_f(pooled.value)}, 95% interval {_ci(pooled)} over {int(pooled.n)} checkpoints",
        f"partial ρ given training step {_f(partial.value)}, {_ci(partial)}",
        f"Pearson r across sizes at matched steps {_f(matched.value)}, {_ci(matched)}",
        "within each size: " + ", ".join(f"{_f(r.value)} ({r.size})" for r in within.itertuples()),
        f"**(b) {'met' if b_met else 'not met'}**",
    ]
    return claims


def _probe(backbone: str) -> Path:
    (path,) = (STUDY / "records").glob(f"{backbone}[@_]*__linear-probe__*.json")
    return path


def _p(p) -> str:
    return f"{float(p):.2g}" if float(p) >= 1e-4 else "< 0.0001"


def _chosen(a: Path, b: Path):
    """The paired row of two probes' layers chosen by val."""
    rows = api.paired(a, b)
    return rows[rows.compared == "layers chosen by val"].iloc[0]


def _finetunes() -> tuple[Path, Path]:
    """The iGPT's and the ResNet-18's fine-tune records."""
    (igpt,) = (STUDY / "records").glob("igpt@*__finetune__*.json")
    (resnet,) = (STUDY / "records").glob("resnet18__*__finetune__*.json")
    return igpt, resnet


def _main_probe() -> Path:
    """The linear probe (every layer, and the best five concatenated) of the deep model's last checkpoint."""
    (path,) = (STUDY / "records").glob("igpt@*__linear-probe__*.json")
    return path


def _val_choice(df):
    """Per step, the single layer val chooses (top-1) among a probe's layers."""
    single = df[(df.task == "linear-probe") & (df.metric == "top1") & ~df.layer.astype(str).str.contains("+", regex=False)]
    val = single[single.split == "val"]
    return {int(float(step)): g.loc[g.value.astype(float).idxmax()].layer for step, g in val.groupby("step")}


def settle_claims() -> list[str]:
    """The deep model's depth curve at its last three saves (depth/): has it settled?"""
    df = api.report(STUDY / "depth")
    probe = df[(df.task == "linear-probe") & (df.metric == "top1") & (df.split == "test")]
    test = probe.pivot_table(index="layer", columns="step", values="value", aggfunc="first").astype(float)
    steps = sorted(test.columns, key=float)
    bpd = df[df.metric == "bits_per_dim"].set_index("step").value.astype(float)
    chosen = _val_choice(df)
    moved = (test[steps[-1]] - test[steps[-2]]).abs()
    top = f"h{_runs(STUDY / 'depth')[0]['backbone_provenance']['config']['model']['n_layer']}"
    last_two = {top if chosen[int(float(s))] == "final" else chosen[int(float(s))] for s in steps[-2:]}
    settled = len(last_two) == 1 and moved.max() < 1  # the final norm counts as its top block
    return [
        "steps " + ", ".join(f"{int(float(s)):,}" for s in steps),
        "bits/dim on val " + ", ".join(f"{bpd[s]:.3f}" for s in steps),
        "val chooses " + ", ".join(f"{chosen[int(float(s))]} (step {int(float(s)):,})" for s in steps),
        f"at most {moved.max():.2f} points ({moved.idxmax()})",
        f"**the depth curve has {'settled' if settled else 'not settled'}**",
    ]


def depth_claims() -> list[str]:
    """The depth curve of the deep model's last checkpoint, and its best inner layer against its top."""
    igpt = _main_probe()
    df = api.report(igpt)
    model = json.loads(igpt.read_text())["run"]["backbone_provenance"]["config"]["model"]
    top = f"h{model['n_layer']}"
    single = df[(df.backbone == "igpt") & (df.task == "linear-probe") & (df.metric == "top1")
                & ~df.layer.astype(str).str.contains("+", regex=False)]
    val = single[single.split == "val"].sort_values("layer_index")
    inner = val[~val.layer.isin(["h0", top, "final"])]
    inner = inner.loc[inner.value.astype(float).idxmax()].layer
    chosen = val.loc[val.value.astype(float).idxmax()].layer
    test = single[single.split == "test"].set_index("layer").value.astype(float)
    depth = api.paired(igpt, layers=(top, inner)).iloc[0]
    return [
        "test top-1 by layer: " + ", ".join(f"{_f(test[layer])} ({layer})" for layer in val.layer),
        f"val chooses {chosen}",
        f"its best inner layer {inner} against its top block {top}: Δ {_f(depth['Δ'])} points "
        f"[{_f(depth['Δ low'])}, {_f(depth['Δ high'])}], McNemar p {_p(depth.p)}",
        f"**(a) {'met' if chosen not in ('h0', top, 'final') and depth.p < 0.05 and depth['Δ'] > 0 else 'not met'}**",
    ]


def baseline_claims() -> list[str]:
    """The baselines of records/, paired against the same checkpoint's probe."""
    igpt = _main_probe()
    df = api.report(STUDY / "records")
    concat = df[(df.backbone == "igpt") & (df.task == "linear-probe") & (df.split == "test")
                & df.layer.astype(str).str.contains("+", regex=False)].iloc[0]
    claims = [f"concatenated ({concat.layer}): {_f(concat.value)}"]
    for name, backbone in (("pixels at the model's view", "pixels-view"), ("raw pixels", "pixels"),
                           ("the random-init ResNet-18", "resnet18")):
        row = _chosen(igpt, _probe(backbone))
        claims.append(f"{name} ({row['layer B']}): {_f(row['top1 B'])} against the iGPT's {_f(row['top1 A'])}, "
                      f"Δ {_f(row['Δ'])} [{_f(row['Δ low'])}, {_f(row['Δ high'])}], McNemar p {_p(row.p)}")
        if backbone == "pixels-view":
            view = row
    ft = _chosen(*_finetunes())
    c_met = float(view["top1 A"]) >= 88 and float(view["Δ"]) < 0 and view.p < 0.05 and float(ft["Δ"]) <= 0
    claims.append(f"**(c) {'met' if c_met else 'not met'}**")
    return claims


def finetune_claims() -> list[str]:
    """The fine-tunes of records/: same rows and epochs for both, each rate chosen on val."""
    df = api.report(STUDY / "records")
    ft = df[(df.task == "finetune") & df.curve.isna()]
    runs = {r["backbone"]: r for r in _runs(STUDY / "records") if r["task"] == "finetune"}
    budget = {(r["config"]["task_options"]["epochs"], r["splits"]["train"]["rows"], r["splits"]["test"]["rows"])
              for r in runs.values()}
    (epochs, rows, test_rows), = budget  # one budget for both
    row = _chosen(*_finetunes())
    lrs = {b: float(ft[(ft.backbone == b) & (ft.metric == "lr")].value.iloc[0]) for b in runs}
    grids = {b: sorted(map(float, r["config"]["task_options"]["lr"])) for b, r in runs.items()}

    def rose(record: Path) -> bool:  # every rate's val top-1 still rising in its last epoch: the budget ends too soon
        rates = json.loads((record.with_suffix("") / "finetune.json").read_text())["rates"]
        return all(r["history"][-1]["val_top1"] > r["history"][-2]["val_top1"] for r in rates)

    def where(b):
        return "the top" if lrs[b] == grids[b][-1] else "the bottom" if lrs[b] == grids[b][0] else "the middle"

    return [
        f"iGPT grid {', '.join(f'{g:g}' for g in grids['igpt'])}; ResNet-18 grid "
        f"{', '.join(f'{g:g}' for g in grids['resnet18'])}",
        f"the iGPT's rate is {where('igpt')} of its grid, the ResNet-18's {where('resnet18')} of its grid",
        f"the fine-tuned {'ResNet-18' if float(row['Δ']) > 0 else 'iGPT'} wins",
        "val top-1 still rose in the last epoch at every rate of both grids" if all(map(rose, _finetunes()))
        else "val top-1 stopped rising before the last epoch at some rate",
        f"{rows:,} training rows, {epochs} epochs",
        f"{test_rows:,} test images",
        f"iGPT {_f(row['top1 A'])} (lr {lrs['igpt']:g}) against ResNet-18 {_f(row['top1 B'])} (lr {lrs['resnet18']:g})",
        f"Δ {_f(row['Δ'])} [{_f(row['Δ low'])}, {_f(row['Δ high'])}], McNemar p {_p(row.p)}",
    ]


def test_the_study_cpu_readme_states_only_numbers_of_its_records():
    """Each claim is in the README (however its lines wrap), and every number of its prose is one of
    the claims' numbers or a target of the study."""
    readme = (STUDY / "README.md").read_text()
    claims = correlation_claims() + settle_claims() + depth_claims() + baseline_claims() + finetune_claims()
    flat = " ".join(readme.split())
    missing = [c for c in claims if " ".join(c.split()) not in flat]
    assert not missing, missing
    untested = sorted(set(prose_numbers(readme)) - set(prose_numbers(" ".join(claims))) - TARGETS - FACTS)
    assert not untested, f"numbers the README states that no test checks: {untested}"


def test_the_study_cpu_folder_is_whole():
    runs = _runs(STUDY / "correlation")
    members = {r["weights"].split("/")[-3] for r in runs if r.get("weights")}
    assert members == set(SIZES)
    for size in SIZES:
        saves = {r["step"] for r in runs if r.get("weights", "").startswith(f"runs/fm-study-cpu/{size}/")}
        assert len(saves) >= 6, (size, saves)
        assert (STUDY / f"{size}-pretrain-log.jsonl").is_file()
    assert re.search(r"correlation\S*: \d+ s", (STUDY / "times.txt").read_text())
    depth = _runs(STUDY / "depth")  # the deep model's last three saves, probed and scored
    assert {r["weights"].split("/")[-3] for r in depth} == {MAIN}
    assert len({r["step"] for r in depth}) == 3 and {r["task"] for r in depth} == {"linear-probe", "bits-per-dim"}
    assert (STUDY / f"{MAIN}-pretrain-log.jsonl").is_file()
