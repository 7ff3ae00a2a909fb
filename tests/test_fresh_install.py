"""A fresh install carries what the package needs at run time.

The project is built into a wheel from a copy of its sources and installed into a new
virtual environment (``--system-site-packages`` for torch and the other dependencies, so
nothing is downloaded); from a directory outside the checkout, the installed package must
be the one imported, ``neuralnum.lstsq(A, b, solver="learned")`` must solve with the
shipped weights (package data) in float32 and float64, the native Monarch kernels must
build from the installed sources wherever they build from the checkout's, and the
``neuralnum`` console script must run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kernels.native import native_status

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "neuralnum", "structured", "kernels", "studies")

CHECK = textwrap.dedent("""
    import json, sys
    import numpy as np
    import neuralnum
    from kernels.native import native_status
    rng = np.random.default_rng(0)
    errors = {}
    for dtype in ("float32", "float64"):
        for n, d in ((60, 7), (7, 60), (25, 25)):
            A, b = rng.standard_normal((n, d)), rng.standard_normal(n)
            x = neuralnum.lstsq(A.astype(dtype), b.astype(dtype), solver="learned").x
            want = np.linalg.lstsq(A, b, rcond=None)[0]
            errors[f"{dtype} {n}x{d}"] = float(np.abs(x - want).max() / np.abs(want).max())
    print(json.dumps({"file": neuralnum.__file__, "errors": errors,
                      "native": native_status()}))
""")


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_a_wheel_installs_and_solves_with_the_shipped_weights(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools")
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, source / name)
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", tmp_path / "dist", source, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("neuralnum-*.whl")
    _run(sys.executable, "-m", "venv", "--system-site-packages", tmp_path / "venv",
         cwd=tmp_path)
    bin_dir = tmp_path / "venv" / "bin"
    _run(bin_dir / "python", "-m", "pip", "install", "-q", "--no-deps", wheel, cwd=tmp_path)
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {**os.environ, "NEURALNUM_CACHE": str(tmp_path / "cache")}
    env.pop("PYTHONPATH", None)
    report = json.loads(_run(bin_dir / "python", "-c", CHECK, cwd=away, env=env))
    assert Path(report["file"]).is_relative_to(tmp_path / "venv")
    for case, error in report["errors"].items():
        assert error < (1e-4 if case.startswith("float32") else 1e-12), (case, error)
    if native_status().startswith("native"):
        assert report["native"].startswith("native"), report["native"]
    assert "solve" in _run(bin_dir / "neuralnum", "--help", cwd=away, env=env)
