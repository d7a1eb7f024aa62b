"""The guide cannot rot: its examples run, its option tables are the code's, the site builds, and
the code's comments state contracts rather than measurements.

Every ```bash and ```python block in README.md and docs/ either runs here (the blocks of a page in
order, in one temporary folder, as a reader would type them), or is preceded by a line
``<!-- not run: REASON -->``, or by ``<!-- runs in: PAGE -->`` when every one of its commands runs,
verbatim, in PAGE (the README's recipes, each run where its page sets it up). A bash block of ``bench`` commands runs in this process (bash expands
each line's words and globs, then ``bench.cli.main`` runs it); any other bash block runs in bash
with the virtual environment's ``bench`` and ``python`` first on the PATH. The python blocks of a
page share one namespace, as cells of a notebook do.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from bench.cli import main
from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r"<!-- (?P<kind>not run|runs in): (?P<why>[^>]*\S)\s*-->\s*$")
RUNNABLE = ("bash", "python")


def blocks(page: Path) -> list[tuple[str, str, str | None, int]]:
    """(language, code, why it is not run here or None, line) of every fenced block of ``page``;
    a block that runs in another page has ``why`` = ``"runs in: PAGE"``."""
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        why = NOT_RUN.search(before)
        why = None if why is None else why.group("why") if why.group("kind") == "not run" else f"runs in: {why.group('why')}"
        out.append((m.group("lang"), m.group("body"), why,
                    text.count("\n", 0, m.start()) + 1))
    return out


def commands(code: str) -> list[str]:
    """The shell commands of a block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def shell_words(command: str) -> list[str]:
    """``command``'s words as bash makes them in the current folder (quotes removed, globs expanded)."""
    out = subprocess.run(["bash", "-c", f'printf "%s\\0" {command}'], capture_output=True, text=True, check=True)
    return out.stdout.split("\0")[:-1]


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_every_example_in_the_guide_runs_here_or_says_why_not():
    for page in PAGES:
        for lang, code, why, line in blocks(page):
            where = f"{_page_id(page)}:{line}"
            if lang == "bash" and why is None:
                assert commands(code), f"{where}: an empty bash block"
            if why is not None and why.startswith("runs in: "):
                other = ROOT / why.removeprefix("runs in: ")
                assert other.is_file(), f"{where}: no page {other}"
                there = [c for lang_, code_, why_, _ in blocks(other) if lang_ == lang and why_ is None
                         for c in commands(code_)]
                missing = [c for c in commands(code) if c not in there]
                assert not missing, f"{where}: these commands do not run in {other.name}: {missing}"
            elif why is not None:
                assert len(why) > 5, f"{where}: say why the block is not run"


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if any(lang in RUNNABLE and why is None
                                                          for lang, _, why, _ in blocks(p))], ids=_page_id)
def test_the_examples_of_each_page_run_in_order(page, tmp_path, monkeypatch, capsys):
    from bench.registry import BACKBONES, DATASETS, TASKS

    for registry in (BACKBONES, TASKS, DATASETS):  # a page may register plugins: forget them after
        registry.names()
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    for shared in ("results", "examples", "scripts"):  # pages read the committed results
        (tmp_path / shared).symlink_to(ROOT / shared)
    monkeypatch.setenv("BENCH_THREADS", os.environ.get("BENCH_THREADS", "1"))
    monkeypatch.syspath_prepend(str(ROOT))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(ROOT))
    namespace = {"__name__": f"docs_{page.stem}"}
    for lang, code, why, line in blocks(page):
        where = f"{_page_id(page)}:{line}"
        if why is not None or lang not in RUNNABLE:
            continue
        if lang == "python":
            exec(compile(code, where, "exec"), namespace)
            continue
        cmds = commands(code)
        if not all(c.startswith("bench ") for c in cmds):
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], capture_output=True, text=True, env=env)
            assert done.returncode == 0, (where, done.stdout[-2000:], done.stderr[-2000:])
            continue
        for command in cmds:
            capsys.readouterr()
            try:
                main(shell_words(command)[1:])
                code_ = 0
            except SystemExit as e:
                code_ = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            out, err = capsys.readouterr()
            assert code_ == 0, (where, command, out[-2000:], err[-2000:])


def test_readme_is_a_guide_of_at_most_250_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_every_task_has_a_page_whose_options_table_is_the_codes():
    from bench.registry import TASKS

    spec = importlib.util.spec_from_file_location("docs_gen", ROOT / "docs" / "gen.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for name in TASKS.names():
        if TASKS.source(name).startswith("igpt-bench"):
            page = ROOT / "docs" / "tasks" / f"{name}.md"
            assert f"<!-- options: {name} -->" in page.read_text(), page
    assert gen.stale_pages() == [], "run python docs/gen.py"


def test_bench_tasks_show_prints_each_option_with_its_default_and_meaning(bench):
    r = bench("tasks", "show", "knn", "--format", "markdown")
    assert r.code == 0
    assert "| `k` | `10,20,50,100,200` |" in r.out and "| `bank` | `train+val` |" in r.out
    r = bench("tasks", "show", "knn")
    assert r.code == 0 and "temperature" in r.out and "reads: activations" in r.out


def test_the_site_builds_with_mkdocs_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").read_text().count("bench.api.run") > 0


# -- comments state the contract -----------------------------------------------------------------

CODE_DIRS = ("bench", "backbones", "tasks", "scripts", "examples", "tests", ".ci")
CPU_MODEL = re.compile(r"\b(?:Xeon|EPYC|Epyc|Ryzen|Threadripper|Opteron|Zen ?\d|Core i[3579]|Sapphire Rapids|"
                       r"Emerald Rapids|Granite Rapids|Ice ?Lake|Cascade ?Lake|Cooper ?Lake|Skylake|Graviton|Neoverse)\b")
ISSUE = re.compile(r"\bissues? ?#?\d+\b|(?<![\w&])#\d+\b", re.I)
UNIT = r"(?:ms|µs|us|ns|s|secs?|seconds|min|mins|minutes|hours?)\b(?![-\w])"
TIMING = re.compile("|".join([
    r"\b\d[\d,]*\.\d+\s?" + UNIT,  # 0.618 s
    r"\b\d[\d,.]*\s?(?:ms|µs|us|ns)\b",  # 12 ms
    r"\b\d[\d,.]*\s?(?:-|to|->|→)\s?\d[\d,.]*\s?" + UNIT,  # 11-12.5 s, 24.5 -> 16.0 ms
    r"\btook\b[^.;]{0,40}?\b\d[\d,.]*\s?" + UNIT,  # took 15 s
    r"(?:\babout|\bunder|\baround|\broughly|~)\s?\d[\d,.]*\s?" + UNIT,  # about 80 s, ~9 s
    r"\b\d+(?:\.\d+)?x (?:faster|slower)\b",  # 2.94x faster
]))


def code_files() -> list[Path]:
    me = Path(__file__).resolve()
    return [p for d in CODE_DIRS for p in sorted((ROOT / d).rglob("*"))
            if p.is_file() and p.resolve() != me and (p.suffix in (".py", ".sh") or p.name == "run")]


def prose(path: Path) -> list[tuple[int, str]]:
    """(line, text) of the comments and docstrings of a Python file (of a shell script: its comments)."""
    text = path.read_text()
    if path.suffix != ".py":
        return [(i, line.split("#", 1)[1]) for i, line in enumerate(text.splitlines(), 1)
                if "#" in line and not line.lstrip().startswith("#!")]
    out = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(text).readline)
           if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append((node.body[0].lineno, doc))
    return out


def test_no_code_names_a_cpu_model_or_an_issue_number():
    found = [f"{p.relative_to(ROOT)}:{i}: {m.group(0)}" for p in code_files()
             for i, line in enumerate(p.read_text().splitlines(), 1)
             for m in (CPU_MODEL.search(line), ISSUE.search(line)) if m]
    assert found == [], "machines and issues belong in docs/performance.md and commit messages:\n" + "\n".join(found)


def test_no_docstring_or_comment_carries_a_timing_log():
    found = [f"{p.relative_to(ROOT)}:{line}: {m.group(0)}" for p in code_files() if not p.name.startswith("test_")
             for line, text in prose(p) for m in TIMING.finditer(text)]
    assert found == [], "timings belong in docs/performance.md and commit messages:\n" + "\n".join(found)


@pytest.mark.parametrize("text, hit", [
    ("took 0.618 s instead of 0.654", True), ("12 ms on the 2-core CPU", True), ("74-85 -> 30-38 ms", True),
    ("2.94x faster than fp32", True), ("took all of 10 minutes", True), ("under 8 minutes on one GPU", True),
    ("torch's default timeout (10 min NCCL)", False), ("eps 1e-5", False), ("1,024 tokens", False),
    ("step-0000040", False), ("a 4x128 model", False)])
def test_the_timing_pattern_tells_a_measurement_from_a_shape(text, hit):
    assert bool(TIMING.search(text)) is hit
