"""CG, GD and Chebyshev on an operator's fused ``g(x) ≈ c·Aᵀ(Ax − b)/n``.

Every method here touches ``A`` and ``b`` only through an
:class:`~neuralnum.solvers.operators.Operator` (plus vector arithmetic on ``x``-sized
vectors and power-of-two scalings); no SVD, eigendecomposition, QR or linear solve of
``A`` or ``AᵀA`` anywhere.

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
from neuralnum.solvers.operators import Operator
from neuralnum.solvers.spectrum import dot, extreme_eigenvalues

__all__ = [
    "CONVERGED",
    "DIVERGED",
    "METHODS",
    "STAGNATED",
    "SolveInfo",
    "SolveWarning",
    "cg",
    "chebyshev",
    "gd",
    "solve",
]

CONVERGED, STAGNATED, DIVERGED = 0, 1, 2
STATUS_NAMES = ("converged", "stagnated", "diverged")
METHODS = ("cg", "chebyshev", "gd")
_RUNNING = -1
_CG_PATIENCE = 8
Patience = int | None | Literal["auto"]
_BLOWUP = 1e8  # a residual this many times the initial one counts as diverged
_PROGRESS = 0.99  # a new best must beat the reference best by 1 % to reset patience


class SolveWarning(RuntimeWarning):
    """Some problems of a solve stagnated far above the precision floor or diverged."""


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
    rr, rp = dot(r, r), dot(r, p)
    # with a recomputed residual, conjugacy (r·p = r·r) holds only approximately; where p
    # is no longer a descent direction, restart along the residual
    uphill = ~(rp > 0)
    p = torch.where(uphill.unsqueeze(1), r, p)
    rp = torch.where(uphill, rr, rp)
    q = op.normal(p, idx)
    pq = dot(p, q)
    broke = ~(pq > 0) | ~torch.isfinite(q).all(dim=1)
    # the exact line search along p (α = r·p / p·Mp, not r·r / p·Mp): the M-norm of the
    # error cannot grow, so iterating past the precision floor does not blow up
    alpha = torch.where(broke, torch.zeros_like(pq), rp / torch.where(broke, 1, pq))
    x_new = x + alpha.unsqueeze(1) * p
    r_new = -op.gradient(x_new, idx)
    # Polak–Ribière+: β = max(0, r⁺·(r⁺ − r)/r·r); β = 0 restarts along the residual
    beta = (dot(r_new, r_new - r) / torch.where(rr > 0, rr, 1)).clamp(min=0)
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
