"""Extreme eigenvalues of an operator's normal matrix by Lanczos, through the operator only.

:func:`extreme_eigenvalues` runs Lanczos with full reorthogonalisation on ``M`` (through
``op.normal(p, idx) = M p``) and returns the extreme Ritz values, found by bisection on
the tridiagonal's Sturm sequence — no eigendecomposition of ``A`` or ``M``. GD, Chebyshev
and the column balancing of :class:`~neuralnum.solvers.operators.Operator` use it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["LANCZOS_STEPS", "dot", "extreme_eigenvalues"]

LANCZOS_STEPS = 20  # the most Lanczos steps any spectrum estimate takes


def dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of ``u, v: (k, m)`` → ``(k,)``."""
    return (u * v).sum(dim=1)


def _sturm_count(alpha: torch.Tensor, beta2: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Eigenvalues below ``lam: (B,)`` of the symmetric tridiagonal ``(alpha, β)`` (LDLᵀ
    pivots' signs); ``alpha: (B, k)``, ``beta2: (B, k−1)`` (squared off-diagonal)."""
    tiny = torch.finfo(alpha.dtype).tiny
    pivot = alpha[:, 0] - lam
    count = (pivot < 0).long()
    for i in range(1, alpha.shape[1]):
        safe = torch.where(pivot.abs() > tiny, pivot, torch.full_like(pivot, -tiny))
        pivot = alpha[:, i] - lam - beta2[:, i - 1] / safe
        count += (pivot < 0).long()
    return count


def _bisect(alpha: torch.Tensor, beta2: torch.Tensor, target: int) -> torch.Tensor:
    """The ``target``-th smallest eigenvalue (1-based) of each tridiagonal, by bisection
    on Gershgorin's interval to full precision."""
    off = beta2.sqrt()
    radius = torch.zeros_like(alpha)
    radius[:, 1:] += off
    radius[:, :-1] += off
    lo, hi = (alpha - radius).amin(dim=1), (alpha + radius).amax(dim=1)
    for _ in range(2 + int(-math.log2(torch.finfo(alpha.dtype).eps))):
        mid = (lo + hi) / 2
        below = _sturm_count(alpha, beta2, mid) >= target
        hi, lo = torch.where(below, mid, hi), torch.where(below, lo, mid)
    return (lo + hi) / 2


def extreme_eigenvalues(op: Any, v0: torch.Tensor, steps: int | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(λ_min, λ_max): (B,)`` Ritz estimates of ``M`` restricted to the Krylov space of
    ``v0: (B, d)`` after ``steps`` (default ``min(d, 20)``) Lanczos steps through
    :meth:`Operator.normal` (full reorthogonalisation; a problem whose Krylov space is
    exhausted — ``β ≤ 1e-6·λ_max`` in float64, ``1e-3`` in float32 — stops adding
    dimensions). Starting from ``v0 = −g(0) ∈ range(Aᵀ)`` gives the extreme *non-zero*
    eigenvalues, which is what GD / Chebyshev from ``x₀ = 0`` need."""
    batch, d = v0.shape
    steps = min(d, LANCZOS_STEPS) if steps is None else steps
    cut = 1e-6 if v0.dtype == torch.float64 else 1e-3
    norm = v0.norm(dim=1, keepdim=True)
    q = v0 / torch.where(norm > 0, norm, 1)
    basis, alphas, betas = [q], [], []
    alive = norm[:, 0] > 0  # a zero start (x₀ already solves it) needs no spectrum
    for j in range(steps):
        w = torch.zeros_like(q)
        live = alive.nonzero().squeeze(1)
        if len(live):
            w[live] = op.normal(q[live], live)
        a = dot(q, w)
        for _ in range(2):
            for v in basis:
                w = w - dot(v, w).unsqueeze(1) * v
        beta = w.norm(dim=1)
        scale = torch.stack([*alphas, a], dim=1).abs().amax(dim=1)
        alphas.append(torch.where(alive, a, alphas[0] if alphas else a))
        if j == steps - 1:
            break
        alive = alive & (beta > cut * scale)
        betas.append(torch.where(alive, beta, torch.zeros_like(beta)))
        q = w / torch.where(alive, beta, 1).unsqueeze(1)
        basis.append(q)
    alpha = torch.stack(alphas, dim=1)
    beta2 = (torch.stack(betas, dim=1).pow(2) if betas
             else alpha.new_zeros(batch, 0))
    k = alpha.shape[1]
    return _bisect(alpha, beta2, 1), _bisect(alpha, beta2, k)
