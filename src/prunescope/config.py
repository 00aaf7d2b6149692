"""Dataclass configs turned into command-line flags.

Each verb has a dataclass whose fields carry their help text in ``metadata["help"]``; the CLI builds
its flags from it (``--num-layers`` for ``num_layers``), so the library and the command line share
one description. Validation errors are UsageErrors that name the flag.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from prunescope.errors import UsageError


def field(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
          choices: list[str] | None = None, flag: str | None = None):
    """A dataclass field with its ``--help`` text (and optional choices / flag spelling)."""
    meta = {"help": help, "choices": choices, "flag": flag}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Strip Optional[...] and return (type, is_list)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple):
        return (typing.get_args(tp) or (str,))[0], True
    return tp, False


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of the dataclass ``cls`` to ``parser`` (except the fields named in ``skip``,
    whose flags the parser has already, e.g. from a parent parser every verb shares)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, is_list = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f.metadata.get("help", "")
        if default not in (None, False, [], ""):
            help_text += f" (default: {','.join(map(str, default)) if isinstance(default, list) else default})"
        kw: dict[str, Any] = {"dest": f.name, "help": help_text, "default": argparse.SUPPRESS}
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["metavar"] = f.name.upper()
            kw["type"] = _list_parser(tp, flag_name(f)) if is_list else _scalar_parser(tp, flag_name(f))
            if f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
        if not flag_name(f).startswith("-"):  # a positional argument (flag spelled without dashes)
            kw.pop("dest")
            if is_list:  # a positional list takes any number of words: `tasks --check a b`
                kw["nargs"], kw["type"] = "*", _scalar_parser(tp, flag_name(f))
            elif default is not None:
                kw["nargs"] = "?"
        parser.add_argument(flag_name(f), **kw)


def from_args(cls: type, ns: argparse.Namespace):
    """Build the dataclass from parsed flags (flags not given keep the dataclass defaults)."""
    given = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if hasattr(ns, f.name)}
    return cls(**given)


def _scalar_parser(tp: Any, flag: str):
    def parse(text: str):
        try:
            return tp(text) if tp in (int, float) else text
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects {tp.__name__}, got {text!r}") from None
    return parse


def _list_parser(tp: Any, flag: str):
    item = _scalar_parser(tp, flag)

    def parse(text: str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"{flag} expects a comma-separated list, got {text!r}")
        return [item(p) for p in parts]
    return parse


def require(condition: bool, message: str) -> None:
    """Raise a UsageError with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UsageError(message)
