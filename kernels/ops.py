"""The kernels' public entry points: each runs its Triton kernel or its PyTorch reference,
as the dispatcher (:mod:`kernels.dispatch`) chooses. Call these, never a kernel directly."""

from __future__ import annotations

import torch

from kernels.dispatch import current_backend, use_triton
from kernels.long_conv_reference import check_long_conv_args, long_conv_reference
from kernels.monarch_reference import monarch_matmul_reference

__all__ = ["long_conv", "monarch_matmul"]


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
        # optional: triton (Linux x86-64 only), imported when a kernel first runs
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
        # optional: triton (Linux x86-64 only), imported when a kernel first runs
        from kernels.long_conv_triton import long_conv_triton, supports_length

        if supports_length(u.shape[-1]) or current_backend(backend) == "triton":
            return long_conv_triton(u, k, pre_gate, post_gate)
    return long_conv_reference(u, k, pre_gate, post_gate)
