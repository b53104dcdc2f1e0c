"""The project's two kinds of error and their exit codes, in one place.

    UserError  a mistake the user can fix (an option, a file, the data)   exit 2
    Failure    a well-formed request that could not be carried out        exit 1

Both are reported as one `error: ...` line, never a traceback (textclf.core.options.run). An error class
outside this package takes part by declaring `exit_code` itself: the handler's errors do, because handlers/
ships alone inside the .mar and cannot import this module.
"""
from __future__ import annotations

USAGE = 2
FAILED = 1


class UserError(Exception):
    """A mistake the user can fix (an option, a file, the data); one line, exit code 2."""

    exit_code = USAGE


class Failure(Exception):
    """A well-formed request that could not be carried out (server refused, tool failed); one line, exit 1."""

    exit_code = FAILED


def exit_code(error: BaseException) -> int | None:
    """The exit code `error` declares, or None for an unexpected error (which keeps its traceback)."""
    code = getattr(type(error), "exit_code", None)
    return code if isinstance(code, int) else None
