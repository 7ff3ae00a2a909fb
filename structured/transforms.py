"""Exact Monarch factorisations of classical transforms (expressiveness of the layout).

All in the project's layout ``M[a·q + i, j·p + c] = L[i, a, j] · R[j, i, c]``:

* :func:`kronecker_monarch` — ``A ⊗ B`` is Monarch with ``L[i, a, j] = A[a, j]`` and
  ``R[j, i, c] = B[i, c]``; hence :func:`hadamard_monarch`, the Sylvester
  Walsh–Hadamard ``H_n = H_{n2} ⊗ H_{n1}`` (entries ±1, as ``scipy.linalg.hadamard``).
* :func:`dft_monarch` — Cooley–Tukey: with ``n = n1·n2``, ``F_n = M · Π`` where ``Π``
  is the stride permutation :func:`stride_permute` (``x.reshape(n1, n2).T``) and ``M`` is
  Monarch with ``k = s = n2``, ``p = q = n1``:
  ``R[j, i, c] = ω_{n1}^{i c} · ω_n^{i j}`` (size-``n1`` DFTs times the twiddles),
  ``L[i, a, j] = ω_{n2}^{a j}`` (size-``n2`` DFTs), ``ω_m = exp(−2πi/m)``.
* :func:`circulant_monarch` — a circular convolution is a product ``A Bᴴ`` of two
  Monarch matrices (the MM* class of Dao et al.): ``F_n`` is symmetric, so
  ``C = F⁻¹ diag(F h) F = (1/n) conj(F) diag(F h) F = conj(M) diag(Π F h / n) Mᵀ``.

Complex factors use complex64/complex128; real ones float32/float64.
"""

from __future__ import annotations

import math

import torch

from neuralnum.core.validation import check_positive_int
from structured.monarch import MonarchMatrix

__all__ = [
    "circulant_monarch",
    "dft_monarch",
    "hadamard_monarch",
    "kronecker_monarch",
    "stride_permute",
]

_COMPLEX = (torch.complex64, torch.complex128)
_REAL = (torch.float32, torch.float64)


def _split(n: int, n1: int) -> int:
    check_positive_int(n, "n")
    if check_positive_int(n1, "n1") > n or n % n1:
        raise ValueError(f"n1 must be a positive divisor of n={n}, got {n1!r}")
    return n // n1


def stride_permute(x: torch.Tensor, n1: int) -> torch.Tensor:
    """``Π x``: ``x: (..., n)`` viewed as ``(n1, n/n1)``, transposed, flattened."""
    n2 = _split(x.shape[-1], n1)
    return x.reshape(*x.shape[:-1], n1, n2).transpose(-1, -2).reshape(x.shape)


def kronecker_monarch(A: torch.Tensor, B: torch.Tensor) -> MonarchMatrix:
    """``A ⊗ B`` as a Monarch matrix; ``A: (s, k)``, ``B: (q, p)`` of one dtype."""
    if A.ndim != 2 or B.ndim != 2:
        raise ValueError(f"A and B must be 2-D, got shapes {tuple(A.shape)}, {tuple(B.shape)}")
    (s, k), (q, p) = A.shape, B.shape
    L = A.expand(q, s, k).contiguous()                 # L[i, a, j] = A[a, j]
    R = B.expand(k, q, p).contiguous()                 # R[j, i, c] = B[i, c]
    return MonarchMatrix(R, L)


def _sylvester(m: int, dtype: torch.dtype) -> torch.Tensor:
    H = torch.ones(1, 1, dtype=dtype)
    while H.shape[0] < m:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def hadamard_monarch(n: int, n1: int, dtype: torch.dtype = torch.float64) -> MonarchMatrix:
    """Sylvester Walsh–Hadamard ``H_n = H_{n/n1} ⊗ H_{n1}``; ``n``, ``n1`` powers of two."""
    n2 = _split(n, n1)
    if n & (n - 1) or n1 & (n1 - 1):
        raise ValueError(f"n={n} and n1={n1} must be powers of two")
    if dtype not in _REAL:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return kronecker_monarch(_sylvester(n2, dtype), _sylvester(n1, dtype))


def _omega(m: int, exponent: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``exp(−2πi · exponent / m)`` with the exponent reduced mod ``m`` (exact arguments)."""
    angle = (-2 * math.pi / m) * torch.remainder(exponent, m).to(torch.float64)
    return torch.polar(torch.ones_like(angle), angle).to(dtype)


def dft_monarch(n: int, n1: int, dtype: torch.dtype = torch.complex128) -> MonarchMatrix:
    """``M`` with ``F_n = M Π`` (so ``torch.fft.fft(x) = M @ stride_permute(x, n1)``).

    ``F_n[u, v] = exp(−2πi·u·v/n)``; ``M: (n, n)`` with ``k = s = n/n1``, ``p = q = n1``.
    """
    n2 = _split(n, n1)
    if dtype not in _COMPLEX:
        raise TypeError(f"dtype must be complex64 or complex128, got {dtype}")
    j = torch.arange(n2).view(n2, 1, 1)
    i = torch.arange(n1).view(1, n1, 1)
    c = torch.arange(n1).view(1, 1, n1)
    R = _omega(n, n2 * i * c + i * j, dtype)          # (k=n2, q=n1, p=n1): ω_{n1}^{ic}·ω_n^{ij}
    a = torch.arange(n2).view(1, n2, 1)
    jj = torch.arange(n2).view(1, 1, n2)
    L = _omega(n2, a * jj, dtype).expand(n1, n2, n2).contiguous()   # (q=n1, s=n2, k=n2)
    return MonarchMatrix(R, L)


def circulant_monarch(h: torch.Tensor, n1: int) -> tuple[MonarchMatrix, MonarchMatrix]:
    """``(A, B)`` with ``A Bᴴ = C``, the circulant of ``h``: ``(C x)[u] = Σ_v h[(u−v) mod n] x[v]``.

    ``h: (n,)`` real or complex (float32 → complex64, float64 → complex128). Apply as
    ``A @ B.adjoint_matmul(x)`` (four Monarch multiplies' worth of real products each).
    """
    if not isinstance(h, torch.Tensor) or h.ndim != 1:
        raise ValueError(f"h must be a 1-D tensor, got {getattr(h, 'shape', type(h))}")
    if h.dtype not in _REAL + _COMPLEX:
        raise TypeError(f"h.dtype must be float32/float64/complex64/complex128, got {h.dtype}")
    if not torch.isfinite(h).all():
        raise ValueError("h contains NaN or Inf")
    n = h.shape[0]
    dtype = h.dtype if h.is_complex() else {torch.float32: torch.complex64,
                                            torch.float64: torch.complex128}[h.dtype]
    M = dft_monarch(n, n1, dtype)
    eig = M @ stride_permute(h.to(dtype), n1)                  # F h, computed by the Monarch
    weight = stride_permute(eig, n1) / n                       # Π F h / n, scales M's columns
    b = M.blocks
    B = MonarchMatrix(M.R.conj(), M.L.conj())
    A = MonarchMatrix(B.R * weight.reshape(b.k, 1, b.p), B.L)
    return A, B
