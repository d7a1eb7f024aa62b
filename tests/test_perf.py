"""`bench perf --quick`: a smoke test of every row. No timing is asserted (the ratios are printed);
every correctness check of a fast path against its reference must pass."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, Result, need_fashion_mnist


def test_perf_quick_runs_every_row_and_its_checks_pass(bench, tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "perf.json"
    r = bench("perf", "--quick", "--json", out)
    assert r.code == 0, r
    doc = json.loads(out.read_text())
    assert doc["quick"] is True and doc["machine"]["cores"] >= 1 and doc["machine"]["transformers"]
    rows = {row["row"] for row in doc["rows"]}
    gpu = {"dev-extract", "dev-pretrain", "dev-probe"} if doc["machine"]["gpu"] else {"gpu"}
    assert rows == {"extract-all", "extract-mid", "flops", "bf16", "probe", "sample-cache", "sample-hf",
                    "memory"} | gpu
    for row in doc["rows"]:
        if row["row"] == "gpu":
            assert "skipped" in row["note"]
            continue
        if row["row"] != "dev-probe":  # one time against a target, no reference
            assert row["ratio"] is not None and row["ratio"] > 0, row
        assert row["ok"] in (True, None), row
        assert row["met"] is None  # targets are judged on the full sizes only
        if row["row"].startswith("extract-"):
            assert row["ceiling"] > 0 and "at most" in row["note"], row
    assert sum(row["ok"] is True for row in doc["rows"]) >= 6  # the checks ran
    assert all(row["profile"] is None for row in doc["rows"])  # only --profile profiles
    assert "ratio" in r.out and "sample-hf" in r.out


def test_perf_refuses_an_unknown_group(bench):
    r = bench("perf", "--only", "everything")
    assert r.code == 2 and "Invalid value for '--only'" in r.err and "Traceback" not in r.err


def test_device_rows_run_on_the_cpu_and_their_checks_pass():
    """The GPU rows' code, run on the CPU at quick sizes: what keeps the CUDA branch honest on a
    machine without one (bf16 features against fp32, the loss going down, the probe on the device
    against the CPU's)."""
    from bench.perf import device_rows

    rows = device_rows(True, "cpu", profile=True)
    assert [r.row for r in rows] == ["dev-extract", "dev-pretrain", "dev-probe"]
    assert all(r.ok for r in rows), rows
    assert all(r.ours > 0 for r in rows)
    for r in rows:  # each profiled: its largest operator first
        ops = [e for e in r.profile if not e["op"].startswith("(")]
        assert ops and ops[0]["seconds"] == max(e["seconds"] for e in ops), r.profile


def test_profile_names_the_operator_that_takes_the_time_and_its_shares_add_up():
    """``profile_call`` against a call whose cost is known: one large product and many tiny adds. The
    product leads (its self time, not its children's), counted once; with ``top=1`` the adds go
    into ``(other operators)``; the entries' shares, ``(outside operators)`` included, are the
    whole call."""
    import torch

    from bench.measure import profile_call

    a, small = torch.randn(768, 768), torch.zeros(4)

    def work():
        a @ a
        for _ in range(50):
            small.add_(1)

    entries = profile_call(work, top=1)
    assert [e["op"] for e in entries] == ["aten::mm", "(other operators)", "(outside operators)"]
    assert entries[0]["calls"] == 1 and entries[1]["calls"] >= 50
    assert entries[0]["seconds"] > entries[1]["seconds"]  # 0.9 GFLOP against 50 adds of 4 numbers
    assert sum(e["share"] for e in entries) == pytest.approx(1.0)
    assert all(e["seconds"] >= 0 for e in entries)


def test_a_failing_profiler_leaves_an_entry_that_says_so(monkeypatch):
    import torch

    from bench.measure import profile_call

    class Broken:
        def __init__(self, **kwargs):
            pass

        def __enter__(self):
            raise RuntimeError("profiler already enabled on this thread\nmore detail")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.profiler, "profile", Broken)
    assert profile_call(lambda: None) == [{"op": "(profiler failed: profiler already enabled on this thread)",
                                       "seconds": 0.0, "calls": None, "share": 0.0}]


def test_perf_profile_prints_where_the_probe_spends_its_time(tmp_path):
    """In a child process with a clean stderr and no KINETO_LOG_LEVEL: kineto's log lines are
    written by C++ to the process's stderr, and only a fresh process reads that variable."""
    out = tmp_path / "perf.json"
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    p = subprocess.run([sys.executable, "-m", "bench", "perf", "--quick", "--only", "probe", "--profile", "--json",
                        str(out)], capture_output=True, text=True, env=env, timeout=600)
    r = Result(p.returncode, p.stdout, p.stderr)
    assert r.code == 0, r
    (row,) = json.loads(out.read_text())["rows"]
    ops = [e["op"] for e in row["profile"]]
    # the probe's products: oneDNN's linear where this torch has it, else addmm / mm
    assert {"mkldnn::_linear_pointwise", "aten::addmm", "aten::mm"} & set(ops), ops
    assert ops[-1] == "(outside operators)"
    assert sum(e["share"] for e in row["profile"]) == pytest.approx(1.0)
    assert "where our time goes" in r.out and "(outside operators)" in r.out
    assert "profiler_start" not in r.err and "gpuGetDeviceCount" not in r.err  # kineto's log, silenced


def test_gpu_check_script_runs_its_chain_on_the_cpu(tmp_path):
    """scripts/gpu-check.sh is what a session lent a GPU runs once, with minutes to spare: its CPU
    trial (tiny sizes, fp32) keeps its commands and flags in step with the CLI meanwhile."""
    need_fashion_mnist()
    out = tmp_path / "gpu-check"
    env = {**os.environ, "DEVICE": "cpu", "STEPS": "2", "BATCH": "8", "LIMIT": "100", "PRECISION": "fp32",
           "OUT": str(out), "BENCH": f"{sys.executable} -m bench",
           "CUDA_VISIBLE_DEVICES": ""}  # on a GPU box too: the perf step then skips its GPU rows
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh")], env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    times = (out / "times.txt").read_text()
    assert [line.split(":")[0] for line in times.splitlines()] == ["perf-gpu", "pretrain", "probe-igpt",
                                                                   "probe-pixels"]
    assert [row["row"] for row in json.loads((out / "perf-gpu.json").read_text())["rows"]] == ["gpu"]
    assert "none of these rows ran anything here to profile" in r.stdout  # --profile on the skipped row
    records = [json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))]
    assert sorted(rec["run"]["backbone"] for rec in records) == ["igpt", "pixels"]
    assert {rec["run"]["step"] for rec in records if rec["run"]["backbone"] == "igpt"} == {2}
    assert (out / "pretrain" / "checkpoints" / "step-0000002").is_dir()
    assert "h4" in r.stdout and "pixels" in r.stdout  # the summary table


def test_contenders_alternate_and_each_gets_the_median_of_its_own_rounds(monkeypatch):
    """``interleaved_medians`` against a fake clock: one call of each contender per round (after
    a warm-up round), and each contender's figure is the median of its own durations."""
    import bench.measure as measure

    clock, calls = [0.0], []

    def contender(name, durations):
        it = iter(durations)

        def fn():
            calls.append(name)
            clock[0] += next(it)
        return fn

    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock[0])
    got = measure.interleaved_medians({"a": contender("a", [9.0, 1.0, 5.0, 2.0]),
                                       "b": contender("b", [9.0, 30.0, 10.0, 20.0])}, repeat=3)
    assert calls == ["a", "b"] * 4
    assert got == {"a": 2.0, "b": 20.0}  # the warm-up's 9 s are not counted
    calls.clear()
    got = measure.interleaved_medians({"a": contender("a", [4.0, 6.0])}, repeat=2, warmup=False)
    assert calls == ["a", "a"] and got == {"a": 5.0}


def test_necessary_flops_counts_the_linear_layers_and_half_the_causal_attention():
    """The extraction rows' ceiling divides by the FLOPs a forward needs: against the formula, per
    block 2 * 12 C^2 per token for its four matrix products and 2 * B T^2 C for causal attention
    (half of q k^T and of att v, each 2 B T^2 C in full); stopping early at h1 needs one block."""
    import torch

    from backbones.igpt.model import IGPTConfig, ImageGPT
    from bench.measure import counted, necessary_flops

    B, T, C, L = 3, 16, 64, 2
    model = ImageGPT(IGPTConfig(n_colors=8, n_positions=T, n_embd=C, n_layer=L, n_head=2)).eval()
    idx = torch.randint(0, 9, (B, T))
    block = 2 * 12 * C * C * B * T + 2 * B * T * T * C
    with torch.inference_mode():
        assert necessary_flops(counted(lambda: model.forward_intermediates(idx))[0]) == L * block
        assert necessary_flops(counted(lambda: model.forward_intermediates(idx, ["h1"], stop_early=True))[0]) == block


def test_the_transformers_sampler_does_not_warn_of_padding_it_does_not_have():
    """generate() calls our start-token prompt right-padded (the start token doubles as the pad id)
    and logs a warning per call; the sampling row mutes generate's warnings for its own calls only."""
    import logging


    pytest.importorskip("transformers")
    from bench.benchmark import samplers, transformers_pair

    ref, model = transformers_pair(1, 32, 2, 8, 6, head=True)
    seen = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = seen.append
    log, before = logging.getLogger("transformers"), logging.getLogger("transformers.generation.utils").level
    log.addHandler(handler)
    try:
        tokens = samplers(model, 6, 2, {}, recompute=False, ref=ref)["hf"]()
    finally:
        log.removeHandler(handler)
    assert tokens.shape == (2, 7)
    assert not [r for r in seen if "padding" in r.getMessage()], [r.getMessage() for r in seen]
    assert logging.getLogger("transformers.generation.utils").level == before  # put back as it was


def test_gpu_check_script_runs_its_perf_part_alone_and_refuses_an_unknown_part(tmp_path):
    """PART=perf (the first of two calls where one command may not run 8 minutes) runs only the
    perf step; an unknown PART is one line on stderr, exit 2, before anything is written."""
    out = tmp_path / "gpu-check"
    env = {**os.environ, "DEVICE": "cpu", "OUT": str(out), "BENCH": f"{sys.executable} -m bench",
           "CUDA_VISIBLE_DEVICES": ""}
    script = ["bash", str(ROOT / "scripts" / "gpu-check.sh")]
    r = subprocess.run(script, env={**env, "PART": "pretrain"}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "gpu-check.sh: PART must be all, perf or chain, not 'pretrain'"], r.stderr
    assert not out.exists()
    r = subprocess.run(script, env={**env, "PART": "perf"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [line.split(":")[0] for line in (out / "times.txt").read_text().splitlines()] == ["perf-gpu"]
    assert (out / "perf-gpu.json").is_file() and not (out / "pretrain").exists()


def test_quick_mode_says_in_its_title_and_every_targeted_row_that_targets_are_judged_in_full_mode_only():
    from bench.perf import Row, table, title

    rows = [Row("probe", "pixels", 2.0, 0.06, ratio=0.03, target=">= 5x"),
            Row("memory", "resnet18", 1.0, 1.0, unit="GiB", ratio=1.0, target="<= 1.1x (a guard)"),
            Row("gpu", "no CUDA device visible", note="skipped")]
    quick = table(rows, quick=True)
    assert list(quick["met"]) == ["full mode only", "full mode only", "—"]
    assert "targets are judged in full mode only" in title(True)
    full = [Row("probe", "pixels", 1.0, 6.0, ratio=6.0, target=">= 5x", met=True)]
    assert list(table(full)["met"]) == ["✓"] and "full mode only" not in title(False)
    assert "keeps CPU 1 busy" in title(False, 1) and "--busy" in title(False, 1)


def _children_on(cpu: int) -> list[int]:
    """This process's children pinned to ``cpu`` alone (from /proc)."""
    found = []
    for stat in os.listdir("/proc"):
        if not stat.isdigit():
            continue
        try:
            with open(f"/proc/{stat}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and os.sched_getaffinity(int(stat)) == {cpu}:
                found.append(int(stat))
        except (OSError, ValueError, IndexError):
            continue
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pins with sched_setaffinity, reads /proc")
def test_the_busy_neighbour_spins_pinned_to_one_of_our_cpus_while_the_block_runs_and_is_gone_after():
    from bench.measure import busy_neighbour

    with busy_neighbour() as cpu:
        assert cpu == max(os.sched_getaffinity(0))
        (pid,) = _children_on(cpu)
    assert not os.path.exists(f"/proc/{pid}") or _children_on(cpu) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pins with sched_setaffinity")
def test_perf_busy_runs_its_rows_beside_the_busy_process_and_records_it(bench, tmp_path):
    out = tmp_path / "perf.json"
    r = bench("perf", "--quick", "--busy", "--only", "probe", "--threads", "2", "--json", out)
    assert r.code == 0, r
    doc = json.loads(out.read_text())
    assert doc["busy"] is True and doc["machine"]["busy cpu"] == max(os.sched_getaffinity(0))
    assert doc["machine"]["threads"] == 2 and [row["row"] for row in doc["rows"]] == ["probe"]
    assert doc["rows"][0]["ok"] is True
    assert "--busy" in r.out and "full mode only" in r.out
