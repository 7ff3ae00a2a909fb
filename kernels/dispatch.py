"""Backend choice for every kernel: Triton on CUDA tensors, the PyTorch reference elsewhere.

``use_backend("reference" | "triton" | "auto")`` overrides the choice inside a ``with``
block (tests force ``"triton"`` on CPU under ``TRITON_INTERPRET=1``). The environment
variable ``NEURALNUM_KERNELS`` sets the process-wide default.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = ["BACKENDS", "current_backend", "use_backend", "use_triton"]

BACKENDS = ("auto", "reference", "triton")
_override: list[str] = []


def _validated(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; choose one of {BACKENDS}")
    return backend


def current_backend() -> str:
    """The backend in force: the innermost :func:`use_backend`, else the env default."""
    if _override:
        return _override[-1]
    return _validated(os.environ.get("NEURALNUM_KERNELS", "auto"))


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Force ``backend`` for kernel calls inside the ``with`` block."""
    _override.append(_validated(backend))
    try:
        yield
    finally:
        _override.pop()


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether a kernel call on ``tensors`` should run the Triton implementation."""
    backend = current_backend()
    if backend == "auto":
        return all(t.is_cuda for t in tensors)
    return backend == "triton"
