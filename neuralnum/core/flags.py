"""Config dataclasses → command-line flags: the one mechanism of every command line.

``python -m neuralnum train``, ``python -m structured.train`` and the studies
(:func:`studies.study_io.study_parser`) all build their options with these helpers on
``argparse``: each field of a frozen config dataclass becomes ``--field-name`` (typed by
its default: ``bool`` → ``--x/--no-x``, ``tuple`` → that many values, else ``int`` /
``float`` / ``str`` / ``Path``); a field holding a dataclass contributes its own fields
as flat flags (``TrainConfig.model.d_model`` → ``--d-model``). The values are
validated by the dataclass itself (its ``ValueError`` names the field), so the
command line and the Python API accept and refuse the same things.

A small helper of our own rather than ``tyro`` / ``simple-parsing``: both parse into
their own parser object, while our commands need a plain ``ArgumentParser`` that
sub-commands and studies extend with their own arguments (``study_parser``'s callers do),
and flat flags for nested configs keep the existing command lines (``--d-model 16``).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["add_dataclass_arguments", "add_modes", "dataclass_from_args", "without_option"]

T = TypeVar("T")
_SCALARS = (int, float, str, Path)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, *, base: Any = None,
                            exclude: Iterable[str] = (), suppress: bool = False,
                            choices: Mapping[str, Iterable[str]] | None = None,
                            prefix: str = "") -> None:
    """Add ``--field-name`` for every field of dataclass ``cls`` (recursively, flattened).

    Defaults come from ``base`` (an instance; default ``cls()``). ``suppress=True`` leaves
    unspecified flags out of the namespace, so :func:`dataclass_from_args` changes only
    what was given (for a base chosen after parsing). ``choices`` lists allowed values in
    ``--help`` (the dataclass validates them). Raises ``ValueError`` on a flag defined
    twice and ``TypeError`` on a field type it cannot parse.
    """
    base = cls() if base is None else base
    exclude = set(exclude)
    choices = dict(choices or {})
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        default = getattr(base, f.name)
        if dataclasses.is_dataclass(default):
            add_dataclass_arguments(parser, type(default), base=default, exclude=exclude,
                                    suppress=suppress, choices=choices,
                                    prefix=f"{prefix}{f.name}.")
            continue
        flag = _flag(f.name)
        if flag in parser._option_string_actions:
            raise ValueError(f"flag {flag} of {cls.__name__}.{f.name} is already defined")
        shown = (f"one of {', '.join(map(str, choices[f.name]))}; " if f.name in choices
                 else "")
        kwargs: dict[str, Any] = {
            "dest": prefix + f.name, "metavar": f.name.upper(),
            "help": f"{shown}default {default}",
            "default": argparse.SUPPRESS if suppress else default}
        if isinstance(default, bool):
            kwargs.update(action=argparse.BooleanOptionalAction, metavar=None)
        elif isinstance(default, tuple) and default:
            kwargs.update(nargs=len(default), type=type(default[0]))
        elif isinstance(default, _SCALARS):
            kwargs["type"] = type(default) if not isinstance(default, Path) else Path
        else:
            raise TypeError(f"cannot make a flag for {cls.__name__}.{f.name} = {default!r}")
        parser.add_argument(flag, **kwargs)


def dataclass_from_args(cls: type[T], args: argparse.Namespace | Mapping[str, Any], *,
                        base: T | None = None, prefix: str = "") -> T:
    """The instance of ``cls`` the parsed ``args`` describe: ``base`` (default ``cls()``)
    with every given field replaced (nested dataclasses likewise); validated by
    ``cls``."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    base = cls() if base is None else base
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        current = getattr(base, f.name)
        if dataclasses.is_dataclass(current) and f.init:
            changes[f.name] = dataclass_from_args(type(current), values, base=current,
                                                  prefix=f"{prefix}{f.name}.")
        elif prefix + f.name in values:
            value = values[prefix + f.name]
            changes[f.name] = tuple(value) if isinstance(current, tuple) else value
    return dataclasses.replace(base, **changes)


def add_modes(parser: argparse.ArgumentParser, modes: Mapping[str, str]) -> None:
    """Mutually exclusive ``--name`` switches (name → help), e.g. ``--quick | --full``."""
    group = parser.add_mutually_exclusive_group()
    for name, text in modes.items():
        group.add_argument(_flag(name), action="store_true", help=text)


def without_option(args: Sequence[str], option: str = "--out") -> list[str]:
    """``args`` without ``option VALUE`` / ``option=VALUE`` (e.g. an output path, which
    does not change a run's result when a command line is recorded beside it)."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(f"{option}="):
            kept.append(arg)
    return kept
