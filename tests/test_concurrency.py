"""Many `bench` processes on one cache and one results folder: none fails, none deletes another's
work, the same activation file is extracted once, and the lock a killed process held is free."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from bench.lock import exclusive, holder
from bench.records import read_results

RUN = ["run", "-b", "pixels", "-t", "linear-probe", "-d", "digits", "-o", "l2_grid=1e-2"]


def _start(args, tmp_path, name):
    env = dict(os.environ, BENCH_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    err = open(tmp_path / f"{name}.err", "w")  # noqa: SIM115 - closed by the caller's wait
    return subprocess.Popen([sys.executable, "-m", "bench", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=err, text=True), err


def _wait(procs):
    outs = []
    for p, err in procs:
        out, _ = p.communicate(timeout=600)
        err.close()
        outs.append((p.returncode, out, open(err.name).read()))
    return outs


def test_two_identical_runs_at_once_both_succeed_and_compute_once(tmp_path):
    outs = _wait([_start([*RUN, "--results", "res"], tmp_path, f"p{i}") for i in range(2)])
    assert [code for code, _, _ in outs] == [0, 0], outs
    (file,) = (tmp_path / "res").glob("*.json")
    records = read_results(file)
    assert {r["split"] for r in records} == {"val", "test"}
    logs = " ".join(err for _, _, err in outs)
    # The second either waited for the first's result, or found it finished.
    assert "skipped" in logs, logs
    files = list((tmp_path / "cache").rglob("*.h5"))
    assert len(files) == 3 and not list((tmp_path / "cache").rglob("*.parts"))


def test_eight_runs_sharing_a_cache_all_succeed_with_intact_records(tmp_path):
    procs = [_start([*RUN, "--seed", str(seed), "--results", "res"], tmp_path, f"s{seed}") for seed in range(8)]
    outs = _wait(procs)
    assert [code for code, _, _ in outs] == [0] * 8, [err for _, _, err in outs]
    files = sorted((tmp_path / "res").glob("*.json"))
    assert len(files) == 8
    seeds = sorted(json.loads(f.read_text())["run"]["seed"] for f in files)
    assert seeds == list(range(8))
    values = {tuple(r["value"] for r in read_results(f) if r["metric"] == "top1") for f in files}
    assert len(values) == 1  # pixels and a full-data probe: the seed changes nothing
    caches = [json.loads(f.read_text())["run"]["splits"]["train"]["cache"] for f in files]
    assert caches.count("extracted") == 1, caches  # one process extracted, seven reused
    assert len(list((tmp_path / "cache").rglob("*.h5"))) == 3


def test_a_waiting_process_names_the_holder_and_gets_the_lock_when_it_dies(tmp_path):
    target = tmp_path / "x.h5"
    ready = tmp_path / "ready"
    code = (f"import time, pathlib; from bench.lock import exclusive\n"
            f"with exclusive(pathlib.Path({str(target)!r}), 'writing'):\n"
            f"    pathlib.Path({str(ready)!r}).touch(); time.sleep(600)\n")
    holder_proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert ready.exists()
        assert f"pid {holder_proc.pid} on host {socket.gethostname()}" in holder(target)
        logged = []
        killer_at = time.time() + 1.0

        def log(msg):
            logged.append(msg)

        import threading

        threading.Timer(1.0, lambda: os.kill(holder_proc.pid, signal.SIGKILL)).start()
        with exclusive(target, "writing", log):
            got = time.time()
            assert f"pid {os.getpid()}" in holder(target)
        assert got >= killer_at - 0.05  # it waited for the holder's death
        assert len(logged) == 1 and f"pid {holder_proc.pid}" in logged[0] and "writing" in logged[0]
        assert holder(target) == "another process"  # the lock file went with the lock
    finally:
        holder_proc.kill()
        holder_proc.wait()


@pytest.mark.parametrize("umask", [0o002, 0o022])
def test_files_written_follow_the_umask(tmp_path, umask):
    from bench.files import atomic_write_bytes

    old = os.umask(umask)
    try:
        path = atomic_write_bytes(tmp_path / "r.json", b"{}")
        with exclusive(tmp_path / "r.json", "writing"):
            lock_mode = (tmp_path / ".r.json.lock").stat().st_mode & 0o777
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert lock_mode == 0o666 & ~umask
    assert not (tmp_path / ".r.json.lock").exists()  # the holder deletes it as it lets go


def test_a_filesystem_without_locks_is_a_one_line_error(tmp_path, monkeypatch):
    import errno
    import fcntl

    from bench.errors import BenchError

    def no_locks(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(BenchError, match="does not support file locks"), exclusive(tmp_path / "x.h5", "writing"):
        pass
    assert list(tmp_path.iterdir()) == []
