"""The one integer check of the project, and the one reader of a model-config.yaml section. They live in handlers/
because the handler ships alone inside the .mar and validates its options with them; training and the commands
use them too, raising their own UserError."""
from __future__ import annotations

from dataclasses import fields


def check_int(name: str, value, minimum: int, *, optional: bool = False, also: str = "",
              error: type[Exception] = ValueError) -> None:
    """Raise `error` naming `name` unless `value` is an integer >= `minimum` (or None when `optional`)."""
    if value is None and optional:
        return
    # bool is an int subclass; `threads: true` in YAML is a mistake, not 1 thread.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or null" if optional else "") + (f" or {also}" if also else "")
        raise error(f"{name} must be {allowed}, got {value!r}")


def model_yaml_section(model_yaml_config, key: str, cls, error):
    """`cls(**section)` for the `key:` section of a model-config.yaml (absent: every default); a section that is
    not a mapping or names an unknown option raises `error`, so a typo fails the registration with its name."""
    section = (model_yaml_config or {}).get(key) or {}
    if not isinstance(section, dict):
        raise error(f"model-config.yaml '{key}' must be a mapping, got {type(section).__name__}")
    known = sorted(f.name for f in fields(cls))
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise error(f"unknown {key} option(s) {unknown}; known: {known}")
    return cls(**section)
