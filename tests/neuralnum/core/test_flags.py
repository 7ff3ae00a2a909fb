"""Config dataclasses → flags (:mod:`neuralnum.core.flags`): types from annotations."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from neuralnum.core.flags import add_dataclass_arguments, dataclass_from_args, prefixed


@dataclass(frozen=True)
class Inner:
    width: int = 4
    name: str = "a"


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    rate: float = 0.5
    pair: tuple[float, float] = (1.0, 2.0)
    flag: bool = True

    def __post_init__(self):
        if self.rate <= 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")


def _parse(argv, **options):
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Outer, **options)
    return parser.parse_args(argv)


def test_cli_flags_for_nested_tuple_and_bool_fields():
    args = _parse(["--width", "7", "--pair", "3", "4", "--no-flag", "--rate", "2"])
    assert dataclass_from_args(Outer, args) == Outer(Inner(width=7), 2.0, (3.0, 4.0), False)
    assert dataclass_from_args(Outer, _parse([])) == Outer()
    base = Outer(rate=9.0)
    given = _parse(["--name", "b"], suppress=True)
    assert vars(given) == {"inner.name": "b"}
    assert dataclass_from_args(Outer, given, base=base) == Outer(Inner(name="b"), 9.0)
    with pytest.raises(ValueError, match="rate must be"):
        dataclass_from_args(Outer, _parse(["--rate", "-1"]))


def test_cli_refuses_duplicate_flags_and_unknown_types():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate")
    with pytest.raises(ValueError, match="already defined"):
        add_dataclass_arguments(parser, Outer)

    @dataclass
    class Odd:
        thing: object = None

    with pytest.raises(TypeError, match="cannot make a flag"):
        add_dataclass_arguments(argparse.ArgumentParser(), Odd)


@dataclass(frozen=True)
class Engine:
    damping: float = 1e-3
    solver: Literal["auto", "eigh"] = "auto"


@dataclass(frozen=True)
class Settings:
    minutes: float = 0.0
    engine: Engine = field(default_factory=Engine)


@dataclass(frozen=True)
class Command:
    path: Path
    steps: int | None = None
    lm: Settings = field(default_factory=Settings, metadata=prefixed("lm"))


def test_optional_literal_required_and_prefixed_fields():
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Command)
    args = parser.parse_args(["--path", "x.pt", "--lm-minutes", "2", "--lm-solver", "eigh",
                              "--lm-damping", "0.5"])
    assert dataclass_from_args(Command, args) == Command(
        Path("x.pt"), None, Settings(2.0, Engine(0.5, "eigh")))
    assert dataclass_from_args(Command, parser.parse_args(
        ["--path", "y", "--steps", "3"])).steps == 3
    with pytest.raises(SystemExit):  # a Literal field refuses other values
        parser.parse_args(["--path", "x", "--lm-solver", "svd"])
    with pytest.raises(SystemExit):  # a field without a default is a required flag
        parser.parse_args([])
