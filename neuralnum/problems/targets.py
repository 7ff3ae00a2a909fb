"""Gradient-descent iterates on ``f(x) = ½‖Ax − b‖²`` as composable batched targets.

* Step-size rules map a problem batch to ``η: (B,)``: :class:`FixedStep`,
  :class:`InverseLipschitzStep` (``1/σ_max²``), :class:`OptimalStep`
  (``2/(σ_max² + σ_min²)``).
* :class:`GDStep` ``(A, b, x) -> x − η Aᵀ(Ax − b)``; :class:`GDSteps` applies it ``k``
  times; :meth:`GDSteps.trajectory` returns every iterate.
* :func:`contraction_factor` is the exact per-step error contraction
  ``max_i |1 − η σ_i²|`` over the non-zero singular values, so
  ``‖x_k − x*‖ ≤ ρ^k ‖x_0 − x*‖`` for ``x_0`` in the row space plus ``x*``.

Shapes: ``A: (B, n, d)``, ``b: (B, n)``, ``x: (B, d)``; float32 or float64 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from neuralnum.core.validation import check_problem

__all__ = [
    "FixedStep",
    "GDStep",
    "GDSteps",
    "InverseLipschitzStep",
    "OptimalStep",
    "StepSizeRule",
    "contraction_factor",
    "gradient",
]


def gradient(A: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``Aᵀ(Ax − b)``: the gradient of ``½‖Ax − b‖²``, shape ``(B, d)``."""
    residual = torch.einsum("bnd,bd->bn", A, x) - b
    return torch.einsum("bnd,bn->bd", A, residual)


def _singular_values(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values ``s: (B, min(n, d))`` (descending) of ``A: (B, n, d)`` and the mask
    of those above the numerical-rank cutoff ``σ_max·max(n, d)·eps``."""
    s = torch.linalg.svdvals(A)
    return s, s > s[:, :1] * max(A.shape[1:]) * torch.finfo(A.dtype).eps


def _extreme_singular_values(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s, kept = _singular_values(A)
    smin = torch.where(kept, s, torch.full_like(s, float("inf"))).amin(dim=1)
    return s[:, 0], smin


class StepSizeRule(Protocol):
    def __call__(self, A: torch.Tensor) -> torch.Tensor:
        """Step sizes ``η: (B,)`` for the problem batch ``A: (B, n, d)``."""
        ...


@dataclass(frozen=True)
class FixedStep:
    """The same ``eta`` for every problem."""

    eta: float

    def __post_init__(self) -> None:
        if not self.eta > 0:
            raise ValueError(f"eta must be > 0, got {self.eta}")

    def __call__(self, A: torch.Tensor) -> torch.Tensor:
        return torch.full((A.shape[0],), self.eta, dtype=A.dtype, device=A.device)


@dataclass(frozen=True)
class InverseLipschitzStep:
    """``η = 1/σ_max(A)²``: monotone descent, contraction ``1 − 1/κ²``."""

    def __call__(self, A: torch.Tensor) -> torch.Tensor:
        smax, _ = _extreme_singular_values(A)
        return smax.pow(-2)


@dataclass(frozen=True)
class OptimalStep:
    """``η = 2/(σ_max² + σ_min²)``: the best fixed step, contraction ``(κ²−1)/(κ²+1)``.

    ``σ_min`` is the smallest *non-zero* singular value (rank-deficient problems converge
    to the minimum-norm solution from ``x_0 = 0``).
    """

    def __call__(self, A: torch.Tensor) -> torch.Tensor:
        smax, smin = _extreme_singular_values(A)
        return 2.0 / (smax.pow(2) + smin.pow(2))


def _as_rule(step: StepSizeRule | float) -> StepSizeRule:
    return FixedStep(float(step)) if isinstance(step, int | float) else step


@dataclass(frozen=True)
class GDStep:
    """One gradient-descent step ``x⁺ = x − η Aᵀ(Ax − b)`` with ``η`` from ``step``."""

    step: StepSizeRule | float = OptimalStep()

    def eta(self, A: torch.Tensor) -> torch.Tensor:
        return _as_rule(self.step)(A)

    def __call__(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        check_problem(A, b, x)
        return x - self.eta(A).unsqueeze(1) * gradient(A, b, x)


@dataclass(frozen=True)
class GDSteps:
    """``k`` GD steps with a step size fixed per problem (computed once from ``A``)."""

    k: int
    step: StepSizeRule | float = OptimalStep()

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"k must be >= 0, got {self.k}")

    def trajectory(
        self, A: torch.Tensor, b: torch.Tensor, x0: torch.Tensor | None = None
    ) -> torch.Tensor:
        """All iterates ``x_0 … x_k`` stacked: ``(k + 1, B, d)``; ``x0`` defaults to 0."""
        if x0 is None:
            x0 = A.new_zeros(A.shape[0], A.shape[2])
        check_problem(A, b, x0)
        eta = _as_rule(self.step)(A).unsqueeze(1)
        iterates = [x0]
        for _ in range(self.k):
            x = iterates[-1]
            iterates.append(x - eta * gradient(A, b, x))
        return torch.stack(iterates)

    def __call__(
        self, A: torch.Tensor, b: torch.Tensor, x0: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.trajectory(A, b, x0)[-1]


def contraction_factor(A: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """Exact per-step error contraction ``ρ = max_i |1 − η σ_i²|`` over non-zero ``σ_i``.

    ``A: (B, n, d)``, ``eta: (B,)`` → ``ρ: (B,)``. GD converges iff ``ρ < 1``.
    """
    s, kept = _singular_values(A)
    factors = (1 - eta.unsqueeze(1) * s.pow(2)).abs()
    return torch.where(kept, factors, torch.zeros_like(factors)).amax(dim=1)
