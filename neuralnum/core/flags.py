"""Config dataclasses → command-line flags: the one mechanism of every command line.

``python -m neuralnum``, ``python -m structured.train`` and the studies
(:func:`studies.study_io.study_parser`) all build their options with these helpers on
``argparse``: each field of a frozen config dataclass becomes ``--field-name``, typed by
its annotation (``bool`` → ``--x/--no-x``; ``tuple[float, float]`` → two values,
``tuple[str, ...]`` one or more; ``Literal[...]`` → those choices; ``int | None`` → an
``int`` flag whose absence means ``None``; a field without a default → a required
flag). A field holding a dataclass contributes its own fields as flat flags
(``TrainConfig.model.d_model`` → ``--d-model``), or prefixed ones when the field's
metadata says so (:func:`prefixed`; ``Recipe.lm.minutes`` → ``--lm-minutes``). The
values are validated by the dataclass itself (its ``ValueError`` names the field), so the
command line and the Python API accept and refuse the same things; a field whose
metadata carries a check (:func:`checked`, e.g. that an output directory can be written)
is also checked as the command line is parsed, before any work.

A small helper of our own rather than ``tyro`` / ``simple-parsing``: both parse into
their own parser object, while our commands need a plain ``ArgumentParser`` that
sub-commands and studies extend with their own arguments (``study_parser``'s callers do),
and flat flags for nested configs keep the command lines short (``--d-model 16``).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

__all__ = ["add_dataclass_arguments", "add_modes", "checked", "dataclass_from_args",
           "nonnegative_int", "positive_int", "prefixed", "without_option"]

T = TypeVar("T")
_SCALARS = (int, float, str, Path)
_PREFIX = "flag_prefix"
_CHECK = "flag_check"


def prefixed(prefix: str) -> dict[str, str]:
    """Field metadata giving a nested config's flags the form ``--<prefix>-<name>``
    (``lm: LMSettings = field(default_factory=LMSettings, metadata=prefixed("lm"))`` →
    ``--lm-damping``)."""
    return {_PREFIX: prefix}


def checked(check: Callable[[Any], object]) -> dict[str, Any]:
    """Field metadata giving the field's flag a check at parse time: ``check(value)``
    raising ``OSError`` / ``ValueError`` / ``TypeError`` becomes argparse's error on that
    flag (usage, then one line, status 2). ``field(default=Path("runs"),
    metadata=checked(check_output_path))`` refuses an unwritable ``--out`` up front."""
    return {_CHECK: check}


def _checked_type(convert: Callable[[str], Any],
                  check: Callable[[Any], object]) -> Callable[[str], Any]:
    """``convert``, then ``check``; a refusal as ``argparse.ArgumentTypeError``."""
    def parse(text: str) -> Any:
        value = convert(text)
        try:
            check(value)
        except (OSError, ValueError, TypeError) as err:
            raise argparse.ArgumentTypeError(str(err)) from err
        return value

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names it on errors
    return parse


def positive_int(text: str) -> int:
    """argparse ``type=`` of a hand-written flag taking an integer ≥ 1 (``--threads``)."""
    value = int(text)  # a ValueError: argparse's "invalid positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse ``type=`` of a hand-written flag taking an integer ≥ 0 (``--seed``)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _without_none(hint: Any) -> tuple[Any, bool]:
    """``(T, True)`` for ``T | None``, else ``(hint, False)``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _argument(cls: type, f: dataclasses.Field, hint: Any, default: Any) -> dict[str, Any]:
    """The ``add_argument`` keywords of field ``f`` of ``cls`` (annotation ``hint``)."""
    hint, optional = _without_none(hint)
    kwargs: dict[str, Any] = {"metavar": f.name.upper()}
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        kwargs.update(choices=choices, type=type(choices[0]), metavar=None)
    elif hint is bool:
        kwargs.update(action=argparse.BooleanOptionalAction, metavar=None)
    elif typing.get_origin(hint) is tuple:
        members = typing.get_args(hint)
        variadic = len(members) == 2 and members[1] is Ellipsis
        kwargs.update(nargs="+" if variadic else len(members), type=members[0])
    elif hint in _SCALARS:
        kwargs["type"] = hint
    else:
        raise TypeError(f"cannot make a flag for {cls.__name__}.{f.name}: {hint!r}")
    if default is dataclasses.MISSING:
        kwargs.update(required=True, help="required")
    else:
        shown = "none" if default is None and optional else default
        kwargs["help"] = f"default {shown}"
    return kwargs


def add_dataclass_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                            cls: type, *, base: Any = None, exclude: Iterable[str] = (),
                            suppress: bool = False, prefix: str = "",
                            flag_prefix: str = "") -> None:
    """Add ``--field-name`` for every field of dataclass ``cls`` (recursively, flattened).

    Defaults come from ``base`` (an instance; default ``cls()`` when every field has a
    default). ``suppress=True`` leaves flags not given out of the namespace, so
    :func:`dataclass_from_args` changes only what was given (for a base chosen after
    parsing). ``exclude``: field names to leave out. Raises ``ValueError`` on a flag
    defined twice and ``TypeError`` on a field type it cannot parse.
    """
    exclude = set(exclude)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        default = _default(cls, f, base)
        if dataclasses.is_dataclass(hints[f.name]) or dataclasses.is_dataclass(default):
            inner = f.metadata.get(_PREFIX)
            group = parser
            if isinstance(parser, argparse.ArgumentParser):  # one help section per config
                doc = (hints[f.name].__doc__ or "").strip().split("\n\n")[0]
                group = parser.add_argument_group(f.name, " ".join(doc.split()))
            add_dataclass_arguments(
                group, hints[f.name], base=None if default is dataclasses.MISSING else default,
                exclude=exclude, suppress=suppress, prefix=f"{prefix}{f.name}.",
                flag_prefix=f"{flag_prefix}{inner}_" if inner else flag_prefix)
            continue
        flag = _flag(flag_prefix + f.name)
        if flag in parser._option_string_actions:
            raise ValueError(f"flag {flag} of {cls.__name__}.{f.name} is already defined")
        kwargs = _argument(cls, f, hints[f.name], default)
        if _CHECK in f.metadata:
            kwargs["type"] = _checked_type(kwargs.get("type", str), f.metadata[_CHECK])
        if default is not dataclasses.MISSING:
            kwargs["default"] = argparse.SUPPRESS if suppress else default
        parser.add_argument(flag, dest=prefix + f.name, **kwargs)


def _default(cls: type, f: dataclasses.Field, base: Any) -> Any:
    """The value of field ``f`` in ``base`` (or ``cls``'s own default)."""
    if base is not None:
        return getattr(base, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def dataclass_from_args(cls: type[T], args: argparse.Namespace | Mapping[str, Any], *,
                        base: T | None = None, prefix: str = "") -> T:
    """The instance of ``cls`` the parsed ``args`` describe: ``base`` (default ``cls()``)
    with every given field replaced (nested dataclasses likewise); validated by
    ``cls``."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        current = _default(cls, f, base)
        if f.init and dataclasses.is_dataclass(current):
            changes[f.name] = dataclass_from_args(type(current), values, base=current,
                                                  prefix=f"{prefix}{f.name}.")
        elif prefix + f.name in values:
            value = values[prefix + f.name]
            changes[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**changes) if base is None else dataclasses.replace(base, **changes)


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
