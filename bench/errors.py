"""The one exception type for mistakes a user can make and fix.

The CLI prints its message as one line and exits with code 2; anything else is a bug and keeps
its traceback (shown with ``--debug``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchError(Exception):
    """A user-fixable problem: the message says what is wrong and what to do."""

    exit_code = 2


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """' (did you mean 'a', 'b'?)' for the closest choices, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + ", ".join(repr(c) for c in close) + "?)"
