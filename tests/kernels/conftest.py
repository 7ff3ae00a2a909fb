"""Kernel tests run the Triton code on CPU through Triton's interpreter.

Triton chooses compiled vs interpreted when a kernel is *decorated*, from
``TRITON_INTERPRET``; :mod:`kernels` imports its Triton modules lazily, so setting the
variable here (before any test in this folder imports them) is enough.
``test_dispatch.py::test_triton_modules_run_interpreted`` checks that it took effect.

Two helpers every Triton test uses:

* :func:`triton_backend` — the ONE place that selects the Triton backend (adapt it here
  when the dispatcher's API changes);
* the ``launches`` fixture — counts the launches of every ``@triton.jit`` kernel of
  ``kernels.monarch_triton`` and ``kernels.long_conv_triton`` (with the tile sizes each
  launch ran with), so a test proves that the kernel ran instead of a PyTorch fallback.
"""

import contextlib
import importlib
import os
from collections import Counter

os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
TRITON_MODULES = ("kernels.monarch_triton", "kernels.long_conv_triton")


@contextlib.contextmanager
def triton_backend():
    """Run the public entry points (``kernels.monarch_matmul``, ``kernels.long_conv``,
    and everything built on them) on the Triton kernels inside the ``with`` block."""
    from kernels import use_backend

    with use_backend("triton"):
        yield


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 (norm-wise relative error)."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


class Launches:
    """Launch counts per kernel name, and the ``BLOCK_*`` meta-parameters of each launch."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.blocks: list[tuple[str, dict]] = []

    def reset(self) -> None:
        self.count.clear()
        self.blocks.clear()


def _kernels(module):
    """``(name, launchable)`` for every ``@triton.jit`` kernel (autotuned or not) of
    ``module``; the launchable is the interpreted function whose ``run`` a launch calls."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.interpreter import InterpretedFunction

    for name, obj in vars(module).items():
        inner = obj.fn if isinstance(obj, Autotuner) else obj
        if isinstance(inner, InterpretedFunction) and name.endswith("_kernel"):
            yield name, inner


@pytest.fixture
def launches(monkeypatch) -> Launches:
    """Record every kernel launch made while the test runs (see :class:`Launches`)."""
    record = Launches()
    found = 0
    for module_name in TRITON_MODULES:
        for name, fn in _kernels(importlib.import_module(module_name)):
            found += 1

            def run(*args, _name=name, _run=fn.run, **kwargs):
                record.count[_name] += 1
                record.blocks.append((_name, {k: v for k, v in kwargs.items()
                                              if k.startswith("BLOCK")}))
                return _run(*args, **kwargs)

            monkeypatch.setattr(fn, "run", run)
    assert found >= 6, "the launch hook found too few Triton kernels"
    return record


@pytest.fixture
def rel_err():
    return relative_error


@pytest.fixture(params=[torch.float32, torch.float64], ids=["fp32", "fp64"])
def dtype(request):
    return request.param
