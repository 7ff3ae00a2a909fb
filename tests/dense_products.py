"""Test helpers for LSQR / CGLS: exact dense products, and the judges of accuracy.

:class:`DenseProducts` is the :class:`~neuralnum.solvers.ls_driver.Products` of a dense
batch (no equilibration, so iterates compare directly with scipy's); the κ = 1e4 family,
its mpmath reference and CG on the normal equations judge accuracy. ``numpy.linalg`` and
mpmath appear only here, as judges.
"""

from __future__ import annotations

import mpmath
import numpy as np
import torch
from torch import Tensor

_FLOATS = (torch.float32, torch.float64)


class DenseProducts:
    """Exact products with a dense batch of matrices, counting calls per problem.

    Parameters
    ----------
    A : Tensor
        ``(B, n, d)``, float32 or float64; products run on ``A.device``.
    """

    def __init__(self, A: Tensor) -> None:
        if not isinstance(A, Tensor) or A.dim() != 3:
            raise ValueError("DenseProducts needs a (B, n, d) tensor")
        if A.dtype not in _FLOATS:
            raise TypeError(f"DenseProducts needs float32 or float64, got {A.dtype}")
        self.A = A
        self.batch, self.n, self.d = A.shape
        self.dtype = A.dtype
        self.device = A.device
        self.calls = torch.zeros(self.batch, dtype=torch.long, device=A.device)

    def matvec(self, v: Tensor, idx: Tensor) -> Tensor:
        """Return ``A[idx] v`` of shape ``(k, n)`` for ``v`` of shape ``(k, d)``."""
        self.calls.index_add_(0, idx, torch.ones_like(idx))
        return torch.bmm(self.A[idx], v.unsqueeze(-1)).squeeze(-1)

    def rmatvec(self, u: Tensor, idx: Tensor) -> Tensor:
        """Return ``A[idx]^T u`` of shape ``(k, d)`` for ``u`` of shape ``(k, n)``."""
        self.calls.index_add_(0, idx, torch.ones_like(idx))
        return torch.bmm(self.A[idx].transpose(1, 2), u.unsqueeze(-1)).squeeze(-1)


def family(count: int, seed: int = 0, kappa: float = 1e4) -> tuple[np.ndarray, np.ndarray]:
    """Return ``A`` (count, 20, 5) with cond ``kappa`` and consistent ``b`` (count, 20)."""
    rng = np.random.default_rng(seed)
    mats, rhs = [], []
    for _ in range(count):
        u, _ = np.linalg.qr(rng.standard_normal((20, 5)))
        v, _ = np.linalg.qr(rng.standard_normal((5, 5)))
        a = (u * np.logspace(0, -np.log10(kappa), 5)) @ v.T
        mats.append(a)
        rhs.append(a @ rng.standard_normal(5))
    return np.array(mats), np.array(rhs)


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact LS solution of the float64 data, via 60-digit normal equations (judge only)."""
    with mpmath.workdps(60):
        am, bm = mpmath.matrix(a.tolist()), mpmath.matrix(b.tolist())
        x = mpmath.lu_solve(am.T * am, am.T * bm)
        return np.array([float(t) for t in x])


def cg_normal(a: np.ndarray, b: np.ndarray, iters: int = 60) -> np.ndarray:
    """Textbook CG on A^T A x = A^T b, recurring the normal-equation residual (no early stop)."""
    x = np.zeros(a.shape[1])
    s = a.T @ b
    p = s.copy()
    gamma = s @ s
    for _ in range(iters):
        if gamma == 0:
            break
        q = a.T @ (a @ p)
        alpha = gamma / (p @ q)
        x = x + alpha * p
        s = s - alpha * q
        gamma, old = s @ s, gamma
        p = s + gamma / old * p
    return x


def digits(x: np.ndarray, ref: np.ndarray) -> float:
    """``-log10`` of the relative 2-norm error."""
    return float(-np.log10(max(np.linalg.norm(x - ref) / np.linalg.norm(ref), 1e-17)))
