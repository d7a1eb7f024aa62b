"""Write each task page's options table from the code's own declarations.

A task page holds ``<!-- options: TASK -->`` ... ``<!-- /options -->``; between them goes the
output of ``bench tasks show TASK --format markdown``, so the docs and the CLI read one source.
Run ``python docs/gen.py`` after changing a task's options; ``--check`` exits 1 naming the pages
that are out of date (tests/test_docs.py runs it).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
BLOCK = re.compile(r"(<!-- options: (?P<task>[\w-]+) -->\n)(?P<body>.*?)(<!-- /options -->)", re.S)


def options_table(task: str) -> str:
    """The Markdown table `bench tasks show TASK --format markdown` prints."""
    from click.testing import CliRunner

    from bench.cli import cli

    result = CliRunner().invoke(cli, ["tasks", "show", task, "--format", "markdown"])
    if result.exit_code != 0:
        raise SystemExit(f"bench tasks show {task} failed: {result.output.strip()}")
    return result.output


def render(text: str) -> str:
    """``text`` with every options block filled from the code."""
    return BLOCK.sub(lambda m: m.group(1) + options_table(m.group("task")) + m.group(4), text)


def stale_pages() -> list[Path]:
    """Pages whose options tables differ from the code's declarations."""
    return [page for page in sorted(DOCS.rglob("*.md")) if render(page.read_text()) != page.read_text()]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = stale_pages()
        for page in stale:
            print(f"{page.relative_to(DOCS.parent)} is out of date: run python docs/gen.py", file=sys.stderr)
        return 1 if stale else 0
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text()
        new = render(text)
        if new != text:
            page.write_text(new)
            print(f"wrote {page.relative_to(DOCS.parent)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(DOCS.parent))
    raise SystemExit(main(sys.argv[1:]))
