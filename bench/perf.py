"""`bench perf`: our fast paths against the references a user would otherwise pick, measured in one
process, each row with a correctness check of the fast path against the reference.

Rows (a row that the machine or the installed packages cannot run says why and is skipped):

- ``extract-all`` / ``extract-mid``: iGPT hidden states of every layer / of the middle layer only
  (ours stops there) against transformers' ``ImageGPTModel(output_hidden_states=True)``, same
  weights, fp32; check: the states agree. The ceiling ("at most") is the reference's time over the
  time of the FLOPs the forward needs (causal attention at half its score matrix) at the rate of one
  matmul of the shape's MLP (its largest product): the gain of an implementation that ran every FLOP
  at that rate. Target: the geometric mean over the shapes reaches 0.9 of that ceiling's.
- ``flops``: achieved FLOP/s of an iGPT-S-shaped forward over the FLOP/s of one fp32 matmul of its
  MLP's size; ``bf16``: the same forward under bf16 autocast against fp32; check: features agree.
- ``probe``: the linear probe's whole default grid against ONE scikit-learn lbfgs fit at the
  strength ours chose; check: our objective is no worse than sklearn's at that strength.
- ``memory``: peak resident memory of ``bench extract`` on many images over that on few (a guard: the
  ratio is ours / ours, and must stay near 1).
- ``sample-cache`` / ``sample-hf``: KV-cached sampling against recomputing the prefix (the official
  sampler) and against transformers ``generate(use_cache=True)``; check: the same tokens as the
  recomputation; the same logits as transformers.
- ``dev-extract`` / ``dev-pretrain`` / ``dev-probe`` (group ``gpu``, where CUDA is visible): iGPT-S
  extraction and a pretraining step under bf16 as a fraction of one large bf16 matmul's measured
  rate, and the linear probe of 8 layers on the device; checks: bf16 features against fp32, the
  loss going down, the device probe against the CPU's.

``quick`` shrinks every size (a smoke test: targets are judged in full mode only). ``busy`` runs
every row beside a process that keeps one of our CPUs busy, as on a shared machine; the same targets
hold. Ratios are reference time / our time (> 1: we are faster). Timers and FLOP counts come from
``bench.measure``, the references from ``bench.benchmark`` (as ``bench perf probe|sample|…`` use).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from bench.benchmark import samplers, sklearn_fit, transformers_pair
from bench.measure import (
    bench_peak_memory,
    busy_neighbour,
    count_flops,
    counted,
    interleaved_medians,
    machine,
    matmul_rate,
    median_time,
    necessary_flops,
    profile_call,
    transformers_or_none,
)


@dataclass
class Row:
    row: str
    setting: str
    ours: float | None = None  # seconds, or the unit named
    reference: float | None = None
    unit: str = "s"
    ratio: float | None = None  # reference / ours for times; ours / reference for rates
    target: str = ""
    met: bool | None = None
    check: str = ""
    ok: bool | None = None  # the correctness check passed (None: not applicable)
    note: str = ""
    ceiling: float | None = None  # the largest ratio the measured matmul rate allows (extraction rows)
    profile: list[dict] | None = None  # where our side's time goes (``--profile``): ``profile_call``'s entries


CEILING_SHARE = 0.9  # of the ceiling an extraction row's geometric mean must reach


def extraction_rows(quick: bool, profile: bool = False) -> list[Row]:
    """All layers and the middle layer, ours against transformers, fp32."""
    import torch

    # (layers, width, heads, tokens, colors, batch): head_dim 64 (a perfect square) so that every
    # transformers version's default attention is right.
    shapes = [(4, 128, 2, 196, 16, 4), (2, 256, 4, 256, 512, 4)] if quick else \
        [(12, 256, 4, 784, 16, 8), (24, 512, 8, 1024, 512, 4)]
    repeat = 2 if quick else 3
    rows = []
    if transformers_or_none() is None:
        return [Row("extract-all", "transformers not installed", note="pip install -e '.[perf]'")]
    for n_layer, n_embd, n_head, tokens, colors, batch in shapes:
        ref, ours = transformers_pair(n_layer, n_embd, n_head, colors, tokens)
        idx = torch.randint(0, colors + 1, (batch, tokens), generator=torch.Generator().manual_seed(0))
        mid = f"h{n_layer // 2}"
        setting = f"{n_layer}x{n_embd} @{tokens} tokens, batch {batch}"
        with torch.inference_mode():
            runs = {
                "ref": lambda ref=ref, idx=idx: ref(idx, output_hidden_states=True),
                "all": lambda ours=ours, idx=idx: ours.forward_intermediates(idx),
                "mid": lambda ours=ours, idx=idx, mid=mid: ours.forward_intermediates(idx, [mid], stop_early=True),
            }
            hf = runs["ref"]().hidden_states
            counter, mine = counted(runs["all"])  # the states for the check, and the FLOPs they took
            err = max(float((mine[mid] - hf[n_layer // 2]).abs().max()), float((mine["final"] - hf[-1]).abs().max()))
            work = {"all": necessary_flops(counter), "mid": necessary_flops(counted(runs["mid"])[0])}
            t = interleaved_medians(runs, repeat)
            t_ref = t["ref"]
            mm_rate = matmul_rate(batch * tokens, n_embd, 4 * n_embd, repeat=max(3, repeat))
            profiles = {name: profile_call(runs[name]) for name in ("all", "mid")} if profile else {}
        check = f"max |Δ| of {mid} and final states {err:.1e}"
        for name in ("all", "mid"):
            # At best every necessary FLOP runs at the rate of the forward's largest matmul: the
            # reference's time over that time bounds the ratio (each side: its share of that rate).
            ceiling = t_ref * mm_rate / work[name]
            rows.append(Row(f"extract-{name}", setting, t[name], t_ref, ratio=t_ref / t[name],
                            target=f"geomean >= {CEILING_SHARE:.0%} of at most",
                            check=check, ok=err < 1e-3, ceiling=ceiling, profile=profiles.get(name),
                            note=f"ours {work[name] / t[name] / mm_rate:.0%}, transformers "
                                 f"{work['all'] / t_ref / mm_rate:.0%} of a matmul's FLOP/s"))
    for name in ("extract-all", "extract-mid"):
        mine = [r for r in rows if r.row == name]
        geo = float(np.exp(np.mean([np.log(r.ratio) for r in mine])))
        roof = float(np.exp(np.mean([np.log(r.ceiling) for r in mine])))
        for r in mine:
            r.note = f"geomean {geo:.2f}x of at most {roof:.2f}x; {r.note}"
            r.met = geo >= CEILING_SHARE * roof
    return rows


def flops_rows(quick: bool, profile: bool = False) -> list[Row]:
    """iGPT-S forward: achieved FLOP/s against one fp32 matmul's, and bf16 against fp32."""
    import torch

    from backbones.igpt.model import IGPTConfig, ImageGPT
    from bench.runtime import cpu_bf16_hardware

    tokens, batch, repeat = (256, 2, 2) if quick else (1024, 4, 3)
    torch.manual_seed(0)
    model = ImageGPT(IGPTConfig(n_colors=512, n_positions=tokens, n_embd=512, n_layer=24, n_head=8)).eval()
    idx = torch.randint(0, 513, (batch, tokens), generator=torch.Generator().manual_seed(0))
    run = lambda: model.forward_intermediates(idx, ["final"])  # noqa: E731
    with torch.inference_mode():
        counter, _ = counted(run)
        flops = counter.get_total_flops()
        t32 = median_time(run, repeat)
        mm_rate = matmul_rate(batch * tokens, 512, 2048, repeat=max(3, repeat))
        rows = [Row("flops", f"igpt-s shape (24x512) @{tokens} tokens, batch {batch}, fp32", flops / t32 / 1e9,
                    mm_rate / 1e9, unit="GFLOP/s", ratio=flops / t32 / mm_rate, target=">= 90% of the matmul's",
                    met=flops / t32 / mm_rate >= 0.9,
                    note=f"{flops / 1e9:.1f} GFLOP per forward, causal attention counted whole as torch's counter "
                    f"does; {necessary_flops(counter) / t32 / mm_rate:.0%} counting the half it needs",
                    profile=profile_call(run) if profile else None)]
        ref = run()["final"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            t16 = median_time(run, repeat)
            low = run()["final"].float()
            profile16 = profile_call(run) if profile else None
        cos = float(torch.nn.functional.cosine_similarity(low.flatten(1), ref.flatten(1)).min())
    bf16_cpu = cpu_bf16_hardware()
    rows.append(Row("bf16", f"same forward, bf16 autocast vs fp32 ({bf16_cpu or 'no bf16 hardware'})", t16, t32,
                    ratio=t32 / t16, target=">= 1.6x where the CPU has AVX512-BF16 or AMX",
                    met=(t32 / t16 >= 1.6) if bf16_cpu else None, check=f"min cosine of final states {cos:.4f}",
                    ok=cos > 0.99, profile=profile16))
    return rows


def probe_rows(quick: bool, profile: bool = False, data_root=None) -> list[Row]:
    """Our whole default grid against ONE sklearn lbfgs fit at the strength we chose."""
    from bench.datasets import load_split
    from bench.errors import BenchError
    from bench.probe_loss import objective
    from bench.probe_solver import LogisticRegressionLBFGS, standardize
    from tasks.linear_probe import DEFAULT_GRID, probe_layer

    dataset = "digits" if quick else "fashion-mnist"
    try:
        data = {s: load_split(dataset, s, data_root, None, 0) for s in ("train", "val", "test")}
    except BenchError as e:
        return [Row("probe", f"pixels on {dataset}", note=f"skipped: {e}")]
    X = {s: d.images.reshape(len(d), -1).astype(np.float32) for s, d in data.items()}
    y = {s: d.labels for s, d in data.items()}
    classes = int(max(v.max() for v in y.values())) + 1

    def grid():
        return probe_layer(X["train"], y["train"], X["val"], y["val"], X["test"], y["test"], DEFAULT_GRID, classes,
                           patience=0)

    t = time.perf_counter()
    fit = grid()
    t_ours = time.perf_counter() - t
    Xall, yall = np.concatenate([X["train"], X["val"]]), np.concatenate([y["train"], y["val"]])
    Xall_s, Xte_s = standardize(Xall, X["test"])
    t = time.perf_counter()
    ref = sklearn_fit(Xall_s, yall, fit.l2)
    t_ref = time.perf_counter() - t
    ours = LogisticRegressionLBFGS(classes).fit(Xall_s, yall, fit.l2)

    f_ours = objective(Xall_s, yall, ours.W, ours.b, fit.l2)
    f_ref = objective(Xall_s, yall, ref.coef_.T, ref.intercept_, fit.l2)
    profiled = profile_call(grid) if profile else None
    ref_top1 = 100.0 * float((ref.predict(Xte_s) == y["test"]).mean())
    ok = f_ours <= f_ref + 1e-4 * abs(f_ref) + 1e-5
    return [Row("probe", f"pixels on {dataset}: our {len(DEFAULT_GRID)}-strength grid vs one sklearn fit at "
                f"L2 {fit.l2:g}", t_ours, t_ref, ratio=t_ref / t_ours, target=">= 5x", met=t_ref / t_ours >= 5,
                check=f"objective ours {f_ours:.6f} vs sklearn {f_ref:.6f}; test top-1 {fit.test:.2f} vs "
                f"{ref_top1:.2f}", ok=ok, profile=profiled)]


def sampling_rows(quick: bool, profile: bool = False) -> list[Row]:
    """KV cache against recomputation (same tokens) and against transformers generate."""
    import torch

    # (layers, width, heads, tokens, colors, images)
    shapes = [(4, 128, 2, 196, 16, 4)] if quick else [(4, 128, 2, 196, 16, 16), (8, 256, 4, 784, 16, 16),
                                                      (8, 256, 4, 1024, 512, 8)]
    rows = []
    transformers = transformers_or_none()
    for n_layer, n_embd, n_head, tokens, colors, n in shapes:
        setting = f"{n} images, {n_layer}x{n_embd} @{tokens} tokens"
        if transformers is not None:
            ref, model = transformers_pair(n_layer, n_embd, n_head, colors, tokens, head=True)
        else:
            from backbones.igpt.model import IGPTConfig, ImageGPT

            torch.manual_seed(0)
            ref, model = None, ImageGPT(IGPTConfig(n_colors=colors, n_positions=tokens, n_embd=n_embd,
                                                   n_layer=n_layer, n_head=n_head)).eval()
        out = {}  # each contender's first result
        recompute = quick or tokens <= 256  # recomputation is quadratic: the long rows would take many minutes
        contenders = samplers(model, tokens, n, out, recompute, ref)
        with torch.inference_mode():  # as generate runs; transformers' generate too
            # five rounds of the short row steady its ratio; two of a long one, whose rounds are
            # several times longer, keep the full mode's time in check
            t = interleaved_medians(contenders, 1 if quick else 5 if tokens <= 256 else 2, warmup=False)
            # our sampler's profile goes with the setting's first row
            profiled = profile_call(contenders["cache"]) if profile else None
        t_fast, fast = t["cache"], out["cache"]
        if recompute:
            same = bool(torch.equal(fast, out["recompute"]))
            ratio = t["recompute"] / t_fast
            rows.append(Row("sample-cache", setting, t_fast, t["recompute"], ratio=ratio, target=">= 10x",
                            met=ratio >= 10, check="same tokens as recomputing" if same else
                            "tokens differ from recomputing", ok=same, profile=profiled))
            profiled = None
        if transformers is None:
            rows.append(Row("sample-hf", setting, t_fast, note="transformers not installed: pip install -e '.[perf]'",
                            profile=profiled))
            continue
        with torch.inference_mode():
            seq = torch.cat([torch.full((n, 1), colors, dtype=torch.long), fast[:, :-1]], dim=1)
            err = float((model(seq) - ref(seq).logits[..., :colors]).abs().max())
        t_hf = t["hf"]
        rows.append(Row("sample-hf", setting, t_fast, t_hf, ratio=t_hf / t_fast, target=">= 1.5x at every length",
                        met=t_hf / t_fast >= 1.5, check=f"max |Δ logits| vs transformers {err:.1e}", ok=err < 1e-3,
                        profile=profiled))
    return rows


def memory_rows(quick: bool, profile: bool = False, data_root=None) -> list[Row]:
    """Peak memory of ``bench extract`` (resnet18, every layer) on few and on many images: each in a
    fresh process (its peak resident set), so streaming is what keeps the ratio near 1. Its work
    runs in those processes: ``profile`` has nothing here to profile."""
    import tempfile

    from bench.datasets import load_split
    from bench.errors import BenchError

    dataset, small, large = ("digits", 200, 1200) if quick else ("fashion-mnist", 10000, 54000)
    if not os.path.exists("/proc/self/status"):
        return [Row("memory", f"resnet18 on {dataset}", note="skipped: reads the peak from Linux's /proc")]
    try:
        load_split(dataset, "train", data_root, None, 0)
    except BenchError as e:
        return [Row("memory", f"resnet18 on {dataset}", note=f"skipped: {e}")]
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (small, large):
            args = ["-q", "extract", "-b", "resnet18", "-d", dataset, "--split", "train", "--limit", str(n), "--out",
                    os.path.join(tmp, f"{n}.h5")] + (["--data-root", str(data_root)] if data_root else [])
            peaks[n], failure = bench_peak_memory(args, {**os.environ, "BENCH_CACHE": tmp})
            if failure is not None:
                return [Row("memory", f"resnet18 on {dataset}", note=f"bench extract failed: {failure}")]
    ratio = peaks[large] / peaks[small]
    return [Row("memory", f"bench extract resnet18, all layers, {dataset}: {large} vs {small} images (peak RSS)",
                peaks[large], peaks[small], unit="GiB", ratio=ratio, target="<= 1.1x (a guard)", met=ratio <= 1.1)]


def device_rows(quick: bool, device: str = "cuda", profile: bool = False) -> list[Row]:
    """The accelerator's rows: iGPT-S extraction and a pretraining step under bf16 autocast as a
    fraction of one large bf16 matmul's measured rate, and the linear probe of 8 layers of features
    on the device. Run on a CPU (``device="cpu"``, quick sizes), the same code is the test of it."""
    import torch

    from backbones.igpt.model import IGPTConfig, ImageGPT
    from backbones.igpt.train import train_step
    from bench.probe_loss import objective
    from bench.probe_solver import LogisticRegressionLBFGS, standardize
    from bench.runtime import autocast_for
    from tasks.linear_probe import DEFAULT_GRID, probe_layer

    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    # (layers, width, heads, tokens, batch)
    extract_shape, train_shape = ((2, 64, 2, 64, 2), (2, 64, 2, 64, 2)) if quick else \
        ((24, 512, 8, 1024, 64), (24, 512, 8, 784, 64))
    size = 256 if quick else 8192
    peak = matmul_rate(size, size, size, device, torch.bfloat16)
    rows = []
    torch.manual_seed(0)
    n_layer, n_embd, n_head, tokens, batch = extract_shape
    model = ImageGPT(IGPTConfig(n_colors=512, n_positions=tokens, n_embd=n_embd, n_layer=n_layer,
                                n_head=n_head)).to(device).eval()
    idx = torch.randint(0, 513, (batch, tokens), device=device)
    bf16 = autocast_for("bf16", device)
    with torch.inference_mode():
        def run():
            with bf16:
                return model.forward_intermediates(idx)
        flops = count_flops(run)
        t = median_time(run, 2 if quick else 5, device)
        low = run()["final"].float().mean(1)
        ref = model.forward_intermediates(idx)["final"].mean(1)
        profiled = profile_call(run, device) if profile else None
    cos = float(torch.nn.functional.cosine_similarity(low, ref).min())
    rows.append(Row("dev-extract", f"{name}: iGPT {n_layer}x{n_embd} @{tokens} tokens, batch {batch}, all layers, "
                    f"bf16 ({batch / t:.0f} img/s)", flops / t / 1e12, peak / 1e12, unit="TFLOP/s",
                    ratio=flops / t / peak, target=">= 40% of a bf16 matmul's rate", met=flops / t / peak >= 0.4,
                    check=f"min cosine of pooled final features vs fp32 {cos:.4f}", ok=cos > 0.99, profile=profiled))

    n_layer, n_embd, n_head, tokens, batch = train_shape
    torch.manual_seed(0)
    model = ImageGPT(IGPTConfig(n_colors=512, n_positions=tokens, n_embd=n_embd, n_layer=n_layer,
                                n_head=n_head)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
    x = torch.randint(0, 512, (batch, tokens), device=device)
    flops = count_flops(lambda: train_step(model, opt, x, bf16, 1.0))  # counted on the eager model's ops
    # On a GPU the step runs compiled, as `bench pretrain --compile` runs it; the first call compiles.
    net = torch.compile(model) if device.startswith("cuda") else model
    step = lambda: train_step(net, opt, x, bf16, 1.0)  # noqa: E731
    first = step().item()
    t = median_time(step, 2 if quick else 5, device)
    last = step().item()
    profiled = profile_call(step, device) if profile else None
    rows.append(Row("dev-pretrain", f"{name}: iGPT {n_layer}x{n_embd} @{tokens} tokens, batch {batch}, bf16, fused "
                    f"AdamW{', compiled' if net is not model else ''} ({batch / t:.0f} img/s)", flops / t / 1e12, peak / 1e12, unit="TFLOP/s",
                    ratio=flops / t / peak, target=">= 35% of a bf16 matmul's rate", met=flops / t / peak >= 0.35,
                    check=f"loss {first:.3f} -> {last:.3f} over the timed steps", ok=last < first, profile=profiled))

    # 8 layers of features as iGPT-S gives them (512 wide), labels from a noisy linear teacher.
    n, dim, layers, classes = (600, 32, 2, 5) if quick else (8000, 512, 8, 10)
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(dim, classes, generator=gen)
    feats = [torch.randn(n + n // 4 + n // 4, dim, generator=gen) for _ in range(layers)]
    labels = (feats[0] @ teacher + 2 * torch.randn(len(feats[0]), classes, generator=gen)).argmax(1).numpy()
    parts = lambda a: (a[:n], a[n:n + n // 4], a[n + n // 4:])  # noqa: E731
    ytr, yva, yte = parts(labels)

    def probe(features, on):
        Xtr, Xva, Xte = parts(features.numpy())
        return probe_layer(Xtr, ytr, Xva, yva, Xte, yte, DEFAULT_GRID, classes, device=on, patience=2)

    start = time.perf_counter()
    fits = [probe(f, device) for f in feats]
    t_dev = time.perf_counter() - start
    profiled = profile_call(lambda: [probe(f, device) for f in feats], device) if profile else None
    # The check compares what both devices minimize at the strength chosen for layer 1, not
    # accuracies, which can flip on a near-tie with the device's rounding.
    Xtr, f = standardize(parts(feats[0].numpy())[0])[0], {}
    for on in (device, "cpu"):
        fit = LogisticRegressionLBFGS(classes, device=on).fit(Xtr, ytr, fits[0].l2)
        f[on] = objective(Xtr, ytr, fit.W, fit.b, fits[0].l2)
    gap = abs(f[device] - f["cpu"]) / f["cpu"]
    rows.append(Row("dev-probe", f"{name}: linear probe of {layers} layers x {dim} features, {n} train rows, "
                    "default grid", t_dev, None, target="all layers under 20 s", met=t_dev < 20,
                    check=f"layer 1 at L2 {fits[0].l2:g}: objective {f[device]:.6f} on the device vs "
                    f"{f['cpu']:.6f} on the CPU (test top-1 {fits[0].test:.2f})", ok=gap <= 1e-4, profile=profiled))
    return rows


def gpu_rows(quick: bool, profile: bool = False) -> list[Row]:
    import torch

    if not torch.cuda.is_available():
        return [Row("gpu", "no CUDA device visible", note="skipped: the GPU rows need one")]
    return device_rows(quick, "cuda", profile)


ROWS = {"extract": extraction_rows, "flops": flops_rows, "probe": probe_rows, "sample": sampling_rows,
        "memory": memory_rows, "gpu": gpu_rows}


def run(quick: bool = False, only=None, log=lambda msg: None, profile: bool = False,
        busy: bool = False) -> tuple[dict, list[Row]]:
    """The machine and every row of the chosen groups (all by default); ``profile``: each row also
    profiles one more call of our side; ``busy``: beside ``busy_neighbour()`` (its CPU is recorded)."""
    rows = []
    with busy_neighbour() if busy else contextlib.nullcontext() as held:
        for name, fn in ROWS.items():
            if only and name not in only:
                continue
            log(f"perf: {name}")
            rows += fn(quick, profile=profile)
    if quick:  # the targets are for the full sizes: a quick run only shows the ratios
        for r in rows:
            r.met = None
    return {**machine(), "busy cpu": held}, rows


def title(quick: bool, busy_cpu: int | None = None) -> str:
    """The table's title: the mode, what the ratio means, and where targets are judged."""
    mode = "bench perf" + (" --quick" if quick else "") + (" --busy" if busy_cpu is not None else "")
    where = [f"beside a process that keeps CPU {busy_cpu} busy"] if busy_cpu is not None else []
    if quick:
        where.append("small sizes: targets are judged in full mode only")
    return (f"{mode} ({'; '.join(where) + '; ' if where else ''}ratio: reference time / ours; our rate / the "
            "reference's; memory: many / few images)")


def profile_table(rows: list[Row]):
    """The profiled rows' entries for people, one line each: the operator (kernel on a GPU), its
    seconds, calls and share of the profiled call's wall time, the row and its setting on the
    first line of each row's entries."""
    import pandas as pd

    return pd.DataFrame([{"row": r.row if i == 0 else "", "setting": r.setting if i == 0 else "", "operator": e["op"],
                          "self": f"{e['seconds']:.3g} s", "calls": "—" if e["calls"] is None else str(e["calls"]),
                          "share": f"{e['share']:.0%}"}
                         for r in rows if r.profile for i, e in enumerate(r.profile)],
                        columns=["row", "setting", "operator", "self", "calls", "share"])


def as_dicts(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]


def table(rows: list[Row], quick: bool = False):
    """Rows for people: each figure with its unit, the ratio as ``2.54x``, met and the check as
    ✓/✗ (— where there is none), the note after the target. ``quick``: a row's target is not
    judged at its small sizes, and its met cell says so."""
    import pandas as pd

    def figure(value, unit):
        return "—" if value is None else f"{value:.3g} {unit}"

    def mark(flag):
        return "—" if flag is None else ("✓" if flag else "✗")

    return pd.DataFrame([{"row": r.row, "setting": r.setting, "ours": figure(r.ours, r.unit),
                          "reference": figure(r.reference, r.unit),
                          "ratio": "—" if r.ratio is None else f"{r.ratio:.2f}x",
                          "target": " · ".join(t for t in (r.target, r.note) if t),
                          "met": "full mode only" if quick and r.target else mark(r.met),
                          "check": f"{mark(r.ok)} {r.check}".strip()} for r in rows])
