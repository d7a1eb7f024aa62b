"""The `bench` command line: click for parsing, rich for output.

This package's ``__init__`` holds the `bench` group, its global flags and ``main`` (error
handling); the commands live in its modules by subject (``listing``, ``running``, ``reporting``,
``model``, ``speed``; ``options`` holds the shared option decorators) and are added here. Every
mistake a user can make ends in one line on stderr and exit code 2; ``--debug`` shows the traceback of anything else.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import click

from bench.cli.listing import backbones, datasets, tasks
from bench.cli.model import complete, demo, pretrain, sample
from bench.cli.options import CONTEXT
from bench.cli.reporting import compare, report
from bench.cli.running import cache, extract, run
from bench.cli.speed import benchmark, perf
from bench.distributed import launch
from bench.errors import BenchError


@click.group(context_settings=CONTEXT)
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or notes.")
@click.version_option(package_name="igpt-bench", prog_name="bench")
def cli(debug, quiet):
    """Evaluate image representations: extract layer activations, probe them, tabulate.

    \b
    Example:
      bench run --backbone resnet18 --task linear-probe --dataset digits
    """


for command in (backbones, tasks, datasets, extract, run, cache, report, compare, sample, complete, pretrain, demo,
                benchmark, perf):
    cli.add_command(command)


GLOBAL_FLAGS = ("--debug", "--quiet", "-q")


def global_flags_first(argv: list[str]) -> list[str]:
    """Move the global flags to the front wherever they stand (``bench run … --quiet``), up to a
    ``--`` that ends the options."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in argv[:end] if a not in GLOBAL_FLAGS] + argv[end:]


def one_line(text: str) -> str:
    """An error message as one line: control characters a user's value brought in (a newline in a
    path) are shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def say_error(line: str, code: int) -> None:
    """A user error's one line on stderr. Under torchrun every process meets the same error (the
    checks are alike on each, and an error during the work is shared by all): rank 0 prints it,
    saying how to read the launcher's report that follows, and every rank puts it in the
    launcher's error file, so that report names it for each process instead of a bare exit code."""
    import json
    import time

    rank, world = launch()
    recorded = False
    if world > 1 and os.environ.get("TORCHELASTIC_ERROR_FILE"):
        with contextlib.suppress(OSError):
            Path(os.environ["TORCHELASTIC_ERROR_FILE"]).write_text(json.dumps(
                {"message": {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}}))
            recorded = True
    if recorded and rank == 0:
        line += (f" [torchrun: the {world} processes stop alike (exit {code}); the launcher's ChildFailedError "
                 "report below repeats this line per process]")
    if rank == 0 or not recorded:  # a launcher without an error file: each process says it
        click.echo(line, err=True)


def main(argv=None) -> None:
    """Entry point: one-line errors with exit code 2, tracebacks only with --debug."""
    argv = global_flags_first(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in argv or os.environ.get("BENCH_DEBUG") == "1"
    from bench.runtime import keep_freed_memory

    keep_freed_memory()
    import signal

    def terminated(signum, frame):  # a scheduler's SIGTERM ends a run as Ctrl-C does: locks let go
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    if not [a for a in argv if a not in GLOBAL_FLAGS]:  # a bare `bench`: its help, not an error
        click.echo(cli.get_help(click.Context(cli, info_name="bench")))
        sys.exit(0)
    try:
        if any("\x00" in a for a in argv):
            raise BenchError("an argument holds a NUL character, which no path or value may; retype it")
        rv = cli.main(args=argv, prog_name="bench", standalone_mode=False)
        sys.exit(rv if isinstance(rv, int) else 0)
    except BenchError as e:
        if debug:
            raise
        say_error(f"error: {one_line(str(e))}", e.exit_code)
        sys.exit(e.exit_code)
    except click.exceptions.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError" and e.ctx:  # `bench tasks`: its help, as a bare `bench`
            click.echo(e.ctx.get_help())
            sys.exit(0)
        if debug:
            raise
        where = f"`{e.ctx.command_path} --help`" if e.ctx else "`bench --help`"
        say_error(f"error: {one_line(e.format_message())} (see {where})", 2)
        sys.exit(2)
    except click.exceptions.Abort:  # click's form of Ctrl-C (and of our SIGTERM)
        click.echo("interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except OSError as e:
        if debug or e.filename is None:  # not about a path the user gave: a bug, with its traceback
            raise
        # A path the checks before the work did not foresee (a name too long, a permission, a full
        # disk): the system's words about that path, as a user error.
        click.echo(one_line(f"error: {e.filename}: {e.strerror or e}; check the path, its permissions and free "
                            "space"), err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted; rerun the same command to resume", err=True)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the last line of defence
        if debug:
            raise
        click.echo(one_line(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)"),
                   err=True)
        sys.exit(1)
