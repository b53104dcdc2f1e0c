"""The one integer check of the project. It lives in handlers/ because the handler ships alone inside
the .mar and validates its options with it; `cli.check_int` is the same function raising UserError."""
from __future__ import annotations


def check_int(name: str, value, minimum: int, *, optional: bool = False, also: str = "",
              error: type[Exception] = ValueError) -> None:
    """Raise `error` naming `name` unless `value` is an integer >= `minimum` (or None when `optional`)."""
    if value is None and optional:
        return
    # bool is an int subclass; `threads: true` in YAML is a mistake, not 1 thread.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or null" if optional else "") + (f" or {also}" if also else "")
        raise error(f"{name} must be {allowed}, got {value!r}")
