"""Turn a stage's config dataclass into an argparse CLI, so `--help` lists every field with its help
and default, and user mistakes exit 2 with one line instead of a traceback."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing


class UserError(Exception):
    """A mistake the user can fix; reported as one line, exit code 2."""


def _arg_type(tp):
    """The scalar type behind `int | None`, `Optional[float]`, `Literal[...]` etc."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Literal:
        return type(typing.get_args(tp)[0]), list(typing.get_args(tp))
    if args and typing.get_origin(tp) is not typing.Literal:
        return _arg_type(args[0])
    return tp, None


def check_choices(config) -> None:
    """Raise UserError when a Literal field holds a value outside its choices: argparse checks them,
    but a config built in Python (tests, notebooks) would otherwise fall through to a default silently."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        choices = _arg_type(hints[f.name])[1]
        value = getattr(config, f.name)
        if choices and value not in choices:
            raise UserError(f"--{f.name.replace('_', '-')} must be one of {', '.join(map(str, choices))}, got {value!r}")


def parse_config(cls, argv=None, description: str | None = None):
    """Parse `argv` into `cls`; field metadata `help` becomes the option's help text."""
    parser = argparse.ArgumentParser(description=description or cls.__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        kwargs = {"help": f.metadata.get("help", " "), "dest": f.name}
        tp, choices = _arg_type(hints[f.name])
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = tp
            if choices:
                kwargs["choices"] = choices
        if required:
            kwargs.update(required=True, default=argparse.SUPPRESS)  # no misleading "(default: None)"
        else:
            kwargs["default"] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        parser.add_argument(flag, **kwargs)
    args = parser.parse_args(argv)
    try:
        return cls(**vars(args))
    except (ValueError, UserError) as e:
        parser.exit(2, f"error: {e}\n")


def run_main(main, cls, argv=None, description=None, errors=(UserError,)) -> None:
    """`__main__` helper: parse, run, and turn the stage's user errors into `error: ...` + exit 2."""
    config = parse_config(cls, argv, description)
    try:
        main(config)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
