"""Triton kernels with PyTorch references and a dispatcher.

Public entry points (call these, never a kernel directly):

* :func:`monarch_matmul` ``(x, R, L)`` — Monarch multiply ``y = P L Pᵀ R x``.
* :func:`long_conv` ``(u, k, pre_gate=None, post_gate=None)`` — FFT long convolution
  (causal or bidirectional), optionally gated: ``post_gate ⊙ conv(pre_gate ⊙ u, k)``.
* :func:`causal_conv_direct`, :func:`causal_long_conv` ``(u, k)`` — causal convolutions
  that are exactly causal in floating point (:mod:`kernels.causal_conv`).

Backends: the ``backend=`` argument or :func:`use_backend`; see :mod:`kernels.dispatch`.
On the CPU the Monarch reference's second factor (and its re-layouts) runs in small C
kernels compiled on first use (:mod:`kernels.native`; torch where no C compiler is
found, or with ``NEURALNUM_NATIVE=0``).
The Triton modules are imported on the first Triton call (so ``TRITON_INTERPRET=1`` can
be set before).

Layering: ``kernels`` imports nothing of ours; ``neuralnum`` may import ``kernels``;
``structured`` may import ``kernels`` and ``neuralnum``.
"""

from __future__ import annotations

import torch

from kernels.causal_conv import causal_conv_direct, causal_long_conv
from kernels.dispatch import current_backend, env_backend, use_backend, use_triton
from kernels.long_conv_reference import check_long_conv_args, long_conv_reference
from kernels.monarch_reference import monarch_matmul_reference

__all__ = [
    "causal_conv_direct",
    "causal_long_conv",
    "current_backend",
    "env_backend",
    "long_conv",
    "long_conv_reference",
    "monarch_matmul",
    "monarch_matmul_reference",
    "use_backend",
]


def monarch_matmul(x: torch.Tensor, R: torch.Tensor, L: torch.Tensor, *,
                   backend: str | None = None, feature_major: bool = False) -> torch.Tensor:
    """``y = P L Pᵀ R x``; see :mod:`kernels.monarch_reference` for the layout.

    Runs the fused Triton kernel (:mod:`kernels.monarch_triton`) when the dispatcher
    chooses Triton (``backend``: see :mod:`kernels.dispatch`), the two-``bmm`` reference
    otherwise. Differentiable either way. ``y`` is contiguous, or with ``feature_major``
    the ``.T`` of a contiguous ``(s·q, N)`` tensor: free on the reference path, one
    transposing copy after the Triton kernel (which writes row-major).
    """
    if use_triton(x, R, L, backend=backend):
        from kernels.monarch_triton import monarch_matmul_triton

        y = monarch_matmul_triton(x, R, L)
        return _feature_major(y) if feature_major else y
    return monarch_matmul_reference(x, R, L, feature_major=feature_major)


def _feature_major(y: torch.Tensor) -> torch.Tensor:
    """``y: (..., F)`` with the same values, as the ``.T`` of a contiguous ``(F, N)``."""
    y2 = y.reshape(-1, y.shape[-1])
    return y2.T.contiguous().T.reshape(y.shape)


def long_conv(u: torch.Tensor, k: torch.Tensor, pre_gate: torch.Tensor | None = None,
              post_gate: torch.Tensor | None = None, *,
              backend: str | None = None) -> torch.Tensor:
    """``post_gate ⊙ conv(pre_gate ⊙ u, k)``; see :mod:`kernels.long_conv_reference`.

    ``u: (B, H, L)``, ``k: (H, L)`` causal or ``(H, 2L)`` bidirectional, gates ``(B, H, L)``
    or ``None``. Runs the Monarch-DFT Triton kernel (:mod:`kernels.long_conv_triton`) when
    the dispatcher chooses Triton (``backend``: see :mod:`kernels.dispatch`) and ``L`` is
    a power of two in ``[256, 65536]``; other lengths fall back to the reference under
    ``"auto"`` and raise ``ValueError`` when ``"triton"`` is forced. Differentiable in all inputs.
    """
    check_long_conv_args(u, k, pre_gate, post_gate)
    gates = [g for g in (pre_gate, post_gate) if g is not None]
    if use_triton(u, k, *gates, backend=backend):
        from kernels.long_conv_triton import long_conv_triton, supports_length

        if supports_length(u.shape[-1]) or current_backend(backend) == "triton":
            return long_conv_triton(u, k, pre_gate, post_gate)
    return long_conv_reference(u, k, pre_gate, post_gate)
