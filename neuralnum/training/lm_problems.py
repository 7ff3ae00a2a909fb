"""The least-squares problems Levenberg–Marquardt works on: residuals of a flat float64
parameter vector ``θ: (p,)`` and their linearisation.

* :class:`LeastSquaresProblem` — the protocol: residuals ``r(θ): (m,)``, Jacobian row
  blocks, matrix-free ``J v`` / ``Jᵀ u`` and the curvature ``d²/dt² r(θ + t v)``;
* :class:`FunctionalProblem` — any pure ``residuals(θ) -> (m,)``; Jacobian rows by
  ``torch.func.jacrev`` in chunks;
* :class:`PerSampleProblem` — residuals independent per sample,
  ``residual(θ, *sample_i) -> (k,)``: the Jacobian of a chunk of samples is
  ``vmap(jacrev(residual))``, ``k`` backward passes per sample instead of ``k·B`` per chunk;
* :func:`normal_matrix` — ``(JᵀJ, Jᵀr)`` accumulated per row block;
  :func:`numerical_rank` — the rank of ``J`` and the condition number of ``JᵀJ``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch
from torch.func import jacfwd, jacrev, jvp, vjp, vmap

__all__ = ["FunctionalProblem", "LeastSquaresProblem", "PerSampleProblem", "normal_matrix",
           "numerical_rank"]


class LeastSquaresProblem(Protocol):
    """Residuals of a flat float64 parameter vector and their linearisation."""

    def residuals(self, theta: torch.Tensor) -> torch.Tensor:
        """``r(θ): (m,)`` float64 (the true residuals: evaluated in the model's dtype)."""
        ...

    def jacobian_blocks(self, theta: torch.Tensor) -> Iterator[torch.Tensor]:
        """Row blocks of ``J: (m, p)`` float64, top to bottom."""
        ...

    def jvp(self, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``J v: (m,)`` for ``v: (p,)``."""
        ...

    def vjp(self, theta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``Jᵀ u: (p,)`` for ``u: (m,)``."""
        ...

    def curvature(self, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``d²/dt² r(θ + t v)`` at ``t = 0``: ``(m,)`` (for geodesic acceleration)."""
        ...


class FunctionalProblem:
    """A pure ``residuals(θ) -> (m,)``; ``linearise`` (default: the same function) is
    what is differentiated, e.g. a float64 copy of a float32 model. ``chunk``: Jacobian
    rows per ``jacrev`` block (bounds memory to ``chunk × p``); ``forward``: take the
    Jacobian in forward mode instead (``jacfwd``: ``p`` passes, the cheaper way when there
    are far fewer parameters than residuals)."""

    def __init__(self, residuals: Callable[[torch.Tensor], torch.Tensor],
                 linearise: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 chunk: int = 512, forward: bool = False):
        self._residuals = residuals
        self._linearise = linearise or residuals
        self.chunk = chunk
        self.forward = forward

    def residuals(self, theta: torch.Tensor) -> torch.Tensor:
        return self._residuals(theta).reshape(-1).to(torch.float64)

    def jacobian_blocks(self, theta: torch.Tensor) -> Iterator[torch.Tensor]:
        flat = lambda t: self._linearise(t).reshape(-1)  # noqa: E731
        yield (jacfwd(flat) if self.forward else jacrev(flat, chunk_size=self.chunk))(theta)

    def jvp(self, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return jvp(lambda t: self._linearise(t).reshape(-1), (theta,), (v,))[1]

    def vjp(self, theta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return vjp(lambda t: self._linearise(t).reshape(-1), theta)[1](u)[0]

    def curvature(self, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        def along(t: torch.Tensor) -> torch.Tensor:
            return jvp(lambda s: self._linearise(s).reshape(-1), (t,), (v,))[1]
        return jvp(along, (theta,), (v,))[1]


class PerSampleProblem:
    """Residuals independent per sample: ``residual(θ, *sample) -> (k,)`` for one sample
    (tensors of ``data`` indexed on dim 0, ``B`` samples, ``m = B·k``). ``evaluate(θ,
    *data) -> (B, k)`` gives the true residuals of the whole batch (e.g. in float32);
    ``residual`` is differentiated (float64). ``chunk``: samples per Jacobian block."""

    def __init__(self, residual: Callable[..., torch.Tensor],
                 evaluate: Callable[..., torch.Tensor], data: Sequence[torch.Tensor],
                 chunk: int = 128):
        self.residual = residual
        self.evaluate = evaluate
        self.data = tuple(data)
        self.chunk = chunk
        self._jac = vmap(jacrev(residual), in_dims=(None, *(0,) * len(self.data)))
        self._batched = vmap(residual, in_dims=(None, *(0,) * len(self.data)))

    def _chunks(self) -> Iterator[tuple[torch.Tensor, ...]]:
        total = self.data[0].shape[0]
        for start in range(0, total, self.chunk):
            yield tuple(t[start:start + self.chunk] for t in self.data)

    def residuals(self, theta: torch.Tensor) -> torch.Tensor:
        return self.evaluate(theta, *self.data).reshape(-1).to(torch.float64)

    def jacobian_blocks(self, theta: torch.Tensor) -> Iterator[torch.Tensor]:
        for part in self._chunks():
            jac = self._jac(theta, *part)  # (b, k, p)
            yield jac.reshape(-1, theta.numel())

    def jvp(self, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.cat([jvp(lambda t, p=part: self._batched(t, *p).reshape(-1),
                              (theta,), (v,))[1] for part in self._chunks()])

    def curvature(self, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``d²/dt² r(θ + t v)`` at ``t = 0``: ``(m,)`` (forward over forward)."""
        out = []
        for part in self._chunks():
            def along(t: torch.Tensor, p: tuple[torch.Tensor, ...] = part) -> torch.Tensor:
                return jvp(lambda s: self._batched(s, *p).reshape(-1), (t,), (v,))[1]
            out.append(jvp(along, (theta,), (v,))[1])
        return torch.cat(out)

    def vjp(self, theta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(theta)
        start = 0
        for part in self._chunks():
            _, pull = vjp(lambda t, p=part: self._batched(t, *p).reshape(-1), theta)
            rows = u[start:start + part[0].shape[0] * (u.numel() // self.data[0].shape[0])]
            start += rows.numel()
            out += pull(rows)[0]
        return out


def normal_matrix(problem: LeastSquaresProblem, theta: torch.Tensor, residual: torch.Tensor,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(JᵀJ: (p, p), Jᵀr: (p,))`` at ``θ: (p,)`` for ``r: (m,)``, accumulated per row
    block of ``J`` (memory ``p² +`` one block)."""
    p = theta.numel()
    jtj = theta.new_zeros(p, p)
    jtr = theta.new_zeros(p)
    start = 0
    for block in problem.jacobian_blocks(theta):
        rows = residual[start:start + block.shape[0]]
        start += block.shape[0]
        jtj.addmm_(block.T, block)
        jtr.addmv_(block.T, rows)
    return jtj, jtr


def numerical_rank(jtj: torch.Tensor, rtol: float | None = None) -> tuple[int, float]:
    """Rank of ``J`` from ``JᵀJ: (p, p)`` and the condition number of ``JᵀJ`` over the kept
    directions (``κ(J)²``).

    The eigenvalues of ``JᵀJ`` carry absolute errors ``≈ p·eps·λ_max``, so an eigenvalue
    counts when it exceeds ``rtol·λ_max`` (default ``p·eps``), i.e. a singular value of
    ``J`` above ``√(p·eps)·σ_max`` (≈ 1e-6 for p = 4,032 in float64).
    """
    eig = torch.linalg.eigvalsh(jtj).flip(0)
    tol = (rtol if rtol is not None else jtj.shape[0] * torch.finfo(jtj.dtype).eps) * eig[0]
    kept = eig[eig > tol]
    return int(kept.numel()), float(kept[0] / kept[-1]) if kept.numel() else math.inf
