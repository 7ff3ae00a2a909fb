"""Command-line entry points: one line for a user's error, a traceback only when asked.

Every command of the project (``python -m neuralnum``, ``python -m structured.train``,
each study) runs its ``main(argv)`` through :func:`run_main`:

* a user's error — a bad flag value the configs refuse (``ValueError`` / ``TypeError``), a
  missing, damaged or incompatible checkpoint (:class:`~neuralnum.core.runtime.CheckpointError`,
  ``OSError``), an unwritable output directory (``OSError``), a missing optional
  dependency (``ImportError``), a run that diverged (``FloatingPointError``) — ends in one
  line ``<prog>: error: …`` on stderr and exit status 2 (argparse's own errors look the
  same, after its usage lines);
* ``--debug`` anywhere on the command line (or ``NEURALNUM_DEBUG=1``) shows the traceback
  instead;
* Ctrl-C prints one line and exits with status 130 (checkpoints, results and figures are
  written atomically, so an interruption leaves no partial file).

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

__all__ = ["DEBUG_HELP", "USER_ERRORS", "add_debug_flag", "one_line", "run_main"]

#: The exceptions that report a user's error rather than a bug.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, OSError, ImportError, FloatingPointError, CheckpointError)
DEBUG_HELP = "show the traceback of an error (also NEURALNUM_DEBUG=1)"


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--debug`` (read by :func:`run_main` before parsing) to ``parser``'s help."""
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (its type's name when it has none)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


def run_main(main: Callable[[list[str]], object], prog: str,
             argv: Sequence[str] | None = None) -> NoReturn:
    """Run ``main(argv)`` (default ``sys.argv[1:]``, ``--debug`` removed) as a command
    named ``prog`` and exit: 0 on success, 2 with one line on a user's error, 130 on
    Ctrl-C."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("NEURALNUM_DEBUG", "0") == "1"
    args = [a for a in args if a != "--debug"]
    with cli_defaults():
        try:
            main(args)
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            sys.exit(130)
        except USER_ERRORS as error:
            if debug:
                raise
            print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
            sys.exit(2)
    sys.exit(0)
