"""What every study's command line and output share.

``study_parser`` builds ``--quick | --full`` and ``--out DIR`` (default ``runs/<name>``)
with :mod:`neuralnum.core.flags`, the project's one config → command-line mechanism;
``format_table`` lays rows out as a fixed-width text table; ``write_report`` writes
``DIR/<name>.json`` atomically; ``figure`` / ``figure_row`` / ``save_figure`` make and
write matplotlib figures (:mod:`neuralnum.core.figures`: no pyplot, atomic writes);
``run_cli`` runs a study's ``main`` as a command (:func:`neuralnum.core.entry.run_main`:
one line for a user's error, ``--debug`` for the traceback); ``timed`` measures one call's
wall seconds, and ``one_blas_thread`` / ``blas_threads`` pin and record numpy's / scipy's
BLAS threads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuralnum.core.entry import add_debug_flag, run_main
from neuralnum.core.figures import figure_grid, save_figure
from neuralnum.core.flags import add_dataclass_arguments, add_modes, checked
from neuralnum.core.runtime import atomic_write_text, check_output_path

__all__ = ["blas_threads", "figure", "figure_row", "format_table", "one_blas_thread", "run_cli",
           "save_figure", "study_parser", "timed", "write_report"]


@dataclass(frozen=True)
class StudyOptions:
    """The options every study shares besides its mode (``--quick`` / ``--full`` / …)."""

    out: Path = field(default=Path("runs"),  # output directory, refused up front if unwritable
                      metadata=checked(check_output_path))


def run_cli(main: Callable[[list[str]], object]) -> None:
    """A study's command-line entry: ``main(argv)`` as ``python -m <its module>``
    (:func:`neuralnum.core.entry.run_main`)."""
    module = main.__module__
    if module == "__main__":  # run as ``python -m studies.<name>``
        module = getattr(sys.modules["__main__"].__spec__, "name", module)
    run_main(main, f"python -m {module}")


def study_parser(name: str, doc: str, quick_help: str = "minutes on 2 CPU cores (default)",
                 full_help: str = "paper scale (GPU)", modes: dict[str, str] | None = None,
                 examples: Sequence[str] = ()) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the shared ``--quick``/``--full`` and ``--out`` options;
    ``modes`` adds more mutually exclusive flags (name → help); ``doc`` (the study's
    module docstring) is shown by ``--help``, which ends with example commands (the quick
    run, into another directory, and ``examples``: argument strings). Built with
    :mod:`neuralnum.core.flags` from :class:`StudyOptions` (``--out`` defaults to
    ``runs/<name>``), the mechanism of every command line of the project."""
    command = f"python -m studies.{name}"
    lines = [command, f"{command} --quick --out runs/{name}-2",
             *(f"{command} {args}" for args in examples)]
    parser = argparse.ArgumentParser(prog=command, description=doc,
                                     epilog="examples:\n" + "".join(f"  {x}\n" for x in lines),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_modes(parser, {"quick": quick_help, "full": full_help, **(modes or {})})
    add_dataclass_arguments(parser, StudyOptions, base=StudyOptions(out=Path("runs") / name))
    add_debug_flag(parser)
    return parser


def _format_cell(value: Any) -> str:
    """Floats to 4 significant digits, thousands separated from 1e4, exponent outside."""
    if not isinstance(value, float) or value == 0:
        return str(value)
    if 1e-2 <= abs(value) < 1e4:
        return f"{value:.4g}"
    return f"{value:,.0f}" if 1e4 <= abs(value) < 1e9 else f"{value:.2e}"


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """``columns`` of ``rows`` as a right-aligned fixed-width text table (header first)."""
    cells = [[_format_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [[*columns], *cells]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths, strict=True))
                     for line in lines)


def write_report(out: Path, name: str, report: Any) -> Path:
    """Write ``report`` as ``out/<name>.json``, atomically (values JSON cannot hold are
    written as ``str``); returns the path."""
    return atomic_write_text(out / f"{name}.json", json.dumps(report, indent=2, default=str))


def figure_row(ncols: int, figsize: tuple[float, float]) -> tuple[Any, list[Any]]:
    """A figure with a row of ``ncols`` axes (:func:`neuralnum.core.figures.figure_grid`)."""
    fig, axes = figure_grid(1, ncols, figsize)
    return fig, list(axes[0])


def figure(figsize: tuple[float, float] = (6, 4)) -> tuple[Any, Any]:
    """A ``(fig, ax)`` pair."""
    fig, (ax,) = figure_row(1, figsize)
    return fig, ax


def one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    """A context in which numpy's / scipy's BLAS runs one thread (as torch does in a quick
    study), through ``threadpoolctl`` where it is installed (else nothing changes:
    :func:`blas_threads` records what ran)."""
    try:  # optional dependency (scikit-learn's), not the project's
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1)


def blas_threads() -> int | None:
    """The largest thread count among the loaded BLAS / OpenMP libraries (``None`` without
    ``threadpoolctl``)."""
    try:  # optional dependency, as in one_blas_thread
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return max((lib["num_threads"] for lib in threadpool_info()), default=None)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), wall seconds)``."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start
