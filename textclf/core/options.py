"""The one command-line layer of every entry point (training, textclf.torchserve, textclf.pipelines, bench).

A stage is a config dataclass and a `main(config)`. `parse_config` turns the dataclass into an argparse
CLI, so `--help` lists every field with its help and default and nothing is declared twice; `run` parses,
sets up logging (--quiet/--verbose), calls main and maps the project's errors to exit codes in one place
(textclf.core.errors): a mistake the user can fix exits 2, a correct request that failed exits 1, both as one
`error: ...` line, never a traceback.

Field metadata, set through `option()`: `help`; `flag` (the option's name when it differs from the
field's); `parse` (a converter for values argparse cannot type, e.g. "auto|none|N"); `positional` (an
argument rather than an option, e.g. the run directory of `training.summary`). A field whose type is
itself a dataclass becomes an argument group of that dataclass's options (e.g. the archive's handler
options, or the server a textclf.torchserve verb talks to).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from collections.abc import Callable, Mapping
from typing import Any

from textclf.core import log
from textclf.core.errors import USAGE, UserError, exit_code


def option(help: str, default: Any = dataclasses.MISSING, *, flag: str | None = None,
           parse: Callable[[str], Any] | None = None, positional: bool = False,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that documents itself on the command line (`positional`: an argument, not an option)."""
    metadata = {"help": help, **({"flag": flag} if flag else {}), **({"parse": parse} if parse else {}),
                **({"positional": True} if positional else {})}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def flag_of(f: dataclasses.Field) -> str:
    return "--" + f.metadata.get("flag", f.name).replace("_", "-")


def command_line(prog: str, config) -> str:
    """The command that reproduces `config`: `prog` and every option whose value differs from its default (a
    required one always), so a results file names how it was made without the options nobody changed. Flat
    configs only (no option groups): the benchmarks' reports use it."""
    args = [prog]
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not f.init or (f.default is not dataclasses.MISSING and value == f.default):
            continue
        if f.metadata.get("positional"):
            args.append(str(value))
        elif isinstance(value, bool):
            args.append(flag_of(f) if value else "--no-" + flag_of(f)[2:])
        else:
            args.append(f"{flag_of(f)} {'none' if value is None else value}")
    return " ".join(args)


def _scalar(tp):
    """(type, choices) behind `int | None`, `Optional[float]`, `Literal[...]`."""
    if typing.get_origin(tp) is typing.Literal:
        values = typing.get_args(tp)
        return type(values[0]), list(values)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return _scalar(args[0]) if args else (tp, None)


def check_choices(config) -> None:
    """Raise UserError when a Literal field holds a value outside its choices: argparse checks them,
    but a config built in Python (tests, notebooks) would otherwise fall through to a default silently."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        choices = _scalar(hints[f.name])[1]
        value = getattr(config, f.name)
        if choices and value not in choices:
            raise UserError(f"{flag_of(f)} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _converter(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _add_fields(parser, cls, prefix: str = "") -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            doc = (tp.__doc__ or tp.__name__).strip().splitlines()[0]
            _add_fields(parser.add_argument_group(doc), tp, prefix=f"{prefix}{f.name}.")
            continue
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", " "), "dest": prefix + f.name}
        scalar, choices = _scalar(tp)
        if "parse" in f.metadata:
            kwargs["type"] = _converter(f.metadata["parse"])
        elif scalar is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = scalar
            if choices:
                kwargs["choices"] = choices
        if "choices" not in kwargs and kwargs.get("action") is None:
            kwargs["metavar"] = f.metadata.get("flag", f.name).upper()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kwargs.update(required=True, default=argparse.SUPPRESS)  # no misleading "(default: None)"
        else:
            kwargs["default"] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.metadata.get("positional"):
            kwargs.pop("required", None)
            kwargs["metavar"] = kwargs.pop("dest").upper()
            parser.add_argument(prefix + f.name, **kwargs)
            continue
        parser.add_argument(flag_of(f), **kwargs)


def _build(cls, values: Mapping[str, Any], prefix: str = ""):
    hints, kwargs = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], values, prefix=f"{prefix}{f.name}.")
        elif prefix + f.name in values:
            kwargs[f.name] = values[prefix + f.name]
    return cls(**kwargs)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, except a None default: its help says what None means."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def _parser(cls, prog: str | None, description: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description or (cls.__doc__ or "").strip(),
                                   formatter_class=_HelpFormatter)


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", dest="_verbosity", action="store_const", const=-1, default=0,
                       help="log warnings and errors only")
    group.add_argument("-v", "--verbose", dest="_verbosity", action="store_const", const=1,
                       help="log debugging detail too")


def _parse(spec, argv, prog: str | None, description: str | None) -> tuple[Any, int]:
    """(config, verbosity) from `argv`; see parse_config."""
    if isinstance(spec, Mapping):
        parser = argparse.ArgumentParser(prog=prog, description=description)
        verbs = parser.add_subparsers(dest="_verb", required=True, metavar="VERB")
        for verb, cls in spec.items():
            doc = (cls.__doc__ or verb).strip()
            sub = verbs.add_parser(verb, help=doc.splitlines()[0], description=doc, formatter_class=_HelpFormatter)
            _add_fields(sub, cls)
            _add_verbosity(sub)
    else:
        parser = _parser(spec, prog, description)
        _add_fields(parser, spec)
        _add_verbosity(parser)
        if "--config" not in parser._option_string_actions:  # the server's --config is its properties file
            parser.add_argument("--config", metavar="JSON", default=None, dest="_config",
                                help="read options from this JSON file (e.g. training.tune's best.json); flags override it")
            _apply_config_file(parser, argv)
    values = vars(parser.parse_args(argv))
    values.pop("_config", None)
    verbosity = values.pop("_verbosity", 0)
    cls = spec[values.pop("_verb")] if isinstance(spec, Mapping) else spec
    try:
        return _build(cls, values), verbosity
    except Exception as e:  # a config's own checks (__post_init__): the user's mistake, said in one line
        if isinstance(e, ValueError) or exit_code(e) == USAGE:
            parser.exit(USAGE, f"error: {e}\n")
        raise


def parse_config(spec, argv=None, prog: str | None = None, description: str | None = None):
    """Parse `argv` into the dataclass `spec`, or, for a command with verbs, into `spec[verb]`
    (a mapping verb -> dataclass, each dataclass's docstring being the verb's help)."""
    return _parse(spec, argv, prog, description)[0]


def _apply_config_file(parser: argparse.ArgumentParser, argv) -> None:
    """`--config FILE`: its keys (field names; a nested dataclass as an object) become the parser's
    defaults, so the flags on the command line still win. An unknown key is an error, not a silent no-op."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    path = pre.parse_known_args(argv)[0].config
    if path is None:
        return
    try:
        loaded = json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError) as e:
        parser.error(f"--config {path}: {e}")
    if not isinstance(loaded, dict):
        parser.error(f"--config {path}: expected a JSON object of options")

    def flatten(obj: dict, prefix: str = "") -> dict:
        return {k2: v2 for k, v in obj.items()
                for k2, v2 in (flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}).items()}

    values = flatten(loaded)
    actions = {a.dest: a for a in parser._actions}
    unknown = sorted(set(values) - set(actions) - {"help", "_config"})
    if unknown:
        parser.error(f"--config {path}: unknown option(s) {', '.join(unknown)}")
    for dest in values:
        actions[dest].required = False
    parser.set_defaults(**values)


def run(main: Callable[[Any], Any], spec, argv=None, prog: str | None = None, description: str | None = None,
        show: Callable[[Any], str] | None = None) -> int:
    """Parse, set up logging, run `main(config)`, print `show(result)` if given; return the exit code (see the
    module doc)."""
    config, verbosity = _parse(spec, argv, prog, description)
    log.setup(verbosity)
    try:
        result = main(config)
        if show is not None:
            print(show(result), flush=True)
    except BrokenPipeError:
        # The reader went away (`textclf summary RUN | head`): stop quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:
        code = exit_code(e)
        if code is None:
            raise
        print(f"error: {e}", file=sys.stderr)
        return code
    return 0
