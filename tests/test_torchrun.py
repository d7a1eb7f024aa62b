"""Extraction scaled out with torchrun: each rank extracts a shard of rows, rank 0 writes the one
file, equal to a single process's; a killed launch resumes its shards; `bench run` probes on rank 0."""

import json
import os
import subprocess
import sys

import h5py
import numpy as np

from bench.store import open_activations
from bench.store_writer import batch_digest, shard_rows

EXTRACT = ["-q", "extract", "-b", "resnet18", "-d", "digits", "--split", "train", "--limit", "300",
           "--image-size", "32", "--batch-size", "32", "--device", "cpu"]


def _torchrun(args, env, n=2):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                           "-m", "bench", *args], capture_output=True, text=True, timeout=600, env=env)


def _single(args, env):
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, timeout=600,
                          env=env)


def test_shards_are_whole_batches_covering_every_row_once():
    for n, batch, world in [(300, 32, 2), (300, 32, 3), (5, 32, 2), (64, 32, 4), (1000, 7, 5)]:
        bounds = [shard_rows(n, batch, r, world) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
        assert all(lo % batch == 0 for lo, _ in bounds)


def test_two_gloo_processes_write_the_file_one_process_writes(tmp_path):
    # One thread a process in both runs: the same GEMM code paths, so equal to the bit.
    env = dict(os.environ, OMP_NUM_THREADS="1", BENCH_CACHE=str(tmp_path / "cache"))
    r = _torchrun([*EXTRACT, "--out", str(tmp_path / "ddp.h5")], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("extracted:") == 1  # rank 0 reports
    r = _single([*EXTRACT, "--out", str(tmp_path / "one.h5")], env)
    assert r.returncode == 0, r.stderr
    a, b = open_activations(tmp_path / "ddp.h5"), open_activations(tmp_path / "one.h5")
    assert a.identity == b.identity and a.layers == b.layers
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.indices, b.indices)
    for layer in a.layers:
        np.testing.assert_array_equal(a.read(layer), b.read(layer))
    with h5py.File(a.path) as fa, h5py.File(b.path) as fb:
        assert fa.attrs["checksums"] == fb.attrs["checksums"]
    assert not (tmp_path / "ddp.h5.parts").exists()


def test_a_killed_launch_resumes_its_shards(tmp_path):
    """The shards a killed launch left (rank 1's finished, rank 0's half done, as a kill leaves
    them) are resumed by the same command, and the file equals an uninterrupted one."""
    env = dict(os.environ, OMP_NUM_THREADS="1", BENCH_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "a.h5"
    assert _torchrun([*EXTRACT, "--out", str(out)], env).returncode == 0
    ref = {layer: open_activations(out).read(layer) for layer in open_activations(out).layers}
    # Rebuild the parts as the killed launch would have left them, from the finished file.
    parts = tmp_path / "a.h5.parts"
    n, batch = 300, 32
    with h5py.File(out) as f:
        identity = json.loads(f.attrs["identity"])
        widths = {layer: f["layers"][layer].shape[1] for layer in identity["layers"]}
        for rank, done in ((0, 64), (1, None)):
            lo, hi = shard_rows(n, batch, rank, 2)
            done = hi if done is None else done
            shard = parts / f"shard-{rank}-of-2"
            shard.mkdir(parents=True)
            for i, layer in enumerate(widths):
                rows = f["layers"][layer][lo:done]
                # A torn batch past the count, as a kill during a write leaves.
                (shard / f"{i:03d}.f32").write_bytes(rows.tobytes() + b"\x7f" * 100)
            ends = list(range(lo + batch, done, batch)) + [done] if done > lo else []
            digests = [[end, batch_digest([f["layers"][layer][start:end] for layer in widths])]
                       for start, end in zip([lo] + ends[:-1], ends)]  # each counted batch's checksum
            meta = {"identity": identity, "batch_size": batch, "n_rows": n, "widths": widths, "rows": [lo, hi]}
            (shard / "progress.json").write_text(json.dumps({"meta": meta, "rows_done": done, "batches": digests}))
    out.unlink()
    r = _torchrun([*EXTRACT, "--out", str(out)], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed" in r.stdout, r.stdout
    act = open_activations(out)
    for layer, x in ref.items():
        np.testing.assert_array_equal(act.read(layer), x)
    assert not parts.exists()


def test_bench_run_under_torchrun_shards_extraction_and_probes_on_rank_0(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", BENCH_CACHE=str(tmp_path / "cache"))
    run = ["-q", "run", "-b", "pixels", "-t", "linear-probe", "-d", "digits", "-o", "l2_grid=1e-2", "--device", "cpu"]
    r = _torchrun([*run, "--results", str(tmp_path / "ddp")], env)
    assert r.returncode == 0, r.stderr[-3000:]
    r1 = _single([*run, "--results", str(tmp_path / "one"), "--rerun"], dict(env, BENCH_CACHE=str(tmp_path / "c1")))
    assert r1.returncode == 0, r1.stderr
    (a,), (b,) = (tmp_path / "ddp").glob("*.json"), (tmp_path / "one").glob("*.json")
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert [x["value"] for x in ra["records"]] == [x["value"] for x in rb["records"]]


def _group_worker(rank, world, port, out):
    import torch.distributed as dist

    from bench.distributed import Group
    from bench.errors import BenchError

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    group, said = Group(rank, world), []

    def fails_on(r, msg):
        def fn():
            if rank == r:
                raise BenchError(msg)
            return rank
        return fn

    for step in (lambda: group.decide(fails_on(0, "rank 0 gave up")),  # a decision rank 0 alone makes
                 lambda: group.each(fails_on(1, "rank 1 gave up")),  # work every rank does
                 lambda: group.each(lambda: rank)):
        try:
            said.append(("ok", step()))
        except BenchError as e:
            said.append(("error", str(e)))
    (out / f"{rank}.json").write_text(json.dumps(said))
    dist.destroy_process_group()


def test_an_error_on_one_rank_ends_every_rank_with_the_same_line(tmp_path):
    """No rank is left waiting in a collective for one that gave up, and the ranks stay in step
    for what comes next (the next job of a sweep)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_group_worker, args=(2, port, tmp_path), nprocs=2, join=True)
    said = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    for r in range(2):
        assert said[r][0] == ["error", "rank 0 gave up"]
        assert said[r][1] == ["error", "rank 1 gave up"]
        assert said[r][2] == ["ok", r]


def test_an_unreadable_cache_file_is_made_again_but_a_users_out_is_refused(bench, isolated_cache, tmp_path):
    args = ("extract", "-b", "pixels", "-d", "digits", "--split", "test")
    assert bench("-q", *args).code == 0
    (cached,) = isolated_cache.rglob("*.h5")
    ref = open_activations(cached).read("pixels")
    cached.write_bytes(cached.read_bytes()[:-300])
    r = bench(*args)
    assert r.code == 0 and r.out.startswith("extracted again (unreadable"), r
    np.testing.assert_array_equal(open_activations(cached).read("pixels"), ref)
    mine = tmp_path / "mine.h5"
    mine.write_bytes(cached.read_bytes()[:-300])
    r = bench("-q", *args, "--out", mine)
    assert r.code == 2 and "not a readable HDF5 file" in r.err


def test_a_user_error_under_torchrun_is_one_line_from_rank_0_that_says_how_to_read_the_launchers_report(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", BENCH_CACHE=str(tmp_path / "cache"))
    r = _torchrun(["-q", "run", "-b", "pixels", "-t", "knn", "-d", "digits", "-o", "k=0", "--device", "cpu",
                   "--results", str(tmp_path / "res")], env)
    assert r.returncode != 0
    ours = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1, r.stderr  # rank 0's, not one per rank
    assert "option k='0'" in ours[0] and "the 2 processes stop alike (exit 2)" in ours[0]
    assert "ChildFailedError report below repeats this line per process" in ours[0]
    report = r.stderr[r.stderr.index("ChildFailedError"):]
    assert report.count("traceback : error: task option k='0'") == 2  # the launcher names it for each process
    assert not (tmp_path / "res").exists()
