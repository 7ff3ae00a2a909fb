"""What every study's command line and output share.

``study_parser`` builds ``--quick | --full`` and ``--out DIR`` (default ``runs/<name>``);
``write_report`` writes ``DIR/<name>.json``; ``figure`` / ``save_figure`` make and write a
matplotlib figure with the Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["figure", "save_figure", "study_parser", "write_report"]


def study_parser(name: str, doc: str, quick_help: str, full_help: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the shared ``--quick``/``--full`` and ``--out`` options."""
    parser = argparse.ArgumentParser(prog=f"python -m studies.{name}",
                                     description=doc.strip().splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help=quick_help)
    mode.add_argument("--full", action="store_true", help=full_help)
    parser.add_argument("--out", type=Path, default=Path("runs") / name,
                        help=f"output directory (default runs/{name})")
    return parser


def write_report(out: Path, name: str, report: dict[str, Any]) -> Path:
    """Write ``report`` as ``out/<name>.json`` (creating ``out``); returns the path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(report, indent=2))
    return path


def figure(figsize: tuple[float, float] = (6, 4)) -> tuple[Any, Any]:
    """A ``(fig, ax)`` pair drawn with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write (PNG, 120 dpi) and close ``fig``; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
