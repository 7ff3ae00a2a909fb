"""Least-squares solvers that see ``A`` and ``b`` only through an operator ``g``.

A trained update model is a (near-)exact affine operator ``g(x) ≈ c·Aᵀ(Ax − b)/n`` (``c``
a constant: ``n_train/n`` for a model trained at another length). That is all a Krylov
method needs: ``M p = g(p; b = 0) − g(0; b = 0)`` with ``M = c·AᵀA/n``, and the residual of
the normal equations is ``r(x) = −g(x)``. Every method here touches ``A`` and ``b`` only
through :class:`Operator` (plus vector arithmetic on ``x``-sized vectors and power-of-two
scalings); no SVD, eigendecomposition, QR or linear solve of ``A`` or ``AᵀA`` anywhere.

* :class:`LearnedOperator` — ``g`` from a :class:`~neuralnum.solvers.learner.Learner`'s model;
  :class:`ExactOperator` — the true ``Aᵀ(Ax − b)/n`` (the "exact CG/GD" comparisons run the
  same algorithms on it). Both *equilibrate* first: ``A`` and ``b`` are multiplied by powers
  of two so their entries have RMS in ``[2^-½, 2^½)``, and ``x`` is scaled back at the end;
  power-of-two scalings are exact, so scaling ``A`` or ``b`` by any power of two (even
  ``2^600``) changes the result not at all. :func:`solve` also balances the columns of a
  full-rank problem whose column sizes differ widely (:meth:`Operator.balance_columns`).
  A learned operator presents a problem with ``n`` rows, ``n`` a divisor of its training
  length, at that length (rows repeated; exact), where the model is most accurate.
* :func:`cg` — conjugate gradients on the normal equations (CGNR), Polak–Ribière+ ``β``
  (a restart whenever the recurrence stops producing descent), the residual recomputed
  from ``g`` every iteration (no drift) and the exact line search ``α = r·p / p·Mp``
  (which keeps the raw iterates from blowing up past the precision floor), 2 operator
  calls per iteration.
* :func:`gd` — gradient descent with the step ``2/(λ_max + λ_min)`` of ``M`` estimated by
  Lanczos through ``g`` (``λ_max`` enlarged by 5 % for safety), 1 call per iteration.
* :func:`chebyshev` — Chebyshev iteration on ``[λ_min, λ_max]`` estimated the same way,
  1 call per iteration.
* Every method uses one stopping rule: a problem stops when its relative residual
  ``‖g(x)‖/‖g(x₀)‖ ≤ tol``, when the residual has not dropped by 1 % below its best for
  ``patience`` iterations (the operator's precision floor), or at ``max_iters``; the
  **best** iterate (smallest recomputed residual) is returned, so iterating longer never
  returns a worse one. Problems of a batch stop independently and inactive ones cost no
  calls. :class:`SolveInfo` records per problem iterations, operator calls, the relative
  residual and the status ``converged`` (relative residual ≤ ``accept``, default
  ``√eps``), ``stagnated`` (stopped above it) or ``diverged`` (the operator returned
  NaN/Inf or the residual grew ``1e8``-fold); the last two raise a :class:`SolveWarning`
  and the returned iterate is the best finite one, never NaN.

Shapes: ``A: (B, n, d)``, ``b: (B, n)``, ``x: (B, d)``; float32 or float64 throughout.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from neuralnum.core.validation import check_problem

__all__ = [
    "CONVERGED",
    "DIVERGED",
    "METHODS",
    "STAGNATED",
    "ExactOperator",
    "LearnedOperator",
    "Operator",
    "SolveInfo",
    "SolveWarning",
    "cg",
    "chebyshev",
    "extreme_eigenvalues",
    "gd",
    "solve",
]

CONVERGED, STAGNATED, DIVERGED = 0, 1, 2
STATUS_NAMES = ("converged", "stagnated", "diverged")
METHODS = ("cg", "chebyshev", "gd")
_RUNNING = -1
_CG_PATIENCE = 8
_LANCZOS_STEPS = 20  # the most Lanczos steps any spectrum estimate takes
_BALANCE_GAIN = 4.0  # column balancing is kept where it cuts κ(M) by this factor
Patience = int | None | Literal["auto"]
_BLOWUP = 1e8  # a residual this many times the initial one counts as diverged
_PROGRESS = 0.99  # a new best must beat the reference best by 1 % to reset patience


class SolveWarning(RuntimeWarning):
    """Some problems of a solve stagnated far above the precision floor or diverged."""


def _pow2(t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``t · 2^e`` exactly (``e``: integer tensor broadcastable to ``t``), in two halves so
    that neither factor over- or underflows for ``|e|`` up to twice the exponent range."""
    half = torch.div(e, 2, rounding_mode="floor")
    one = torch.exp2(half.to(t.dtype))
    two = torch.exp2((e - half).to(t.dtype))
    return t * one * two


def _exponent(t: torch.Tensor) -> torch.Tensor:
    """Per row of ``t: (B, ...)``, the integer ``e`` with ``RMS(t·2^-e) ∈ [2^-½, 2^½)``
    (``0`` for an all-zero row); no over- or underflow for any finite input."""
    flat = t.reshape(t.shape[0], -1)
    _, e1 = torch.frexp(flat.abs().amax(dim=1))  # max |t·2^-e1| in [0.5, 1)
    scaled = _pow2(flat, -e1.unsqueeze(1))
    rms = scaled.pow(2).mean(dim=1).sqrt()
    safe = torch.where(rms > 0, rms, torch.ones_like(rms))
    e2 = torch.floor(torch.log2(safe) + 0.5).to(e1.dtype)
    return torch.where(rms > 0, e1 + e2, torch.zeros_like(e1))


class Operator:
    """``g(x) ≈ c·Aᵀ(Ax − b)/n`` for a batch of equilibrated problems.

    Subclasses implement :meth:`_apply` ``(A, b, x) -> g``. The constructor equilibrates:
    ``A_eq = A·2^-eA``, ``b_eq = b·2^-eb`` (per problem; :func:`_exponent`); the solution
    of the equilibrated problem is ``x·2^(eA − eb)``. ``calls: (B,)`` counts operator
    applications per problem. ``center``: subtract ``g(0; b = 0)`` from every
    :meth:`gradient` (a learned offset; exactly zero for the true operator).
    """

    def __init__(self, A: torch.Tensor, b: torch.Tensor) -> None:
        check_problem(A, b)
        self.eA, self.eb = _exponent(A), _exponent(b)
        self.A = _pow2(A, -self.eA.view(-1, 1, 1))
        self.b = _pow2(b, -self.eb.view(-1, 1))
        self.batch, self.n, self.d = A.shape
        self.eC = torch.zeros(self.batch, self.d, dtype=self.eA.dtype, device=A.device)
        self.calls = torch.zeros(self.batch, dtype=torch.long, device=A.device)
        self._g0 = self.A.new_zeros(self.batch, self.d)  # g(0; b = 0), filled lazily
        self._have_g0 = torch.zeros(self.batch, dtype=torch.bool, device=A.device)
        self.center = False

    def balance_columns(self) -> torch.Tensor:
        """Scale the columns of ``A`` by powers of two to RMS in ``[2^-½, 2^½)`` where that
        is safe and worth it; returns the ``(B,)`` mask of problems balanced.

        Column scaling ``x = D y`` leaves a full-rank problem's solution unchanged (and
        the model then sees columns of one size: on the ``scaled`` family it gained 0.4–1
        digit for learned CG), but it would change *which* solution is the minimum-norm
        one of a rank-deficient problem, and where it barely changes ``κ`` it only moves
        the error between components (on ``ill_conditioned``: −0.35 digit for learned and
        exact CG alike). So it applies only to problems with ``n ≥ d``, ``d ≤ 20`` and
        column RMS spread over more than 2 binades, and is kept where ``d`` Lanczos steps
        through the operator from a fixed random start, before and after, find the
        balanced ``M`` nonsingular (``λ_min/λ_max > eps^⅔``) and its ``κ`` at least
        :data:`_BALANCE_GAIN` times smaller (``2(d + 1)`` operator calls per such problem).
        """
        cols = _exponent(self.A.transpose(1, 2).reshape(-1, self.n)).view(self.batch, self.d)
        spread = cols.amax(dim=1) - cols.amin(dim=1)
        candidate = (spread > 2) & (self.n >= self.d) & (self.d <= _LANCZOS_STEPS)
        if not candidate.any():
            return candidate
        idx = candidate.nonzero().squeeze(1)
        start = torch.randn(self.batch, self.d, dtype=self.A.dtype,
                            generator=torch.Generator().manual_seed(0)).to(self.A.device)
        start = torch.where(candidate.unsqueeze(1), start, 0)
        lmin0, lmax0 = extreme_eigenvalues(self, start, steps=self.d)
        unbalanced = self.A[idx]
        self.A[idx] = _pow2(unbalanced, -cols[idx].unsqueeze(1))
        self._have_g0[idx] = False
        lmin, lmax = extreme_eigenvalues(self, start, steps=self.d)
        eps = torch.finfo(self.A.dtype).eps
        helps = lmin * lmax0 > _BALANCE_GAIN * lmin0 * lmax  # κ(M) falls by the gain
        keep = candidate & (lmin > eps ** (2 / 3) * lmax) & helps
        undo = idx[~keep[idx]]
        self.A[undo] = unbalanced[~keep[idx]]
        self._have_g0[undo] = False
        self.eC[keep] = cols[keep]
        return keep

    def _apply(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def gradient(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``g(x)`` of problems ``idx`` (equilibrated coordinates), ``x: (k, d)``; rows
        with a non-finite ``x`` get NaN without a call."""
        self.calls[idx] += 1
        finite = torch.isfinite(x).all(dim=1)
        if finite.all():
            out = self._apply(self.A[idx], self.b[idx], x)
        else:
            out = torch.full_like(x, math.nan)
            if finite.any():
                keep = idx[finite]
                out[finite] = self._apply(self.A[keep], self.b[keep], x[finite])
        if self.center and finite.any():
            out[finite] = out[finite] - self._zero(idx[finite])
        return out

    def _zero(self, idx: torch.Tensor) -> torch.Tensor:
        """``g(0; b = 0)`` of problems ``idx`` (zero for an exact operator), computed once
        per problem."""
        missing = idx[~self._have_g0[idx]]
        if len(missing):
            self.calls[missing] += 1
            self._g0[missing] = self._apply(self.A[missing], torch.zeros_like(self.b[missing]),
                                            self.A.new_zeros(len(missing), self.d))
            self._have_g0[missing] = True
        return self._g0[idx]

    def normal(self, p: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``M p = g(p; b=0) − g(0; b=0)`` of problems ``idx``; ``p`` is scaled by a power of
        two to RMS ≈ 1 before the call (exactly undone), so the model sees familiar sizes."""
        g0 = self._zero(idx)
        p = torch.where(torch.isfinite(p), p, math.nan)
        e = _exponent(torch.nan_to_num(p, nan=0.0)).unsqueeze(1)
        self.calls[idx] += 1
        zeros = self.b.new_zeros(len(idx), self.n)
        out = self._apply(self.A[idx], zeros, _pow2(p, -e)) - g0
        return _pow2(out, e)

    def to_equilibrated(self, x: torch.Tensor) -> torch.Tensor:
        """An iterate of the original problem in equilibrated coordinates."""
        return _pow2(x, (self.eA - self.eb).unsqueeze(1) + self.eC)

    def from_equilibrated(self, x: torch.Tensor) -> torch.Tensor:
        """An iterate of the equilibrated problem in the original coordinates."""
        return _pow2(x, (self.eb - self.eA).unsqueeze(1) - self.eC)


class ExactOperator(Operator):
    """The true ``g(x) = Aᵀ(Ax − b)/n`` (for "exact CG / GD" comparisons)."""

    def _apply(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        residual = torch.einsum("bnd,bd->bn", A, x) - b
        return torch.einsum("bnd,bn->bd", A, residual) / A.shape[1]


class LearnedOperator(Operator):
    """``g`` from a learner's update model: its prediction of ``Aᵀ(Ax − b)/n``.

    ``learner`` needs a ``solver_forward()`` returning the prediction ``(A, b, x) ->
    (B, d)`` to call (the :class:`~neuralnum.solvers.learner.Learner` method: the model's gradient
    prediction, its attention heads in their least-rounding form, no finiteness check —
    the solvers check and flag); it is taken once, here. The residual is *centred*:
    ``g(x) − g(0; b = 0)``, which removes a learned constant offset (measured: +0.1 to
    +0.4 digits for learned CG on the families the demo's learner was not trained on).
    """

    def __init__(self, learner: Any, A: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__(A, b)
        self.learner = learner
        self.predict = learner.solver_forward()
        self.center = True

    def _apply(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        n, trained = A.shape[1], self.learner.n
        if n < trained and trained % n == 0:
            # the model is most accurate at the length it was trained on: present the rows
            # n_train/n times over (AᵀA/n and Aᵀb/n are unchanged, exactly)
            A, b = A.repeat(1, trained // n, 1), b.repeat(1, trained // n)
        return self.predict(A, b, x)


@dataclass
class SolveInfo:
    """How a solve ended, per problem (``B`` problems).

    ``iterations``, ``model_calls``: ``(B,)`` long; ``status``: ``(B,)`` int8
    (:data:`CONVERGED`, :data:`STAGNATED`, :data:`DIVERGED`); ``residual``: ``(B,)``
    relative residual ``‖g(x)‖/‖g(x₀)‖`` of the returned iterate; ``history``: with
    ``record=True``, the iterate after every iteration (original coordinates, the last one
    repeated for problems that stopped), ``[(B, d)] * (iterations.max() + 1)``.
    """

    method: str
    iterations: torch.Tensor
    model_calls: torch.Tensor
    status: torch.Tensor
    residual: torch.Tensor
    history: list[torch.Tensor] = field(default_factory=list)

    @property
    def converged(self) -> torch.Tensor:
        return self.status == CONVERGED

    @property
    def stagnated(self) -> torch.Tensor:
        return self.status == STAGNATED

    @property
    def diverged(self) -> torch.Tensor:
        return self.status == DIVERGED

    @classmethod
    def single_call(cls, batch: int, device: torch.device | str = "cpu") -> SolveInfo:
        """The record of a one-shot prediction (an end-to-end learner): one call each."""
        ones = torch.ones(batch, dtype=torch.long, device=device)
        return cls("predict", ones, ones.clone(),
                   torch.full((batch,), CONVERGED, dtype=torch.int8, device=device),
                   torch.full((batch,), math.nan, dtype=torch.float64, device=device))

    def summary(self) -> dict[str, Any]:
        """Medians / maxima and status counts as plain numbers (for reports)."""
        return {"method": self.method,
                "iterations_median": float(self.iterations.double().median()),
                "iterations_max": int(self.iterations.max()),
                "model_calls_median": float(self.model_calls.double().median()),
                "model_calls_max": int(self.model_calls.max()),
                **{name: int((self.status == code).sum())
                   for code, name in enumerate(STATUS_NAMES)}}


class _Tracker:
    """The shared stopping rule: best iterate, patience, tolerance, divergence."""

    def __init__(self, x: torch.Tensor, r: torch.Tensor, *, tol: float, accept: float,
                 patience: torch.Tensor | None, record: bool, to_original: Callable) -> None:
        norm = r.norm(dim=1)
        self.r0 = torch.where(norm > 0, norm, torch.ones_like(norm))
        self.best = norm / self.r0
        self.ref = self.best.clone()  # the best when patience was last reset
        self.best_x = x.clone()
        self.tol, self.accept, self.patience = tol, accept, patience
        self.stale = torch.zeros_like(norm, dtype=torch.long)
        self.iterations = torch.zeros_like(self.stale)
        self.status = torch.full_like(self.stale, _RUNNING, dtype=torch.int8)
        self.status[norm == 0] = CONVERGED
        self.to_original = to_original
        self.history = [to_original(x)] if record else None
        self.current = x.clone()

    @property
    def active(self) -> torch.Tensor:
        return (self.status == _RUNNING).nonzero().squeeze(1)

    def update(self, idx: torch.Tensor, x: torch.Tensor, r: torch.Tensor,
               broke: torch.Tensor | None = None) -> torch.Tensor:
        """Record iterate ``x`` with residual ``r`` of problems ``idx``; returns the mask of
        ``idx`` still running."""
        self.iterations[idx] += 1
        rel = r.norm(dim=1) / self.r0[idx]
        finite = torch.isfinite(rel) & torch.isfinite(x).all(dim=1)
        bad = ~finite | (rel > _BLOWUP)
        if broke is not None:
            bad |= broke
        better = finite & (rel < self.best[idx])
        self.best_x[idx[better]] = x[better]
        self.best[idx] = torch.where(better, rel, self.best[idx])
        progress = finite & (rel < _PROGRESS * self.ref[idx])
        self.ref[idx] = torch.where(progress, rel, self.ref[idx])
        self.stale[idx] = torch.where(progress, 0, self.stale[idx] + 1)
        status = torch.full_like(idx, _RUNNING, dtype=torch.int8)
        if self.patience is not None:
            stuck = self.stale[idx] >= self.patience[idx]
            status[stuck] = torch.where(self.best[idx][stuck] <= self.accept, CONVERGED,
                                        STAGNATED).to(torch.int8)
        status[self.best[idx] <= self.tol] = CONVERGED
        status[bad] = DIVERGED
        self.status[idx] = status
        self.current[idx[finite]] = x[finite]
        if self.history is not None:
            self.history.append(self.to_original(self.current))
        return status == _RUNNING

    def finish(self) -> None:
        """Problems still running (``max_iters`` reached) are judged by ``accept``."""
        running = self.status == _RUNNING
        ok = self.best <= self.accept
        self.status[running & ok] = CONVERGED
        self.status[running & ~ok] = STAGNATED


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u * v).sum(dim=1)


def _run(op: Operator, method: str, x0: torch.Tensor, max_iters: int, tol: float,
         accept: float, patience: Patience, record: bool,
         body: Callable[[Operator, _Tracker, dict[str, torch.Tensor], torch.Tensor], None],
         init: Callable[[Operator, torch.Tensor], dict[str, torch.Tensor]]
         ) -> tuple[torch.Tensor, SolveInfo]:
    """The loop every method shares: ``init(op, r0)`` sets up the method's state from
    the initial residual (and ``"auto_patience": (B,)``, used when ``patience="auto"``);
    ``body(op, tracker, state, idx)`` performs one iteration of the active problems
    ``idx`` and reports to the tracker."""
    r = -op.gradient(x0, torch.arange(op.batch, device=x0.device))
    state = {"x": x0.clone(), "r": r, **init(op, r)}
    auto = state.pop("auto_patience")
    if patience is None or patience == "auto":
        limit = None if patience is None else auto
    else:
        limit = torch.full_like(auto, patience)
    tracker = _Tracker(x0, r, tol=tol, accept=accept, patience=limit, record=record,
                       to_original=op.from_equilibrated)
    for _ in range(max_iters):
        idx = tracker.active
        if len(idx) == 0:
            break
        body(op, tracker, state, idx)
    tracker.finish()
    info = SolveInfo(method, tracker.iterations, op.calls.clone(), tracker.status,
                     tracker.best, tracker.history or [])
    return op.from_equilibrated(tracker.best_x), info


def _cg_body(op: Operator, tracker: _Tracker, s: dict[str, torch.Tensor],
             idx: torch.Tensor) -> None:
    x, r, p = s["x"][idx], s["r"][idx], s["p"][idx]
    rr, rp = _dot(r, r), _dot(r, p)
    # with a recomputed residual, conjugacy (r·p = r·r) holds only approximately; where p
    # is no longer a descent direction, restart along the residual
    uphill = ~(rp > 0)
    p = torch.where(uphill.unsqueeze(1), r, p)
    rp = torch.where(uphill, rr, rp)
    q = op.normal(p, idx)
    pq = _dot(p, q)
    broke = ~(pq > 0) | ~torch.isfinite(q).all(dim=1)
    # the exact line search along p (α = r·p / p·Mp, not r·r / p·Mp): the M-norm of the
    # error cannot grow, so iterating past the precision floor does not blow up
    alpha = torch.where(broke, torch.zeros_like(pq), rp / torch.where(broke, 1, pq))
    x_new = x + alpha.unsqueeze(1) * p
    r_new = -op.gradient(x_new, idx)
    # Polak–Ribière+: β = max(0, r⁺·(r⁺ − r)/r·r); β = 0 restarts along the residual
    beta = (_dot(r_new, r_new - r) / torch.where(rr > 0, rr, 1)).clamp(min=0)
    beta = torch.where(broke | ~torch.isfinite(beta), 0, beta)
    # a breakdown along the residual itself means the operator is not positive definite
    fatal = broke & (uphill | s["restarted"][idx])
    tracker.update(idx, x_new, r_new, fatal)
    s["restarted"][idx] = broke
    s["x"][idx] = x_new
    s["r"][idx] = r_new
    s["p"][idx] = r_new + beta.unsqueeze(1) * p


def cg(op: Operator, x0: torch.Tensor, *, max_iters: int, tol: float, accept: float,
       patience: Patience = "auto", record: bool = False
       ) -> tuple[torch.Tensor, SolveInfo]:
    """Conjugate gradients on ``M x = −g(0)`` (equilibrated ``x0: (B, d)``)."""
    def init(op: Operator, r0: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"p": r0.clone(), "auto_patience": torch.full_like(op.calls, _CG_PATIENCE),
                "restarted": torch.zeros(op.batch, dtype=torch.bool, device=r0.device)}

    return _run(op, "cg", x0, max_iters, tol, accept, patience, record, _cg_body, init)


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


def extreme_eigenvalues(op: Operator, v0: torch.Tensor, steps: int | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(λ_min, λ_max): (B,)`` Ritz estimates of ``M`` restricted to the Krylov space of
    ``v0: (B, d)`` after ``steps`` (default ``min(d, 20)``) Lanczos steps through
    :meth:`Operator.normal` (full reorthogonalisation; a problem whose Krylov space is
    exhausted — ``β ≤ 1e-6·λ_max`` in float64, ``1e-3`` in float32 — stops adding
    dimensions). Starting from ``v0 = −g(0) ∈ range(Aᵀ)`` gives the extreme *non-zero*
    eigenvalues, which is what GD / Chebyshev from ``x₀ = 0`` need."""
    batch, d = v0.shape
    steps = min(d, _LANCZOS_STEPS) if steps is None else steps
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
        a = _dot(q, w)
        for _ in range(2):
            for v in basis:
                w = w - _dot(v, w).unsqueeze(1) * v
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


def _spectrum(op: Operator, r0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Safe ``[λ_min, λ_max]`` of ``M`` for GD / Chebyshev: Lanczos from ``r0`` with 5 %
    margins (Ritz values lie inside the spectrum)."""
    lmin, lmax = extreme_eigenvalues(op, r0)
    lmax = 1.05 * lmax
    lmin = (0.95 * lmin).clamp(min=0)
    return lmin, lmax


def _condition(lmin: torch.Tensor, lmax: torch.Tensor) -> torch.Tensor:
    """``λ_max/λ_min`` capped at ``1e12`` (``inf`` where ``λ_min = 0``)."""
    return (lmax / lmin.clamp(min=torch.finfo(lmin.dtype).tiny)).clamp(max=1e12)


def _gd_body(op: Operator, tracker: _Tracker, s: dict[str, torch.Tensor],
             idx: torch.Tensor) -> None:
    x = s["x"][idx] + s["eta"][idx].unsqueeze(1) * s["r"][idx]
    r = -op.gradient(x, idx)
    tracker.update(idx, x, r)
    s["x"][idx], s["r"][idx] = x, r


def gd(op: Operator, x0: torch.Tensor, *, max_iters: int, tol: float, accept: float,
       patience: Patience = "auto", record: bool = False
       ) -> tuple[torch.Tensor, SolveInfo]:
    """Gradient descent with the step ``2/(λ_max + λ_min)`` estimated through ``g``."""
    def init(op: Operator, r0: torch.Tensor) -> dict[str, torch.Tensor]:
        lmin, lmax = _spectrum(op, r0)
        denom = lmax + lmin
        # 1 % progress takes ~κ/200 iterations at GD's rate (κ−1)/(κ+1)
        return {"eta": 2 / torch.where(denom > 0, denom, 1),
                "auto_patience": 20 + (_condition(lmin, lmax) / 50).long()}

    return _run(op, "gd", x0, max_iters, tol, accept, patience, record, _gd_body, init)


def _chebyshev_body(op: Operator, tracker: _Tracker, s: dict[str, torch.Tensor],
                    idx: torch.Tensor) -> None:
    sigma, delta, rho = s["sigma"][idx], s["delta"][idx], s["rho"][idx]
    x = s["x"][idx] + s["dir"][idx]
    r = -op.gradient(x, idx)
    tracker.update(idx, x, r)
    rho_new = 1 / (2 * sigma - rho)
    s["dir"][idx] = ((rho_new * rho).unsqueeze(1) * s["dir"][idx]
                     + (2 * rho_new / delta).unsqueeze(1) * r)
    s["x"][idx], s["r"][idx], s["rho"][idx] = x, r, rho_new


def chebyshev(op: Operator, x0: torch.Tensor, *, max_iters: int, tol: float, accept: float,
              patience: Patience = "auto", record: bool = False
       ) -> tuple[torch.Tensor, SolveInfo]:
    """Chebyshev iteration on ``[λ_min, λ_max]`` of ``M``, both estimated through ``g``."""
    def init(op: Operator, r0: torch.Tensor) -> dict[str, torch.Tensor]:
        lmin, lmax = _spectrum(op, r0)
        theta = (lmax + lmin) / 2
        theta = torch.where(theta > 0, theta, 1)
        delta = torch.maximum((lmax - lmin) / 2, 1e-6 * theta)  # a point spectrum too
        sigma = theta / delta
        # the Chebyshev residual can plateau for ~√κ iterations before it falls
        return {"sigma": sigma, "delta": delta, "rho": 1 / sigma,
                "dir": r0 / theta.unsqueeze(1),
                "auto_patience": 20 + (2 * _condition(lmin, lmax).sqrt()).long()}

    return _run(op, "chebyshev", x0, max_iters, tol, accept, patience, record,
                _chebyshev_body, init)


_ALGORITHMS = {"cg": cg, "chebyshev": chebyshev, "gd": gd}
_DEFAULT_MAX_ITERS = {"cg": 200, "chebyshev": 1000, "gd": 1000}


@torch.no_grad()
def solve(op: Operator, method: str = "cg", x0: torch.Tensor | None = None, *,
          iters: int | None = None, tol: float | None = None, max_iters: int | None = None,
          patience: int | None = None, accept: float | None = None, record: bool = False,
          warn: bool = True, balance: bool = True) -> tuple[torch.Tensor, SolveInfo]:
    """Solve the least-squares problems of ``op`` with ``method`` (``"cg"``,
    ``"chebyshev"``, ``"gd"``); returns ``(x: (B, d) original coordinates, SolveInfo)``.

    ``x0: (B, d)`` (original coordinates) defaults to 0. ``iters``: run exactly that many
    iterations (no early stop except divergence; the best iterate is still returned).
    Otherwise a problem stops at relative residual ``tol`` (default ``eps``), after
    ``patience`` iterations without 1 % progress (default 8 for CG; ``20 + 2√κ`` for
    Chebyshev and ``20 + κ/50`` for GD, ``κ`` their Lanczos estimate of ``κ(M)``) or at
    ``max_iters`` (default 200 for CG, 1000 otherwise). ``accept`` (default ``√eps``):
    the relative residual below which a stop counts as converged. ``warn``: issue a
    :class:`SolveWarning` naming the stagnated / diverged problems. ``balance``: first
    scale the columns of ``A`` where safe (:meth:`Operator.balance_columns`).
    """
    if method not in _ALGORITHMS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    for name, value in (("iters", iters), ("max_iters", max_iters), ("patience", patience)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    for name, value in (("tol", tol), ("accept", accept)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    eps = torch.finfo(op.A.dtype).eps
    accept = math.sqrt(eps) if accept is None else accept
    if iters is not None:
        max_iters, tol, patience = iters, 0.0, None
    else:
        max_iters = _DEFAULT_MAX_ITERS[method] if max_iters is None else max_iters
        tol = eps if tol is None else tol
        patience = "auto" if patience is None else patience
    if x0 is None:
        x0 = op.A.new_zeros(op.batch, op.d)
    else:
        check_problem(op.A, op.b, x0, x_name="x0")
    if balance:
        op.balance_columns()
    x, info = _ALGORITHMS[method](op, op.to_equilibrated(x0), max_iters=max_iters, tol=tol,
                                  accept=accept, patience=patience, record=record)
    if warn and iters is None and not info.converged.all():
        bad = (~info.converged).nonzero().squeeze(1).tolist()
        shown = bad[:10]
        statuses = [STATUS_NAMES[int(info.status[i])] for i in shown]
        residuals = [f"{float(info.residual[i]):.1e}" for i in shown]
        warnings.warn(f"{method}: problems {shown}{'…' if len(bad) > 10 else ''} did not "
                      f"converge (statuses {statuses}, relative residuals {residuals}); "
                      f"their x is the best finite iterate", SolveWarning, stacklevel=3)
    return x, info
