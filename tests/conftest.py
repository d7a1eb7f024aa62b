import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main

ROOT = Path(__file__).resolve().parent.parent
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own activation cache and no data root from the environment."""
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny iGPT pretrained on digits (200 rows) with three saves (steps 4, 8, 12)."""
    from backbones.igpt.train import TrainConfig, pretrain

    out = tmp_path_factory.mktemp("run") / "tiny"
    cfg = TrainConfig(backbone="igpt-tiny", dataset="digits", steps=12, batch_size=8, warmup=2, save_at=(4, 8),
                      limit=200)
    pretrain(cfg, out, quiet=True, log=lambda msg: None)
    assert len(list((out / "checkpoints").glob("step-*"))) == 3
    return out


class Result:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    def __repr__(self):
        return f"Result(code={self.code}, out={self.out[-2000:]!r}, err={self.err[-2000:]!r})"


@pytest.fixture
def bench(capsys):
    """Run the CLI in this process: bench("run", "-b", ...) -> Result(code, out, err)."""

    def call(*args):
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return call


def bench_subprocess(*args, env=None, timeout=600):
    """Run the real `bench` console entry in a child process."""
    full_env = dict(os.environ, **(env or {}))
    p = subprocess.run([sys.executable, "-m", "bench", *map(str, args)], capture_output=True, text=True,
                       env=full_env, timeout=timeout)
    return Result(p.returncode, p.stdout, p.stderr)


def assert_user_error(r: Result, *fragments: str):
    """Exit 2, exactly one line on stderr starting with 'error:', no traceback, fragments present."""
    assert r.code == 2, r
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1, r
    assert lines[0].startswith("error: "), r
    assert "Traceback" not in r.err + r.out
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def need_fashion_mnist():
    if not FASHION_DIR.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{FASHION_DIR} is missing in CI; .ci/run must install dataset-fashion-mnist")
        pytest.skip(f"Fashion-MNIST not installed at {FASHION_DIR} (apt-get install dataset-fashion-mnist)")


class _CodeCarrier:
    """Unpickling this creates ``marker``: the proof that a loader ran pickled code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_code_carrying_pickle(path, key, marker):
    """A 'weights' file whose single entry runs code when unpickled."""
    import pickle

    with open(path, "wb") as f:
        pickle.dump({key: _CodeCarrier(str(marker))}, f)
