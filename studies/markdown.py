"""Small pieces every study's ``tables(result)`` and ``headline(result)`` use to write
Markdown.

A study's tables (docs/results.md) and its line in the README's results index are
rendered from its JSON result by :mod:`studies.report`; these helpers keep the look
uniform: :func:`command` (the first line, naming the command that produced the result),
:func:`table` (a Markdown table), :func:`targets_met` (a count of verdicts),
:func:`targets_table` (the verdicts as a ``| target | met |`` table), and number
formats (:func:`sci`, :func:`fixed`, :func:`count`, :func:`times`) that print ``—`` for a
missing value.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from neuralnum.core.flags import without_option

__all__ = ["command", "count", "fixed", "num", "percent", "sci", "study_command", "table",
           "targets_met", "targets_table", "times"]


def study_command(name: str, argv: Sequence[str] | None) -> str:
    """``python3 -m studies.<name> <args>`` for the arguments a study's ``main`` received
    (``sys.argv[1:]`` when ``argv`` is ``None``), without ``--out DIR`` (where the output
    went does not change it)."""
    kept = without_option(sys.argv[1:] if argv is None else argv)
    return " ".join([f"python3 -m studies.{name}", *kept])


def command(result: dict[str, Any], what: str = "") -> str:
    """The first line of a study's block of tables: the command behind ``result``."""
    cmd = result.get("command", "(command not recorded)")
    return f"`{cmd}`" + (f" — {what}" if what else "") + ":"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; ``rows`` hold already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def sci(value: float | None, digits: int = 2) -> str:
    """``1.23e-15`` style (``digits`` after the point), plain ``0`` for zero."""
    if value is None:
        return "—"
    if value == 0:
        return "0"
    mantissa, exp = f"{value:.{digits}e}".split("e")
    return f"{mantissa}e{int(exp)}"


def num(value: float | None, digits: int = 3) -> str:
    """``digits`` significant digits; scientific (``8.92e3``) outside ``[1e-2, 1e4)``."""
    if value is None:
        return "—"
    if value == 0 or 1e-2 <= abs(value) < 1e4:
        text = f"{value:.{digits}g}"
        return f"{value:.0f}" if "e" in text else text      # 1.02e+03 → 1020
    return sci(value, digits - 1)


def fixed(value: float | None, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals."""
    return "—" if value is None else f"{value:.{digits}f}"


def count(value: float | None) -> str:
    """An integer with thousands separators."""
    return "—" if value is None else f"{round(value):,}"


def times(value: float | None, digits: int = 2) -> str:
    """A ratio as ``3.21×``."""
    return "—" if value is None else f"{value:.{digits}f}×"


def percent(value: float | None, digits: int = 1) -> str:
    """A fraction in ``[0, 1]`` as a percentage."""
    return "—" if value is None else f"{100 * value:.{digits}f}%"


def targets_met(verdicts: dict[str, bool]) -> str:
    """``"3 of 4 targets met"`` for a study's ``verdicts(result)``."""
    total = len(verdicts)
    return f"{sum(map(bool, verdicts.values()))} of {total} target{'s' * (total != 1)} met"


def targets_table(verdicts: dict[str, bool]) -> str:
    """A study's ``verdicts(result)`` as the Markdown table ``| target | met |`` (``yes`` /
    ``no``)."""
    return table(["target", "met"], [[k, "yes" if v else "no"] for k, v in verdicts.items()])
