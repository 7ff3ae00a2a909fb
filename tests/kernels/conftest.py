"""Kernel tests run the Triton code on CPU through Triton's interpreter.

Triton chooses compiled vs interpreted when a kernel is *decorated*, from
``TRITON_INTERPRET``; :mod:`kernels` imports its Triton modules lazily, so setting the
variable here (before any test in this folder imports them) is enough.
``test_dispatch.py::test_triton_modules_run_interpreted`` checks that it took effect.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64 (norm-wise relative error)."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.fixture
def rel_err():
    return relative_error


@pytest.fixture(params=[torch.float32, torch.float64], ids=["fp32", "fp64"])
def dtype(request):
    return request.param
