"""Backend choice for every kernel: Triton on CUDA tensors, the PyTorch reference elsewhere.

Three ways to choose, most explicit first:

* the ``backend=`` argument of a dispatcher (:func:`kernels.long_conv`,
  :func:`kernels.monarch_matmul`): ``"auto"``, ``"reference"`` or ``"triton"``;
* the one context manager ``with use_backend(...)``, for every kernel call inside the
  block that passes no ``backend=`` (layers deep in a model; tests force ``"triton"`` on
  CPU under ``TRITON_INTERPRET=1``). It is a :class:`contextvars.ContextVar`, so it is
  local to its thread / task and restored on exit;
* ``"auto"`` otherwise.

The environment variable ``NEURALNUM_KERNELS`` is *not* read here: command-line entry
points read it once through :func:`env_backend` and enter ``use_backend`` with it.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Mapping

import torch

__all__ = ["BACKENDS", "ENV_VAR", "current_backend", "env_backend", "use_backend",
           "use_triton"]

BACKENDS = ("auto", "reference", "triton")
#: The environment variable a command-line entry point reads for its default backend.
ENV_VAR = "NEURALNUM_KERNELS"
_BACKEND: contextvars.ContextVar[str] = contextvars.ContextVar("kernel_backend",
                                                               default="auto")


def _validated(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; choose one of {BACKENDS}")
    return backend


def current_backend(backend: str | None = None) -> str:
    """``backend`` if given (validated), else the innermost :func:`use_backend`, else
    ``"auto"``."""
    return _BACKEND.get() if backend is None else _validated(backend)


def env_backend(environ: Mapping[str, str] = os.environ) -> str:
    """The backend named by ``NEURALNUM_KERNELS`` in ``environ`` (``"auto"`` when unset);
    for command-line entry points only."""
    return _validated(environ.get(ENV_VAR, "auto"))


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Use ``backend`` for kernel calls inside the ``with`` block that pass no ``backend=``."""
    token = _BACKEND.set(_validated(backend))
    try:
        yield
    finally:
        _BACKEND.reset(token)


def use_triton(*tensors: torch.Tensor, backend: str | None = None) -> bool:
    """Whether a kernel call on ``tensors`` should run the Triton implementation."""
    backend = current_backend(backend)
    if backend == "auto":
        return all(t.is_cuda for t in tensors)
    return backend == "triton"
