"""Operators: how a solver sees a batch of least-squares problems.

A trained update model is a (near-)exact affine operator ``g(x) ≈ c·Aᵀ(Ax − b)/n`` (``c``
a constant: ``n_train/n`` for a model trained at another length). That is all CG, GD and
Chebyshev need: ``M p = g(p; b = 0) − g(0; b = 0)`` with ``M = c·AᵀA/n``, and the
residual of the normal equations is ``r(x) = −g(x)``. LSQR and CGLS need the two products
``v ↦ A v`` and ``u ↦ Aᵀ u`` separately (:meth:`Operator.matvec`,
:meth:`Operator.rmatvec`), which a shape-general learned operator provides.

* :class:`LearnedOperator` — ``g`` from a :class:`~neuralnum.solvers.learner.Learner`'s
  model (fused only); :class:`ExactOperator` — the true ``Aᵀ(Ax − b)/n`` and products
  (the "exact" comparisons run the same algorithms on it).
* Every operator *equilibrates* first: ``A`` and ``b`` are multiplied by powers of two so
  their entries have RMS in ``[2^-½, 2^½)``, and ``x`` is scaled back at the end;
  power-of-two scalings are exact, so scaling ``A`` or ``b`` by any power of two (even
  ``2^600``) changes the result not at all. :meth:`Operator.balance_columns` also
  balances the columns of a full-rank problem whose column sizes differ widely. A token
  learner's operator presents a problem with ``n`` rows, ``n`` a divisor of its training
  length, at that length (rows repeated; exact), where the model is most accurate.

No SVD, eigendecomposition, QR or linear solve of ``A`` or ``AᵀA`` happens here.
Shapes: ``A: (B, n, d)``, ``b: (B, n)``, ``x: (B, d)``; float32 or float64 throughout.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from neuralnum.core.validation import check_problem
from neuralnum.models.axial import AxialCoefficients
from neuralnum.models.axial_stage import MatrixStats, matrix_stats
from neuralnum.solvers.spectrum import LANCZOS_STEPS, extreme_eigenvalues

__all__ = ["AxialLearnedOperator", "ExactOperator", "LearnedOperator", "Operator", "pow2_scale",
           "rms_exponent"]

_BALANCE_GAIN = 4.0  # column balancing is kept where it cuts κ(M) by this factor


def pow2_scale(t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``t · 2^e`` exactly (``e``: integer tensor broadcastable to ``t``), in two halves so
    that neither factor over- or underflows for ``|e|`` up to twice the exponent range."""
    half = torch.div(e, 2, rounding_mode="floor")
    one = torch.exp2(half.to(t.dtype))
    two = torch.exp2((e - half).to(t.dtype))
    return t * one * two


def rms_exponent(t: torch.Tensor) -> torch.Tensor:
    """Per row of ``t: (B, ...)``, the integer ``e`` with ``RMS(t·2^-e) ∈ [2^-½, 2^½)``
    (``0`` for an all-zero row); no over- or underflow for any finite input."""
    flat = t.reshape(t.shape[0], -1)
    _, e1 = torch.frexp(flat.abs().amax(dim=1))  # max |t·2^-e1| in [0.5, 1)
    scaled = pow2_scale(flat, -e1.unsqueeze(1))
    rms = (scaled * scaled).mean(dim=1).sqrt()
    safe = torch.where(rms > 0, rms, torch.ones_like(rms))
    e2 = torch.floor(torch.log2(safe) + 0.5).to(e1.dtype)
    return torch.where(rms > 0, e1 + e2, torch.zeros_like(e1))


class Operator:
    """``g(x) ≈ c·Aᵀ(Ax − b)/n`` for a batch of equilibrated problems, and, where the
    operator has them, the separate products ``v ↦ A v`` and ``u ↦ Aᵀ u``.

    Subclasses implement :meth:`_apply` ``(idx, b, x) -> g`` and, for LSQR / CGLS,
    :meth:`_matvec` ``(idx, v)`` / :meth:`_rmatvec` ``(idx, u)`` for the problems ``idx``
    (their matrices: :meth:`matrices`). The constructor equilibrates: ``A_eq = A·2^-eA``,
    ``b_eq = b·2^-eb`` (per problem; :func:`_exponent`); the solution of the equilibrated
    problem is ``x·2^(eA − eb)``. ``calls: (B,)`` counts operator applications per
    problem. ``center``: subtract ``g(0; b = 0)`` from every :meth:`gradient` (a learned
    offset; exactly zero for the true operator).
    """

    def __init__(self, A: torch.Tensor, b: torch.Tensor) -> None:
        check_problem(A, b)
        self.eA, self.eb = rms_exponent(A), rms_exponent(b)
        self.A = pow2_scale(A, -self.eA.view(-1, 1, 1))
        self.b = pow2_scale(b, -self.eb.view(-1, 1))
        self.batch, self.n, self.d = A.shape
        self.eC = torch.zeros(self.batch, self.d, dtype=self.eA.dtype, device=A.device)
        self.calls = torch.zeros(self.batch, dtype=torch.long, device=A.device)
        self._g0 = self.A.new_zeros(self.batch, self.d)  # g(0; b = 0), filled lazily
        self._have_g0 = torch.zeros(self.batch, dtype=torch.bool, device=A.device)
        self.center = False
        self.version = 0  # counts changes of self.A (:meth:`_set_matrices`)

    def balance_columns(self) -> torch.Tensor:
        """Scale the columns of ``A`` by powers of two to RMS in ``[2^-½, 2^½)`` where that
        is safe and worth it; returns the ``(B,)`` mask of problems balanced.

        Column scaling ``x = D y`` leaves a full-rank problem's solution unchanged (and
        the model then sees columns of one size), but it would change *which* solution is
        the minimum-norm one of a rank-deficient problem, and where it barely changes
        ``κ`` it only moves the error between components. So it applies only to problems
        with ``n ≥ d``, ``d ≤ 20`` and
        column RMS spread over more than 2 binades, and is kept where ``d`` Lanczos steps
        through the operator from a fixed random start, before and after, find the
        balanced ``M`` nonsingular (``λ_min/λ_max > eps^⅔``) and its ``κ`` at least
        :data:`_BALANCE_GAIN` times smaller (``2(d + 1)`` operator calls per such problem).
        """
        cols = rms_exponent(self.A.transpose(1, 2).reshape(-1, self.n)).view(self.batch, self.d)
        spread = cols.amax(dim=1) - cols.amin(dim=1)
        candidate = (spread > 2) & (self.n >= self.d) & (self.d <= LANCZOS_STEPS)
        if not candidate.any():
            return candidate
        idx = candidate.nonzero().squeeze(1)
        start = torch.randn(self.batch, self.d, dtype=self.A.dtype,
                            generator=torch.Generator().manual_seed(0)).to(self.A.device)
        start = torch.where(candidate.unsqueeze(1), start, 0)
        lmin0, lmax0 = extreme_eigenvalues(self, start, steps=self.d)
        unbalanced = self.A[idx]
        self._set_matrices(idx, pow2_scale(unbalanced, -cols[idx].unsqueeze(1)))
        lmin, lmax = extreme_eigenvalues(self, start, steps=self.d)
        eps = torch.finfo(self.A.dtype).eps
        helps = lmin * lmax0 > _BALANCE_GAIN * lmin0 * lmax  # κ(M) falls by the gain
        keep = candidate & (lmin > eps ** (2 / 3) * lmax) & helps
        self._set_matrices(idx[~keep[idx]], unbalanced[~keep[idx]])
        self.eC[keep] = cols[keep]
        return keep

    def _set_matrices(self, idx: torch.Tensor, mats: torch.Tensor) -> None:
        """``A[idx] = mats`` (``(k, n, d)``), and forget what was derived from the old
        ``A``: the lazily filled ``g(0; b = 0)`` of those problems, and (``version``) the
        subclasses' caches."""
        self.A[idx] = mats
        self._have_g0[idx] = False
        self.version += 1

    def _count(self, idx: torch.Tensor) -> None:
        """One more operator call for each of the (distinct) problems ``idx``."""
        self.calls.index_add_(0, idx, torch.ones_like(idx))

    @property
    def dtype(self) -> torch.dtype:
        return self.A.dtype

    @property
    def device(self) -> torch.device:
        return self.A.device

    def matrices(self, idx: torch.Tensor) -> torch.Tensor:
        """The equilibrated matrices of problems ``idx``: ``(k, n, d)`` (``self.A`` itself,
        not a copy, when ``idx`` is every problem in order)."""
        if len(idx) == self.batch and bool((idx == self._every).all()):
            return self.A
        return self.A[idx]

    @property
    def _every(self) -> torch.Tensor:
        return torch.arange(self.batch, device=self.A.device)

    def _apply(self, idx: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _matvec(self, idx: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} has no separate products A v and Aᵀu (it "
                        f"computes the fused Aᵀ(Ax − b) only): LSQR and CGLS need a "
                        f"shape-general learned operator (solver='learned'); use "
                        f"method='cg' with this one")

    def _rmatvec(self, idx: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self._matvec(idx, u)

    def matvec(self, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``A v`` of problems ``idx`` (equilibrated coordinates): ``v: (k, d)`` →
        ``(k, n)``; one operator call each. ``v`` is scaled by a power of two to RMS ≈ 1
        before the call (exactly undone), so a learned operator sees familiar sizes."""
        self._count(idx)
        e = rms_exponent(v).unsqueeze(1)
        return pow2_scale(self._matvec(idx, pow2_scale(v, -e)), e)

    def rmatvec(self, u: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``Aᵀ u`` of problems ``idx`` (equilibrated coordinates): ``u: (k, n)`` →
        ``(k, d)``; one operator call each, ``u`` scaled as in :meth:`matvec`."""
        self._count(idx)
        e = rms_exponent(u).unsqueeze(1)
        return pow2_scale(self._rmatvec(idx, pow2_scale(u, -e)), e)

    def gradient(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``g(x)`` of problems ``idx`` (equilibrated coordinates), ``x: (k, d)``; rows
        with a non-finite ``x`` get NaN without a call."""
        self._count(idx)
        finite = torch.isfinite(x).all(dim=1)
        if finite.all():
            out = self._apply(idx, self.b[idx], x)
        else:
            out = torch.full_like(x, math.nan)
            if finite.any():
                keep = idx[finite]
                out[finite] = self._apply(keep, self.b[keep], x[finite])
        if self.center and finite.any():
            out[finite] = out[finite] - self._zero(idx[finite])
        return out

    def _zero(self, idx: torch.Tensor) -> torch.Tensor:
        """``g(0; b = 0)`` of problems ``idx`` (zero for an exact operator), computed once
        per problem."""
        missing = idx[~self._have_g0[idx]]
        if len(missing):
            self._count(missing)
            self._g0[missing] = self._apply(missing, torch.zeros_like(self.b[missing]),
                                            self.A.new_zeros(len(missing), self.d))
            self._have_g0[missing] = True
        return self._g0[idx]

    def normal(self, p: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``M p = g(p; b=0) − g(0; b=0)`` of problems ``idx``; ``p`` is scaled by a power of
        two to RMS ≈ 1 before the call (exactly undone), so the model sees familiar sizes."""
        g0 = self._zero(idx)
        p = torch.where(torch.isfinite(p), p, math.nan)
        e = rms_exponent(torch.nan_to_num(p, nan=0.0)).unsqueeze(1)
        self._count(idx)
        zeros = self.b.new_zeros(len(idx), self.n)
        out = self._apply(idx, zeros, pow2_scale(p, -e)) - g0
        return pow2_scale(out, e)

    def to_equilibrated(self, x: torch.Tensor) -> torch.Tensor:
        """An iterate of the original problem in equilibrated coordinates."""
        return pow2_scale(x, (self.eA - self.eb).unsqueeze(1) + self.eC)

    def from_equilibrated(self, x: torch.Tensor) -> torch.Tensor:
        """An iterate of the equilibrated problem in the original coordinates."""
        return pow2_scale(x, (self.eb - self.eA).unsqueeze(1) - self.eC)


class ExactOperator(Operator):
    """The true ``g(x) = Aᵀ(Ax − b)/n`` and products ``A v``, ``Aᵀ u`` (for the "exact
    CG / GD / LSQR" comparisons)."""

    def _apply(self, idx: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._rmatvec(idx, self._matvec(idx, x) - b) / self.n

    def _matvec(self, idx: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.matrices(idx), v.unsqueeze(2)).squeeze(2)

    def _rmatvec(self, idx: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return torch.bmm(u.unsqueeze(1), self.matrices(idx)).squeeze(1)


class LearnedOperator(Operator):
    """``g`` from a learner's update model: its prediction of ``Aᵀ(Ax − b)/n``.

    ``learner`` needs a ``solver_forward()`` returning the prediction ``(A, b, x) ->
    (B, d)`` to call (the :class:`~neuralnum.solvers.learner.Learner` method: the model's gradient
    prediction, its attention heads in their least-rounding form, no finiteness check —
    the solvers check and flag); it is taken once, here. The residual is *centred*:
    ``g(x) − g(0; b = 0)``, which removes a learned constant offset.
    """

    def __init__(self, learner: Any, A: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__(A, b)
        self.learner = learner
        self.predict = learner.solver_forward()
        self.center = True

    def _apply(self, idx: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        A, n, trained = self.matrices(idx), self.n, self.learner.n
        if n < trained and trained % n == 0:
            # the model is most accurate at the length it was trained on: present the rows
            # n_train/n times over (AᵀA/n and Aᵀb/n are unchanged, exactly)
            A, b = A.repeat(1, trained // n, 1), b.repeat(1, trained // n)
        return self.predict(A, b, x)


class AxialLearnedOperator(Operator):
    """The shape-general learned operator (:mod:`neuralnum.models.axial`) as a solver sees
    it: the fused ``g(x) = Aᵀ(Ax − b)`` (its full network) and the two products of its
    stages, ``A v = r(x = v, b = 0) − r(0, 0)`` (the row stage) and ``Aᵀ u =
    col(r = u, x = 0) − col(0, 0)`` (the column stage read with ``u`` for its residual
    channel): centred, so a learned constant offset cancels.

    ``coefficients``: the operator's canonical (deployed) form, evaluated in ``A``'s dtype
    from its nonzero terms; the per-matrix moments (``Σ a²``, ``Σ a`` along both axes),
    where those terms read them, and the centring offsets are computed once per
    equilibrated ``A`` and again only if column balancing changes it.
    """

    def __init__(self, coefficients: AxialCoefficients, A: torch.Tensor, b: torch.Tensor
                 ) -> None:
        super().__init__(A, b)
        self.coefficients = coefficients
        self.center = True
        self._stats: tuple[int, MatrixStats] | None = None
        self._offsets: tuple[int, dict[str, torch.Tensor | None]] = (self.version, {})

    def _moments(self, idx: torch.Tensor, mats: torch.Tensor) -> MatrixStats | None:
        """The moments of ``mats`` = :meth:`matrices` ``(idx)``; ``None`` where the
        coefficients do not read them."""
        if not self.coefficients.needs_stats(self.dtype):
            return None
        if self._stats is None or self._stats[0] != self.version:
            self._stats = (self.version, matrix_stats(self.A))
        stats = self._stats[1]
        return stats if mats is self.A else MatrixStats(*(t[idx] for t in stats))

    def _centred(self, name: str, out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``out`` minus the offset ``r(0, 0)`` (``"rows"``) or ``col(0, 0)`` (``"cols"``)
        of problems ``idx``, computed for every problem at once on first use; an offset
        that is exactly zero everywhere (by the coefficients' form, as the exact
        construction's, or as computed) is not subtracted."""
        if self._offsets[0] != self.version:
            self._offsets = (self.version, {})
        offsets = self._offsets[1]
        if name not in offsets and self.coefficients.centred(name, self.dtype):
            offsets[name] = None
        if name not in offsets:
            stats = self._moments(self._every, self.A)
            offset = (self.coefficients.row_product(self.A, self.A.new_zeros(
                self.batch, self.d), stats) if name == "rows" else
                self.coefficients.column_product(self.A, self.b.new_zeros(self.b.shape), stats))
            offsets[name] = None if bool((offset == 0).all()) else offset
        offset = offsets[name]
        return out if offset is None else out - offset[idx]

    def _apply(self, idx: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mats = self.matrices(idx)
        return self.coefficients.step(mats, b, x, self._moments(idx, mats))

    def _matvec(self, idx: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        mats = self.matrices(idx)
        r = self.coefficients.row_product(mats, v, self._moments(idx, mats))
        return self._centred("rows", r, idx)

    def _rmatvec(self, idx: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        mats = self.matrices(idx)
        g = self.coefficients.column_product(mats, u, self._moments(idx, mats))
        return self._centred("cols", g, idx)
