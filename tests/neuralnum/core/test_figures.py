"""neuralnum.core.figures: save_figure writes atomically, through runtime.atomic_write."""

from __future__ import annotations

import io
import os

import pytest
from matplotlib.figure import Figure

from neuralnum.core.figures import figure_grid, save_figure


def _figure() -> Figure:
    fig, axes = figure_grid(1, 2, (4, 2))
    axes[0, 0].plot([1, 2, 3], [3, 1, 2])
    axes[0, 1].set_title("Σ a²")
    return fig


def test_save_figure_writes_what_savefig_writes_with_open_s_permissions(tmp_path):
    path = save_figure(_figure(), tmp_path / "deep" / "fig.png", dpi=50)
    fig, buffer = _figure(), io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, dpi=50, format="png")
    assert path.read_bytes() == buffer.getvalue()
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert sorted(os.listdir(path.parent)) == ["fig.png"]


def test_interrupted_save_figure_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = save_figure(_figure(), tmp_path / "fig.png", dpi=30)
    before = path.read_bytes()

    def interrupted(self, fh, *args, **kwargs):
        fh.write(b"\x89PNG half an image")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_figure(_figure(), path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["fig.png"]
