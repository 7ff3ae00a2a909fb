"""Triton kernels with PyTorch references and a dispatcher.

Public entry points (:mod:`kernels.ops`; call these, never a kernel directly):

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

from kernels.causal_conv import causal_conv_direct, causal_long_conv
from kernels.dispatch import current_backend, env_backend, use_backend
from kernels.long_conv_reference import long_conv_reference
from kernels.monarch_reference import monarch_matmul_reference
from kernels.ops import long_conv, monarch_matmul

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
