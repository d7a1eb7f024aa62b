"""The CLI's shared pieces: an option several commands take is declared once, and under torchrun
only rank 0 prints what a command reports."""

import click

from bench.cli import cli
from bench.cli.options import echo_main


def commands(group=cli, path=("bench",)):
    """(path, command) for every command and subcommand of ``bench``."""
    for name, command in sorted(group.commands.items()):
        yield path + (name,), command
        if isinstance(command, click.Group):
            yield from commands(command, path + (name,))


def declarations(option: str) -> dict[str, dict]:
    """How each command that builds a backbone declares ``option``, keyed by command path."""
    found = {}
    for path, command in commands():
        names = {p.opts[0]: p for p in command.params}
        if "--pretrained" in names and option in names:
            found[" ".join(path)] = names[option].to_info_dict()
    return found


def test_the_backbone_options_read_the_same_on_every_command_that_builds_a_backbone():
    for option in ("--pretrained", "--image-size"):
        found = declarations(option)
        assert {"bench run", "bench extract", "bench backbones show", "bench sample"} <= set(found)
        first = next(iter(found.values()))
        assert all(d == first for d in found.values()), option


def test_single_weights_read_the_same_wherever_one_file_is_taken():
    found = {path: d for path, d in declarations("--weights").items() if not d["multiple"]}
    assert "bench extract" in found and "bench backbones show" in found
    assert len({d["help"] for d in found.values()}) == 1


def test_under_torchrun_only_rank_0_prints_what_a_command_reports(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    echo_main("from rank 1")
    monkeypatch.setenv("RANK", "0")
    echo_main("from rank 0")
    assert capsys.readouterr().out == "from rank 0\n"


def test_bench_is_still_the_entry_point_with_every_command():
    assert {"backbones", "tasks", "datasets", "extract", "run", "cache", "report", "compare", "sample", "complete",
            "pretrain", "demo", "perf"} <= set(cli.commands)
