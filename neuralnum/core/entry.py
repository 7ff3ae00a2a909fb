"""Command-line entry points: one line for a user's error, a traceback only when asked.

Every command of the project (``python -m neuralnum``, ``python -m structured.train``,
``python -m structured.models``, each study and ``python -m studies.report``) runs its
``main(argv)`` through :func:`run_main`:

* a user's error — a bad flag value the configs refuse (``ValueError`` / ``TypeError``), a
  missing, damaged or incompatible checkpoint (:class:`~neuralnum.core.runtime.CheckpointError`,
  ``OSError``), a learner used at a shape it cannot serve (``ValueError``), an unwritable
  output path (``OSError``; checked before any work by
  :func:`~neuralnum.core.runtime.check_output_path`), a missing optional dependency
  (``ImportError``, with the ``pip install`` that provides it), a run that diverged
  (``FloatingPointError``) — ends in one line ``<prog>: error: …`` on stderr and exit
  status 2 (argparse's own errors look the same, after its usage lines);
* ``--debug`` anywhere on the command line (or ``NEURALNUM_DEBUG=1``) shows the traceback
  instead;
* Ctrl-C prints one line and exits with status 130 (checkpoints, results and figures are
  written atomically and the metrics log one whole line at a time, so an interruption
  leaves no partial file);
* otherwise the status is 0, or ``main``'s return value when that is an ``int`` (e.g.
  ``studies.report --check``: 1 when README.md differs).

The documented environment defaults (``NEURALNUM_PROGRESS``, ``NEURALNUM_KERNELS``) apply
inside (:func:`~neuralnum.core.runtime.cli_defaults`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from neuralnum.core.runtime import CheckpointError, cli_defaults

__all__ = ["DEBUG_HELP", "EXTRAS", "USER_ERRORS", "add_debug_flag", "one_line", "run_main"]

#: The exceptions that report a user's error rather than a bug.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, OSError, ImportError, FloatingPointError, CheckpointError)
DEBUG_HELP = "show the traceback of an error (also NEURALNUM_DEBUG=1)"


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--debug`` (read by :func:`run_main` before parsing) to ``parser``'s help."""
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)


#: Optional dependencies (import name → the ``pip install`` that provides them).
EXTRAS = {"sklearn": 'pip install -e ".[data]"', "hypothesis": 'pip install -e ".[dev]"',
          "pytest": 'pip install -e ".[dev]"', "mutmut": 'pip install -e ".[mutation]"'}


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (its type's name when it has none), with what to do
    for the errors whose own message does not say: a module that is not installed (the
    ``pip install``: :data:`EXTRAS`) and an operating system's refusal of a path."""
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, ModuleNotFoundError) and "pip install" not in text:
        root = (error.name or "").split(".")[0]
        text += f": install it ({EXTRAS.get(root, f'pip install {root}')})"
    elif isinstance(error, OSError) and error.strerror and error.filename:
        text = (f"{error.strerror}: {error.filename} (check that the path exists and can "
                f"be written, or pass another one)")
    return text


def run_main(main: Callable[[list[str]], object], prog: str,
             argv: Sequence[str] | None = None) -> NoReturn:
    """Run ``main(argv)`` (default ``sys.argv[1:]``, ``--debug`` removed) as a command
    named ``prog`` and exit: 0 on success (``main``'s return value if it is an ``int``),
    2 with one line on a user's error, 130 on Ctrl-C."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("NEURALNUM_DEBUG", "0") == "1"
    args = [a for a in args if a != "--debug"]
    with cli_defaults():
        try:
            status = main(args)
        except KeyboardInterrupt:
            print(f"{prog}: interrupted (files written so far are complete)", file=sys.stderr)
            sys.exit(130)
        except USER_ERRORS as error:
            if debug:
                raise
            print(f"{prog}: error: {one_line(error)} (--debug shows the traceback)",
                  file=sys.stderr)
            sys.exit(2)
    sys.exit(status if isinstance(status, int) and not isinstance(status, bool) else 0)
