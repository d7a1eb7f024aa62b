"""The README opens with exactly two commands; CI runs the second one verbatim."""

import re

from tests.conftest import ROOT


def _commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


def test_readme_opens_with_two_one_line_commands():
    text = (ROOT / "README.md").read_text()
    head = text.split("\n## ")[0]
    blocks = re.findall(r"```bash\n(.*?)\n```", head, flags=re.S)
    assert len(blocks) == 2 and all("\n" not in b for b in blocks)
    setup_and_run, tests = blocks
    assert setup_and_run.endswith("bench demo")
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _commands()[1] in ci.splitlines()
