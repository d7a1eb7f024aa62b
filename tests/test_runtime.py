"""Runtime helpers: the glibc allocator setting that keeps large freed blocks for the next batch."""

import subprocess
import sys
import textwrap

import pytest

from bench.runtime import keep_freed_memory

PROBE = textwrap.dedent("""
    import resource, sys
    import torch
    from bench.runtime import keep_freed_memory
    from backbones.igpt.model import IGPTConfig, ImageGPT
    applied = keep_freed_memory() if sys.argv[1] == "on" else False
    model = ImageGPT(IGPTConfig(n_colors=16, n_positions=196, n_embd=256, n_layer=2, n_head=8)).eval()
    x = torch.randint(0, 17, (128, 196))
    with torch.inference_mode():
        model.forward_intermediates(x)  # the first batch faults its pages in either way
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            model.forward_intermediates(x)
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_later_batches_reuse_freed_pages_instead_of_faulting_them_in():
    def later_batch_faults(mode):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        applied, faults = out.stdout.split()
        return applied == "True", int(faults)

    applied, faults_on = later_batch_faults("on")
    _, faults_off = later_batch_faults("off")
    assert applied
    # glibc's default returns the batch's freed activations to the kernel and faults them in again
    # on the next batch; with the setting the later batches reuse the pages of the first.
    assert faults_on * 4 < faults_off, (faults_on, faults_off)


def test_user_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert keep_freed_memory() is False


def test_the_python_api_keeps_freed_memory_as_the_cli_does(monkeypatch, tmp_path):
    import bench.runtime
    from bench import api

    calls = []
    monkeypatch.setattr(bench.runtime, "keep_freed_memory", lambda: calls.append(True) or True)
    api.run("pixels", "linear-probe", "digits", dry_run=True, results=tmp_path / "results")
    api.extract("pixels", "digits", "test", limit=20, cache=tmp_path / "cache", device="cpu")
    assert calls == [True, True]


def test_a_job_bar_opened_under_a_sweep_bar_joins_its_display(monkeypatch):
    """rich shows one live display at a time: the inner bar must become a line of the outer one."""
    import sys

    from bench import runtime

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with runtime.progress_bar("sweep", 2) as outer:
        for _ in range(2):
            with runtime.progress_bar("job", 3) as inner:
                inner.advance(3)
                assert inner._p is outer._p is runtime._live
                assert len(runtime._live.tasks) == 2
            outer.advance(1)
        assert len(runtime._live.tasks) == 1  # the finished jobs' lines are gone
    assert runtime._live is None


# -- threads ------------------------------------------------------------------------------------

def _fake_cgroups(tmp_path, monkeypatch, proc_lines, files, affinity=8):
    """A /proc/self/cgroup holding ``proc_lines`` and a cgroup tree under tmp_path/cgroup with
    ``files`` ({relative path: text}); the process may use ``affinity`` CPUs."""
    from bench import runtime

    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("".join(line + "\n" for line in proc_lines))
    monkeypatch.setattr(runtime, "CGROUP_ROOT", str(root))
    monkeypatch.setattr(runtime, "PROC_CGROUP", str(proc))
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)


@pytest.mark.parametrize(("proc_lines", "files", "cpus"), [
    (["0::/"], {"cpu.max": "max 100000\n"}, 8),  # no quota: the affinity mask
    (["0::/"], {"cpu.max": "300000 100000\n"}, 3),  # cgroup v2: 3 CPUs' worth per period
    (["0::/"], {"cpu.max": "150000 100000\n"}, 1),  # 1.5 CPUs: rounded down
    (["0::/"], {"cpu.max": "20000 100000\n"}, 1),  # a fifth of a CPU: still one thread
    (["0::/job/step"], {"job/step/cpu.max": "max 100000", "job/cpu.max": "200000 100000"}, 2),  # a parent's limit
    (["0::/job/step"], {"job/step/cpu.max": "500000 100000", "cpu.max": "1200000 100000"}, 5),  # the smallest
    (["0::/docker/abc"], {"cpu.max": "400000 100000"}, 4),  # a container's own root, its host path unseen
    (["4:cpu,cpuacct:/slurm/job1", "0::/"],  # cgroup v1
     {"cpu/slurm/job1/cpu.cfs_quota_us": "600000", "cpu/slurm/job1/cpu.cfs_period_us": "100000"}, 6),
    (["4:cpu,cpuacct:/"], {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, 8),  # v1, none
    (["0::/"], {"cpu.max": "garbage"}, 8),  # unreadable: no limit
    ([], {}, 8),  # no cgroup files at all
    (["0::/"], {"cpu.max": "1600000 100000"}, 8),  # a quota above the affinity mask: the mask
])
def test_usable_cpus_are_the_affinity_mask_capped_by_the_cgroup_quota(tmp_path, monkeypatch, proc_lines, files, cpus):
    from bench.runtime import available_cpus

    _fake_cgroups(tmp_path, monkeypatch, proc_lines, files)
    assert available_cpus() == cpus


def test_the_default_thread_count_and_what_overrides_it(tmp_path, monkeypatch):
    from bench.runtime import resolve_threads

    _fake_cgroups(tmp_path, monkeypatch, ["0::/"], {"cpu.max": "300000 100000"})
    for var in ("BENCH_THREADS", "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert resolve_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the standing choice torch honours
    assert resolve_threads() == 2
    monkeypatch.setenv("BENCH_THREADS", "5")
    assert resolve_threads() == 5
    assert resolve_threads(7) == 7  # --threads / threads= first
    monkeypatch.delenv("BENCH_THREADS")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: its OMP_NUM_THREADS=1 is not read
    assert resolve_threads() == 1  # 3 CPUs among 2 processes
    _fake_cgroups(tmp_path, monkeypatch, ["0::/"], {"cpu.max": "max 100000"}, affinity=16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resolve_threads() == 4


@pytest.mark.parametrize("bad", [0, -1, "abc", "1.5", "", 4097, True])
def test_a_bad_thread_count_is_refused_with_one_line(bad):
    from bench.errors import BenchError
    from bench.runtime import resolve_threads

    with pytest.raises(BenchError, match=r"threads must be a whole number of CPU threads in 1\.\.4096"):
        resolve_threads(bad)


def _run_threads(results_dir) -> list[int]:
    import json

    return [json.loads(f.read_text())["run"]["config"]["threads"] for f in sorted(results_dir.glob("*.json"))]


def test_threads_1_is_honoured_inside_the_run_recorded_and_put_back(bench, tmp_path, monkeypatch):
    """The results file records the thread count torch had while the task ran; it is no part of
    the identity: the same run at another count is the same result (skipped), and the caller's
    count is back afterwards."""
    import torch

    from tasks.knn import KNN

    seen = []
    real = KNN.run
    monkeypatch.setattr(KNN, "run", lambda self, ctx: seen.append(torch.get_num_threads()) or real(self, ctx))
    before = torch.get_num_threads()
    args = ("run", "-b", "pixels", "-t", "knn", "-d", "digits", "--limit", "60", "--results", tmp_path / "res")
    r = bench(*args, "--threads", "1")
    assert r.code == 0, r
    assert seen == [1] and _run_threads(tmp_path / "res") == [1]
    assert torch.get_num_threads() == before
    r = bench(*args, "--threads", "3")
    assert r.code == 0 and "skipped" in r.out, r  # the same identity
    monkeypatch.setenv("BENCH_THREADS", "3")
    r = bench(*args, "--rerun")
    assert r.code == 0, r
    assert seen == [1, 3] and _run_threads(tmp_path / "res") == [3]


@pytest.mark.parametrize(("value", "env", "fragment"), [
    ("0", None, "0 is not in the range 1<=x<=4096"),
    ("-2", None, "-2 is not in the range"),
    ("two", None, "'two' is not a valid integer"),
    ("5000", None, "5000 is not in the range"),
    (None, "0", "BENCH_THREADS must be a whole number of CPU threads in 1..4096, got '0'"),
    (None, "many", "BENCH_THREADS must be a whole number of CPU threads in 1..4096, got 'many'"),
])
def test_bad_threads_are_one_line_errors_before_any_work(bench, tmp_path, monkeypatch, value, env, fragment):
    from tests.conftest import assert_user_error

    if env is not None:
        monkeypatch.setenv("BENCH_THREADS", env)
    for args in (("run", "-b", "pixels", "-t", "knn", "-d", "digits", "--limit", "60", "--results", tmp_path / "res"),
                 ("pretrain", "-b", "igpt-tiny", "-d", "digits", "--steps", "2", "--out", tmp_path / "pre"),
                 ("benchmark", "knn", "--n-train", "50", "--n-query", "5", "--dim", "4", "-k", "3")):
        r = bench(*args, *(("--threads", value) if value is not None else ()))
        assert_user_error(r, fragment)
    assert not (tmp_path / "res").exists() and not (tmp_path / "pre").exists()


def test_the_api_takes_threads_and_refuses_a_bad_count_before_any_work(tmp_path):
    import torch

    from bench import api
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="threads must be a whole number"):
        api.run("pixels", "knn", "digits", limit=60, results=tmp_path / "res", threads=0)
    assert not (tmp_path / "res").exists()
    with pytest.raises(BenchError, match="threads must be a whole number"):
        api.extract("pixels", "digits", "test", limit=20, out=tmp_path / "a.h5", threads="x")
    assert not (tmp_path / "a.h5").exists()
    before = torch.get_num_threads()
    df = api.run("pixels", "knn", "digits", limit=60, results=tmp_path / "res", threads=1)
    assert {c["threads"] for c in df["config"]} == {1} and _run_threads(tmp_path / "res") == [1]
    assert api.extract("pixels", "digits", "test", limit=20, out=tmp_path / "a.h5", threads=1).n_rows == 20
    assert torch.get_num_threads() == before


def test_pretraining_logs_its_threads_and_resumes_at_another_count(bench, tmp_path):
    """The count is provenance, not a setting: a run killed at one count resumes at another."""
    import json
    import shutil

    out = tmp_path / "run"
    args = ("-q", "pretrain", "-b", "igpt-tiny", "-d", "digits", "--limit", "40", "--steps", "4", "--save-at", "2",
            "--batch-size", "8", "--warmup", "1", "--out", out)
    assert bench(*args, "--threads", "1").code == 0
    shutil.rmtree(out / "checkpoints" / "step-0000004")  # as if killed after the save at step 2
    r = bench(*args, "--threads", "2")
    assert r.code == 0, r
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(x["step"], x["threads"]) for x in log] == [(2, 1), (4, 1), (4, 2)]
    assert "threads" not in json.loads((out / "run.json").read_text())


# -- the thread pacer of loops of tiny steps ----------------------------------------------------------

class _Loop:
    """A loop whose step costs ``cost[count]`` seconds of a fake clock at torch's thread count."""

    def __init__(self, cost):
        self.cost, self.now = dict(cost), 0.0

    def clock(self):
        return self.now

    def run(self, pace, steps):
        import torch

        counts = []
        for _ in range(steps):
            with pace.step():
                counts.append(torch.get_num_threads())
                self.now += self.cost[counts[-1]]
        return counts


@pytest.fixture
def two_threads():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("cost", "fast"), [({2: 0.8, 1: 0.1}, 1),  # a busy machine: 8x slower on two
                                            ({2: 0.7, 1: 1.0}, 2),  # an idle one: two threads gain
                                            ({2: 1.0, 1: 1.1}, 2)])  # nearly even
def test_the_pacer_runs_most_steps_at_the_faster_count_and_its_trials_cost_at_most_its_budget(two_threads, cost,
                                                                                                 fast):
    import torch

    from bench.runtime import ThreadPacer

    loop = _Loop(cost)
    with ThreadPacer(clock=loop.clock) as pace:
        counts = loop.run(pace, 800)
    assert torch.get_num_threads() == 2  # put back
    slow = 2 if fast == 1 else 1
    if cost[slow] > 1.2 * cost[fast]:  # nearly even: a trial costs little, and comes every `every` steps
        assert counts.count(fast) > 0.9 * len(counts)
    best = len(counts) * cost[fast]
    # the first steps run at 1 thread before any trial, then lost trials stay within the 2% budget
    assert loop.now - best <= 3 * cost[1] + 0.02 * best + cost[slow], (loop.now, best, counts.count(slow))
    assert pace.steps == {2: counts.count(2), 1: counts.count(1)}


def test_the_pacer_follows_a_change_of_load(two_threads):
    from bench.runtime import ThreadPacer

    loop = _Loop({2: 0.5, 1: 1.0})
    with ThreadPacer(clock=loop.clock) as pace:
        idle = loop.run(pace, 300)
        loop.cost = {2: 4.0, 1: 1.0}  # another process takes a CPU
        busy = loop.run(pace, 300)
        loop.cost = {2: 0.5, 1: 1.0}  # and leaves
        idle_again = loop.run(pace, 600)
    assert idle[-100:].count(2) > 90
    assert busy[:40].count(1) > 20 and busy[-100:].count(1) > 95
    assert idle_again[-100:].count(2) > 90


def test_the_pacer_leaves_a_single_thread_and_an_inactive_loop_alone():
    import torch

    from bench.runtime import ThreadPacer

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with ThreadPacer() as pace:
            assert not pace.active
            assert _Loop({1: 1.0}).run(pace, 5) == [1] * 5
        torch.set_num_threads(2)
        with ThreadPacer(active=False) as pace:
            assert _Loop({2: 1.0}).run(pace, 5) == [2] * 5
    finally:
        torch.set_num_threads(before)


def _model(layers=2, width=128, heads=2, colors=16, positions=64):
    import torch

    from backbones.igpt.model import IGPTConfig, ImageGPT

    torch.manual_seed(0)
    model = ImageGPT(IGPTConfig(n_colors=colors, n_positions=positions, n_embd=width, n_layer=layers,
                                n_head=heads)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize(("width", "heads", "batch"), [(128, 2, 8), (256, 4, 3), (64, 1, 1)])
def test_the_one_token_decode_gives_the_same_numbers_at_any_thread_count_its_products_allow(width, heads, batch):
    """What lets the sampler change its thread count between steps without changing a token:
    where ``thread_invariant`` says this machine's products allow it, the decode is bit-identical
    at 1, 2 and 3 threads (some BLAS kernels split small products by thread count; there the
    sampler does not pace, see the next test)."""
    import torch

    from backbones.igpt.decode import step, thread_invariant

    model, before = _model(width=width, heads=heads), torch.get_num_threads()
    tokens = torch.randint(0, 16, (batch, 40), generator=torch.Generator().manual_seed(1))
    runs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(1)
            with torch.inference_mode():
                caches = [{} for _ in model.h]
                logits = [step(model, tokens[:, :8], caches, 0)]  # the prefill: at one count for all
                torch.set_num_threads(threads)
                logits += [step(model, tokens[:, t : t + 1], caches, t) for t in range(8, 40)]
            runs.append(torch.cat(logits[1:], dim=1))
    finally:
        torch.set_num_threads(before)
    same = torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert same or not thread_invariant(model, batch, counts=(2, 3))
    assert torch.allclose(runs[0], runs[1], atol=1e-4) and torch.allclose(runs[0], runs[2], atol=1e-4)


@pytest.mark.parametrize("invariant", [True, False])
def test_the_sampler_paces_only_where_the_decode_is_thread_invariant(monkeypatch, invariant):
    import torch

    from backbones.igpt import sample
    from bench.runtime import ThreadPacer

    made = []

    class Recording(ThreadPacer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(sample, "ThreadPacer", Recording)
    monkeypatch.setattr(sample, "thread_invariant", lambda model, batch: invariant)
    model, before = _model(), torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        sample.generate(model, torch.zeros((2, 4), dtype=torch.long), 12, seed=0)
    finally:
        torch.set_num_threads(before)
    assert [p.active for p in made] == [invariant]


def test_thread_invariance_is_judged_on_the_decodes_own_shapes_and_kept():
    import torch

    from backbones.igpt import decode

    model = _model(width=64, heads=1)
    answer = decode.thread_invariant(model, 3, counts=(2,))
    assert isinstance(answer, bool)
    assert (3, ((64, 192), (64, 64), (64, 256), (256, 64), (64, 16)), (2,)) in decode._INVARIANT
    assert decode.thread_invariant(model, 3, counts=(2,)) is answer
    assert torch.get_num_threads() >= 1


def test_sampling_whose_thread_count_changes_every_step_draws_the_same_tokens(monkeypatch):
    import contextlib

    import torch

    from backbones.igpt import sample
    from bench.runtime import ThreadPacer

    class EveryStep(ThreadPacer):
        @contextlib.contextmanager
        def step(self):
            self._torch.set_num_threads(1 if self._torch.get_num_threads() > 1 else 2)
            yield

    model, before = _model(), torch.get_num_threads()
    prefix = torch.randint(0, 16, (4, 10), generator=torch.Generator().manual_seed(2))
    try:
        torch.set_num_threads(2)
        plain = sample.generate(model, prefix, 64, seed=3, top_k=8)
        recomputed = sample.generate(model, prefix, 64, seed=3, top_k=8, use_cache=False)
        monkeypatch.setattr(sample, "ThreadPacer", EveryStep)
        alternating = sample.generate(model, prefix, 64, seed=3, top_k=8)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert torch.equal(plain, recomputed)
    # the sampler alternates counts only where the decode is thread-invariant (the test above)
    assert torch.equal(alternating, plain) or not sample.thread_invariant(model, 4, counts=(2,))


@pytest.mark.parametrize("command", [("run",), ("extract",), ("pretrain",), ("demo",), ("sample",), ("complete",),
                                     ("perf",), ("benchmark", "probe"), ("benchmark", "pretrain"),
                                     ("benchmark", "sample"), ("benchmark", "knn")])
def test_every_command_that_computes_takes_threads(bench, command):
    r = bench(*command, "--help")
    assert r.code == 0 and "--threads" in r.out and "BENCH_THREADS" in r.out, r
