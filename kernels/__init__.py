"""Triton kernels with PyTorch references and a dispatcher.

Public entry points (call these, never a kernel directly):

* :func:`monarch_matmul` ``(x, R, L)`` — Monarch multiply ``y = P L Pᵀ R x``.
* :func:`long_conv` ``(u, k)`` — FFT long convolution (causal or bidirectional).

Backends: see :mod:`kernels.dispatch`. This package imports nothing else of ours.
"""

from kernels.dispatch import current_backend, use_backend
from kernels.long_conv_reference import long_conv_reference
from kernels.monarch_reference import monarch_matmul_reference

__all__ = [
    "current_backend",
    "long_conv",
    "long_conv_reference",
    "monarch_matmul",
    "monarch_matmul_reference",
    "use_backend",
]


def monarch_matmul(x, R, L):  # Triton path added by the kernels issue
    """``y = P L Pᵀ R x``; see :mod:`kernels.monarch_reference` for the layout."""
    return monarch_matmul_reference(x, R, L)


def long_conv(u, k):  # Triton path added by the kernels issue
    """FFT long convolution; see :mod:`kernels.long_conv_reference`."""
    return long_conv_reference(u, k)
