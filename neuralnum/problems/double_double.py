"""Double-double (≈ 106-bit) ground truth for ``A v``, ``r = A x − b`` and ``g = Aᵀ r``.

The judge of the learned products and GD steps at any shape (the mpmath SVD of
:mod:`neuralnum.problems.reference` judges solutions; this judges products, fast enough for
``A`` of 10⁸ entries).

Products are split exactly (Dekker/Veltkamp ``two_product``) and summed by a pairwise tree
of double-double additions, so a result ``(hi, lo)`` has an absolute error of about
``⌈log₂ k⌉·2⁻¹⁰⁴·Σ|terms|`` for a sum of ``k`` terms — far below float64 roundoff at any
shape used here. An error is judged as ``(ŷ − hi) − lo``. float32 inputs are widened to
float64 exactly. Inputs are numpy arrays or CPU tensors; outputs numpy float64.
"""

from __future__ import annotations

import numpy as np
import torch

from neuralnum.core.validation import to_numpy

__all__ = ["dd_matvec", "dd_step", "error", "two_product", "two_sum"]

_SPLIT = 2.0**27 + 1
DD = tuple[np.ndarray, np.ndarray]


def _array(t: np.ndarray | torch.Tensor) -> np.ndarray:
    """``t`` (any shape) as a float64 NumPy array, widened exactly."""
    return np.asarray(to_numpy(t), dtype=np.float64)


def two_sum(a: np.ndarray, b: np.ndarray) -> DD:
    """``a + b = s + e`` exactly (Knuth)."""
    s = a + b
    v = s - a
    return s, (a - (s - v)) + (b - v)


def two_product(a: np.ndarray, b: np.ndarray) -> DD:
    """``a·b = p + e`` exactly (Dekker; entries below ~1e290 in magnitude)."""
    p = a * b

    def split(t: np.ndarray) -> DD:
        c = _SPLIT * t
        high = c - (c - t)
        return high, t - high

    a1, a2 = split(a)
    b1, b2 = split(b)
    return p, a2 * b2 - (((p - a1 * b1) - a2 * b1) - a1 * b2)


def _dd_add(x: DD, y: DD) -> DD:
    s, e = two_sum(x[0], y[0])
    e = e + (x[1] + y[1])
    hi = s + e
    return hi, e - (hi - s)


def _dd_sum(hi: np.ndarray, lo: np.ndarray) -> DD:
    """Pairwise double-double sum over the last axis."""
    while hi.shape[-1] > 1:
        if hi.shape[-1] % 2:
            pad = [(0, 0)] * (hi.ndim - 1) + [(0, 1)]
            hi, lo = np.pad(hi, pad), np.pad(lo, pad)
        hi, lo = _dd_add((hi[..., 0::2], lo[..., 0::2]), (hi[..., 1::2], lo[..., 1::2]))
    return hi[..., 0], lo[..., 0]


def dd_matvec(A: np.ndarray | torch.Tensor, v: DD | np.ndarray | torch.Tensor,
              minus: DD | np.ndarray | torch.Tensor | None = None, chunk: int = 2**22) -> DD:
    """``Σ_j A[..., i, j] v[..., j] − minus[..., i]`` as ``(hi, lo)``, ``(..., n)``.

    ``A: (..., n, d)``; ``v: (..., d)`` or a double-double pair (its low part multiplied in
    float64: error ``u·|A||v_lo|``, negligible); ``minus``: ``(..., n)`` or a pair.
    Processed in row blocks of about ``chunk`` entries."""
    A = _array(A)
    v_hi, v_lo = (_array(v[0]), _array(v[1])) if isinstance(v, tuple) else (_array(v), None)
    rows = max(1, chunk // max(1, A.shape[-1] * int(np.prod(A.shape[:-2]))))
    parts = []
    for start in range(0, A.shape[-2], rows):
        block = A[..., start:start + rows, :]
        hi, lo = two_product(block, v_hi[..., None, :])
        if v_lo is not None:
            lo = lo + block * v_lo[..., None, :]
        parts.append(_dd_sum(hi, lo))
    hi, lo = np.concatenate([p[0] for p in parts], -1), np.concatenate([p[1] for p in parts], -1)
    if minus is None:
        return hi, lo
    m_hi, m_lo = ((_array(minus[0]), _array(minus[1])) if isinstance(minus, tuple)
                  else (_array(minus), np.zeros_like(hi)))
    return _dd_add((hi, lo), (-m_hi, -m_lo))


def dd_step(A: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor,
            x: np.ndarray | torch.Tensor) -> tuple[DD, DD]:
    """``(r = A x − b, g = Aᵀ r)`` as double-double pairs, ``(B, n)`` and ``(B, d)``."""
    A = _array(A)
    r = dd_matvec(A, x, b)
    return r, dd_matvec(np.swapaxes(A, -1, -2), r)


def error(estimate: np.ndarray | torch.Tensor, truth: DD) -> np.ndarray:
    """``estimate − truth`` in float64: ``(ŷ − hi) − lo`` (ŷ − hi is exact when close)."""
    return (_array(estimate) - truth[0]) - truth[1]
