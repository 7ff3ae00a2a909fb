"""Figures without global state: matplotlib's object API (``Figure``, no ``pyplot``, no
backend switch), written atomically.

Studies and ``structured.train`` draw their PNGs with :func:`figure_grid` and write them
with :func:`save_figure`, so plotting never touches a global figure registry and an
interruption never leaves a torn image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from neuralnum.core.runtime import atomic_write

__all__ = ["figure_grid", "save_figure"]


def figure_grid(rows: int, cols: int, figsize: tuple[float, float]) -> tuple[Figure, Any]:
    """A figure with a ``rows × cols`` grid of axes (a 2-D array of them)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=False)


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 120) -> Path:
    """Lay out ``fig`` and write it to ``path`` (format from its suffix, PNG without one)
    with :func:`~neuralnum.core.runtime.atomic_write`; returns the path."""
    fig.tight_layout()
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, "wb", lambda fh: fig.savefig(fh, dpi=dpi, format=fmt))
