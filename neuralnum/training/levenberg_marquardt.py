"""Levenberg–Marquardt / Gauss–Newton on a least-squares problem ``min_θ ½‖r(θ)‖²``.

The engine works on a flat float64 parameter vector ``θ: (p,)`` and a
:class:`LeastSquaresProblem`, which gives the residuals ``r(θ): (m,)`` and linearises
them (Jacobian row blocks, or matrix-free ``J v`` / ``Jᵀ u``). Two problems are provided:

* :class:`FunctionalProblem` — any pure ``residuals(θ) -> (m,)`` (e.g. a model through
  ``torch.func.functional_call`` on a fixed batch); Jacobian rows by ``torch.func.jacrev``
  in chunks of ``chunk`` rows.
* :class:`PerSampleProblem` — residuals that are independent per sample,
  ``residual(θ, *sample_i) -> (k,)``: the Jacobian of a chunk of samples is
  ``vmap(jacrev(residual))`` — ``k`` backward passes per sample instead of ``k·B`` per chunk.
  (BaseConv, 4,032 parameters: 2.75 s for the 640 × 4,032 Jacobian of 128 problems on
  one idle core.)

Each iteration (:meth:`LevenbergMarquardt.step`) linearises once and solves
``(JᵀJ + λD) δ = −Jᵀr`` by the cheapest exact route, chosen automatically
(:func:`choose_solver`): Cholesky of the ``p × p`` normal matrix, the dual ``m × m`` form
``δ = −D^{-1/2}J̃ᵀ(J̃J̃ᵀ + λI)^{-1} r`` (``J̃ = J D^{-1/2}``) when there are fewer residuals
than parameters, or Gauss–Newton-CG with ``jvp``/``vjp`` when neither fits in memory;
``solver="eigh"`` (chosen by hand) replaces the Cholesky factorisation by one truncated
eigendecomposition of the scaled ``JᵀJ``, and ``solver="svd"`` by one thin SVD of the
scaled ``J`` (no squared condition number: see :class:`LMSettings`).
``D = mean(diag(JᵀJ))·I`` (Levenberg; ``λ`` is relative; ``scaling="marquardt"`` gives
``diag(JᵀJ)``, which on BaseConv took huge steps along ill-determined directions and
stalled: train MSE 2.0e-2 → 1.0e-2 in the first iteration vs 1.0e-6) for the direct
solvers and ``D = s·I`` (``s`` = mean curvature from one random probe) for CG.
Damping follows the gain ratio ``ρ``: very good steps (``ρ > 0.75``) ``λ ← shrink·λ``,
other accepted steps Nielsen's ``λ ← λ·max(1/3, 1 − (2ρ − 1)³)``, rejected ``λ ← λ·ν,
ν ← 2ν``; clamped to ``[damping_floor, damping_max]``. A step is accepted only when it
strictly lowers ``‖r‖²``; ``corrections`` chord steps may follow it (:class:`LMSettings`).
The state (``θ, λ, ν``, counters) round-trips through
:meth:`~LevenbergMarquardt.state_dict` for an exact resume.

Measured on BaseConv from the construction + 1e-3 noise (float64, 807 problems = 4,035
residuals, 4,032 parameters, one thread): ``solver="eigh"`` with 3 corrections reached
fresh one-step MSE 1.0e-17 after 5 iterations and 2.0e-20 after 15 (the Cholesky route
without corrections: 8.5e-16 after 7, ``python3 -m studies.recipe --finisher``). Why the
tail is linear (MSE ratio 0.6–0.8 per iteration below 1e-19, whatever λ): at train MSE
1.6e-17, 69% of ``‖r‖²`` lies along 581 directions whose singular values are 1e-8…1e-6 of
the largest, and only 1.5e-10 outside the range of ``J``; an SVD of ``J`` gave the same
trajectory as the eigendecomposition of ``JᵀJ`` (7.1e-16 vs 6.2e-16 after 6 iterations),
so the precision of the linear solve is not the limit. Removing those components takes
``‖δ‖ ≈ 4e-3``, where the second-order term dominates (``‖r(θ+δ)‖²/‖r‖²``: linear model
0.011, quadratic model 0.105, actual 0.093): the solutions form a nearly singular
manifold, on which Gauss–Newton converges only linearly. Geodesic acceleration (0.051),
eight fixed-point steps on the quadratic model (0.031), step-length extrapolation (α ∈ [1,
4]: no systematic gain) and two rounds of corrected semi-normal equations (no change) each
help little. The singular part was the construction's idle channels (both factors at
zero): :func:`neuralnum.training.finisher.finish_lm` snaps them onto one branch first, after which
six chord corrections per iteration reach roundoff (3.6e-31) by iteration 7.

Why hand-written (~300 lines) rather than a library: the finisher needs float64 master
parameters for a float32 model, a per-sample ``vmap(jacrev)`` Jacobian, four linear-solve
routes, rank-sized training sets and an exact resume, all on a pure residual function of
a flat vector. ``torch-levenberg-marquardt`` and ``curvlinops-for-pytorch`` were not
installed or benchmarked here (no time on the shared machine); curvlinops' GGN operator
would replace only the two ``torch.func`` calls of the CG route.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.func import jacrev, jvp, vjp, vmap

from neuralnum.core.validation import (
    check_choice,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
)

__all__ = ["SOLVERS", "FunctionalProblem", "LMSettings", "LeastSquaresProblem",
           "LevenbergMarquardt", "PerSampleProblem", "choose_solver", "normal_matrix",
           "numerical_rank"]

SOLVERS = ("auto", "cholesky", "eigh", "svd", "dual", "cg")


@dataclass(frozen=True)
class LMSettings:
    """Settings of :class:`LevenbergMarquardt`.

    ``damping``: initial λ (relative to ``D``); ``damping_floor``/``damping_max`` clamp it;
    ``solver``: one of :data:`SOLVERS` (``"eigh"``: one eigendecomposition of the scaled
    ``JᵀJ`` per iteration, eigenvalues below ``eig_rtol``·largest dropped — a truncated
    pseudo-inverse that never fails at tiny λ, and every further trial λ costs a
    matrix-vector product instead of a factorisation; ``"svd"``: one thin SVD of the
    scaled ``J`` itself, singular values with ``σ² ≤ eig_rtol·σ²_max`` dropped, applied
    to residual-space vectors, so directions down to ``σ/σ_max ≈ eps`` are resolved where
    the normal routes lose everything below ``≈ √eps``. On BaseConv from scratch at train
    MSE 8.1e-22 all but 1e-9 of ``‖r‖²`` lay along one singular direction with ``σ/σ_max
    = 1.4e-9``, out of the normal routes' reach; with geodesic acceleration each svd
    iteration lowered the training MSE about five times as much as a Cholesky one (4
    iterations to 5.2e-22 vs 19), but cost 35 s against 7.5 s on one thread, so per second
    they tie (5.2e-22 vs 5.6e-22 after 148 s): there the curvature along that direction
    limits the step, not the solve); ``max_direct``:
    the largest ``p`` (Cholesky, eigh, svd) or ``m`` (dual) solved by a dense
    factorisation;
    ``cg_iters``/``cg_tol``: the GN-CG inner solve (relative residual); ``max_rejects``:
    rejected trials per :meth:`step`;
    ``scaling``: ``D = diag(JᵀJ)`` (``"marquardt"``) or ``mean(diag(JᵀJ))·I``
    (``"identity"``, Levenberg: short steps along ill-determined directions); ``shrink``:
    ``geodesic``: add Transtrum–Sethna geodesic acceleration ``½a``, ``(JᵀJ + λD) a =
    −Jᵀ r_vv`` with ``r_vv`` the second directional derivative along δ (direct routes;
    a trial with ``2‖a‖ > 0.75‖δ‖`` is rejected; on BaseConv from the construction + 1e-3,
    float64, it kept ρ ≈ 0.95–0.99 where plain LM had 0.8–0.9: fresh MSE 2.8e-16 vs
    2.8e-15 after 7 iterations, 1.1e-21 after 14; from scratch, where plain LM crawls
    along a curved valley at ~1 % per iteration with λ stuck near 1e-10, it takes ten
    times longer steps: from weights at fresh 1.5e-16, 260 s on one thread gave 6.9e-18
    against plain LM's 1.1e-16, and the 30-minute study row went from 2.9e-16 to 3.1e-20);
    ``shrink``:
    the factor λ is multiplied by after a very good step (gain ratio ρ > 0.75; otherwise
    Nielsen's ``max(1/3, 1 − (2ρ − 1)³)``): far below Nielsen's 1/3 lets λ fall as fast as
    a zero-residual problem allows; ``corrections``: after an accepted step, up to this
    many chord (lazy-Jacobian) corrections ``δ' = −(JᵀJ + λD)⁻¹ Jᵀ r(θ + δ)`` with the
    same ``J`` and factorisation (one residual and one ``Jᵀu`` each, kept only while they
    lower ``‖r‖²``; direct routes ``"cholesky"``/``"eigh"``/``"svd"`` only).
    """

    damping: float = 1e-3
    damping_floor: float = 1e-30
    damping_max: float = 1e20
    solver: str = "auto"
    max_direct: int = 6000
    cg_iters: int = 200
    cg_tol: float = 1e-14
    max_rejects: int = 12
    scaling: str = "identity"
    shrink: float = 0.01
    geodesic: bool = False
    eig_rtol: float = 1e-20
    corrections: int = 0

    def __post_init__(self) -> None:
        if not self.damping > 0:
            raise ValueError(f"damping must be > 0 (a positive initial λ such as 1e-3), got "
                             f"{self.damping}")
        if not 0 < self.damping_floor <= self.damping <= self.damping_max:
            raise ValueError(f"need 0 < damping_floor <= damping <= damping_max, got "
                             f"{self.damping_floor}, {self.damping}, {self.damping_max}")
        check_choice(self.solver, "solver", SOLVERS)
        for name in ("max_direct", "cg_iters", "max_rejects"):
            check_positive_int(getattr(self, name), name)
        check_nonnegative_int(self.corrections, "corrections")
        check_positive_float(self.eig_rtol, "eig_rtol")
        check_choice(self.scaling, "scaling", ("marquardt", "identity"))
        if not 0 < self.shrink < 1:
            raise ValueError(f"shrink must be in (0, 1), got {self.shrink}")
        check_positive_float(self.cg_tol, "cg_tol")


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
    rows per ``jacrev`` block (bounds memory to ``chunk × p``)."""

    def __init__(self, residuals: Callable[[torch.Tensor], torch.Tensor],
                 linearise: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 chunk: int = 512):
        self._residuals = residuals
        self._linearise = linearise or residuals
        self.chunk = chunk

    def residuals(self, theta: torch.Tensor) -> torch.Tensor:
        return self._residuals(theta).reshape(-1).to(torch.float64)

    def jacobian_blocks(self, theta: torch.Tensor) -> Iterator[torch.Tensor]:
        yield jacrev(lambda t: self._linearise(t).reshape(-1), chunk_size=self.chunk)(theta)

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


def choose_solver(m: int, p: int, max_direct: int) -> str:
    """``"dual"`` when ``m < p`` and ``m ≤ max_direct``, ``"cholesky"`` when ``p ≤
    max_direct``, else ``"cg"``."""
    if m < p and m <= max_direct:
        return "dual"
    return "cholesky" if p <= max_direct else "cg"


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


class LevenbergMarquardt:
    """The LM engine on ``problem`` from ``theta: (p,)`` (copied to float64)."""

    def __init__(self, problem: LeastSquaresProblem, theta: torch.Tensor,
                 settings: LMSettings | None = None):
        self.problem = problem
        self.settings = settings or LMSettings()
        self.theta = theta.detach().to(torch.float64).clone()
        self.damping = self.settings.damping
        self.nu = 2.0
        self.iteration = 0
        self.residual = problem.residuals(self.theta)
        self.m, self.p = self.residual.numel(), self.theta.numel()
        if self.m < self.p:
            warnings.warn(f"{self.m} residuals for {self.p} parameters: Levenberg–Marquardt "
                          f"will fit (memorise) this set without generalising; use at least "
                          f"1.5× the rank of J residuals (more training problems)",
                          stacklevel=2)
        self.solver = (self.settings.solver if self.settings.solver != "auto"
                       else choose_solver(self.m, self.p, self.settings.max_direct))
        # λ -> (u -> (JᵀJ + λD)⁻¹Jᵀu) at the last linearisation: the chord corrections
        self._chord: Callable[[float], Any] | None = None

    @property
    def loss(self) -> float:
        """Mean squared residual ``‖r‖²/m``."""
        return float(self.residual.pow(2).mean())

    # ------------------------------------------------------------------ linearisation
    def normal_matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(JᵀJ, Jᵀr)`` at the current θ (:func:`normal_matrix`)."""
        return normal_matrix(self.problem, self.theta, self.residual)

    def _pullback(self) -> tuple[Callable[[float], Callable[[torch.Tensor], torch.Tensor] | None],
                                 torch.Tensor, Callable[[torch.Tensor], float]]:
        """The direct routes' linearisation at the current θ: ``(λ -> (u -> (JᵀJ + λD)⁻¹
        Jᵀu) or None when the factorisation fails, Jᵀr, v -> ‖Jv‖²)``; ``u: (m,)`` is a
        residual-space vector (the residual itself, a chord residual, a curvature)."""
        r, theta = self.residual, self.theta
        if self.solver == "svd":
            jac = torch.cat(list(self.problem.jacobian_blocks(theta)))
            scale = _scaling(jac.pow(2).sum(0), self.settings.scaling)
            return (_svd_pullback(jac, scale, self.settings.eig_rtol), jac.T @ r,
                    lambda v: float((jac @ v).pow(2).sum()))
        jtj, g = self.normal_matrix()
        scale = _scaling(jtj.diagonal(), self.settings.scaling)
        inverse = (_cholesky_inverse(jtj, scale) if self.solver == "cholesky"
                   else _eigh_inverse(jtj, scale, self.settings.eig_rtol))

        def pullback(lam: float) -> Callable[[torch.Tensor], torch.Tensor] | None:
            apply = inverse(lam)
            if apply is None:
                return None
            # Jᵀr is already known; any other u costs one vjp
            return lambda u: apply(g if u is r else self.problem.vjp(theta, u))
        return pullback, g, lambda v: float(v @ (jtj @ v))

    def _linearise(self) -> Callable[[float], tuple[torch.Tensor, float] | None]:
        """A solver ``λ -> (δ, predicted decrease of ½‖r‖²)`` (None: factorisation
        failed) for the current θ."""
        r, theta = self.residual, self.theta
        if self.solver in ("cholesky", "eigh", "svd"):
            pullback, g, jac_norm = self._pullback()
            self._chord = pullback

            def solve(lam: float) -> tuple[torch.Tensor, float] | None:
                solve_for = pullback(lam)
                if solve_for is None:
                    return None
                delta = -solve_for(r)
                predicted = float(-(delta @ g)) - 0.5 * jac_norm(delta)
                if self.settings.geodesic:
                    # Transtrum–Sethna geodesic acceleration: a second-order correction
                    # along the curvature of r in the step direction
                    accel = -solve_for(self.problem.curvature(theta, delta))
                    if 2 * accel.norm() > 0.75 * delta.norm():
                        return None
                    delta = delta + 0.5 * accel
                return delta, predicted
            return solve
        if self.solver == "dual":
            jac = torch.cat(list(self.problem.jacobian_blocks(theta)))
            inv_sqrt = _scaling(jac.pow(2).sum(0), self.settings.scaling).rsqrt()
            scaled = jac * inv_sqrt
            gram = scaled @ scaled.T
            g = jac.T @ r

            def solve(lam: float) -> tuple[torch.Tensor, float] | None:
                eye = torch.eye(self.m, dtype=gram.dtype, device=gram.device)
                factor, info = torch.linalg.cholesky_ex(gram + lam * eye)
                if info.item():
                    return None
                u = torch.cholesky_solve(r.unsqueeze(1), factor).squeeze(1)
                delta = -inv_sqrt * (scaled.T @ u)
                return delta, float(-(delta @ g) - 0.5 * (jac @ delta).pow(2).sum())
            return solve
        g = self.problem.vjp(theta, r)
        probe = torch.randn(self.p, generator=torch.Generator().manual_seed(self.iteration),
                            dtype=torch.float64).to(theta.device)
        scale = float(self.problem.jvp(theta, probe).pow(2).sum() / probe.pow(2).sum()) or 1.0

        def solve(lam: float) -> tuple[torch.Tensor, float] | None:
            def apply(v: torch.Tensor) -> torch.Tensor:
                return self.problem.vjp(theta, self.problem.jvp(theta, v)) + lam * scale * v
            delta = _conjugate_gradient(apply, -g, self.settings.cg_iters, self.settings.cg_tol)
            jd = self.problem.jvp(theta, delta)
            return delta, float(-(delta @ g) - 0.5 * jd.pow(2).sum())
        return solve

    # ------------------------------------------------------------------ iteration
    def step(self) -> dict[str, Any]:
        """One LM iteration: linearise at θ, then try ``δ(λ)`` with growing λ until
        ``‖r(θ + δ)‖² < ‖r(θ)‖²`` (accepted) or ``max_rejects`` trials (θ unchanged).

        An accepted step is followed by up to ``corrections`` chord corrections
        (:class:`LMSettings`). Returns ``{iteration, loss, damping, step_norm, accepted,
        rejects, corrections, solver, seconds}`` (``loss`` = mean squared residual after
        the step and its corrections)."""
        start = time.perf_counter()
        s = self.settings
        solve = self._linearise()
        old = float(self.residual.pow(2).sum())
        accepted, rejects, step_norm, rho = False, 0, 0.0, math.nan
        while not accepted and rejects < s.max_rejects:
            trial = solve(self.damping)
            if trial is not None:
                delta, predicted = trial
                candidate = self.theta + delta
                residual = self.problem.residuals(candidate)
                new = float(residual.pow(2).sum())
                if math.isfinite(new) and new < old:
                    rho = (old - new) / 2 / predicted if predicted > 0 else 0.0
                    self.theta, self.residual = candidate, residual
                    step_norm = float(delta.norm())
                    self.damping *= (s.shrink if rho > 0.75
                                     else max(1 / 3, 1 - (2 * rho - 1) ** 3))
                    self.nu = 2.0
                    accepted = True
                    break
            rejects += 1
            self.damping *= self.nu
            self.nu *= 2
            if self.damping >= s.damping_max:
                self.damping = s.damping_max
                break
        self.damping = min(max(self.damping, s.damping_floor), s.damping_max)
        corrections = self._correct(s.corrections) if accepted else 0
        self.iteration += 1
        return {"iteration": self.iteration, "loss": self.loss, "damping": self.damping,
                "step_norm": step_norm, "gain_ratio": rho, "accepted": accepted,
                "rejects": rejects, "corrections": corrections,
                "solver": self.solver, "seconds": time.perf_counter() - start}

    def _correct(self, limit: int) -> int:
        """Up to ``limit`` chord corrections with the last linearisation (``J`` and the
        factorisation at the current λ); each is kept only if it lowers ``‖r‖²``.
        Returns how many were kept."""
        if not limit or self._chord is None:
            return 0
        solve_for = self._chord(self.damping)
        kept = 0
        while solve_for is not None and kept < limit:
            delta = -solve_for(self.residual)
            candidate = self.theta + delta
            residual = self.problem.residuals(candidate)
            new = float(residual.pow(2).sum())
            if not (math.isfinite(new) and new < float(self.residual.pow(2).sum())):
                break
            self.theta, self.residual = candidate, residual
            kept += 1
        return kept

    def run(self, iterations: int, until: float = 0.0) -> list[dict[str, Any]]:
        """Up to ``iterations`` steps, stopping once ``loss ≤ until`` or a step fails."""
        records = []
        for _ in range(iterations):
            if self.loss <= until:
                break
            records.append(self.step())
            if not records[-1]["accepted"]:
                break
        return records

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"theta": self.theta.clone(), "damping": self.damping, "nu": self.nu,
                "iteration": self.iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        theta = state["theta"]
        if theta.shape != self.theta.shape:
            raise ValueError(f"saved θ has shape {tuple(theta.shape)}, this problem has "
                             f"{tuple(self.theta.shape)}")
        self.theta = theta.to(torch.float64).clone()
        self.damping = float(state["damping"])
        self.nu = float(state["nu"])
        self.iteration = int(state["iteration"])
        self.residual = self.problem.residuals(self.theta)


def _scaling(diag: torch.Tensor, kind: str) -> torch.Tensor:
    """Marquardt's ``D = diag(JᵀJ)`` floored at ``1e-12·max``, or its mean times ``I``
    (``kind="identity"``); ones where ``J`` is all zero."""
    top = float(diag.max())
    if top <= 0:
        return torch.ones_like(diag)
    if kind == "identity":
        return torch.full_like(diag, float(diag.mean()))
    return diag.clamp_min(1e-12 * top)


def _cholesky_inverse(jtj: torch.Tensor, diag: torch.Tensor,
                      ) -> Callable[[float], Callable[[torch.Tensor], torch.Tensor] | None]:
    """``λ -> (g -> (JᵀJ + λD)⁻¹ g)`` by a Cholesky factorisation per λ (None when it
    fails: ``JᵀJ + λD`` not numerically positive definite)."""
    def inverse(lam: float) -> Callable[[torch.Tensor], torch.Tensor] | None:
        factor, info = torch.linalg.cholesky_ex(jtj + torch.diag(lam * diag))
        if info.item():
            return None
        return lambda g: torch.cholesky_solve(g.unsqueeze(1), factor).squeeze(1)
    return inverse


def _eigh_inverse(jtj: torch.Tensor, diag: torch.Tensor, rtol: float,
                  ) -> Callable[[float], Callable[[torch.Tensor], torch.Tensor]]:
    """``λ -> (g -> (JᵀJ + λD)⁻¹ g)`` from one eigendecomposition of ``S = D^{-1/2} JᵀJ
    D^{-1/2} = W Λ Wᵀ``: ``D^{-1/2} W (Λ + λ)⁻¹ Wᵀ D^{-1/2} g`` over the eigenvalues above
    ``rtol``·largest (the others dropped: a truncated pseudo-inverse, defined at any
    λ ≥ 0)."""
    inv_sqrt = diag.rsqrt()
    values, vectors = torch.linalg.eigh(jtj * inv_sqrt[:, None] * inv_sqrt[None, :])
    keep = values > rtol * values[-1].clamp_min(0)
    values, vectors = values[keep], vectors[:, keep]

    def inverse(lam: float) -> Callable[[torch.Tensor], torch.Tensor]:
        scale = 1 / (values + lam)
        return lambda g: inv_sqrt * (vectors @ (scale * (vectors.T @ (inv_sqrt * g))))
    return inverse


def _svd_pullback(jac: torch.Tensor, diag: torch.Tensor, rtol: float,
                  ) -> Callable[[float], Callable[[torch.Tensor], torch.Tensor]]:
    """``λ -> (u -> (JᵀJ + λD)⁻¹ Jᵀu)`` from one thin SVD ``J D^{-1/2} = U Σ Vᵀ`` of
    ``jac: (m, p)``: ``D^{-1/2} V Σ(Σ² + λ)⁻¹ Uᵀu`` over the singular values with ``σ² >
    rtol·σ²_max``. ``u`` is never multiplied by ``Jᵀ`` and then by ``(JᵀJ)⁻¹``, so its
    components along singular values down to ``~eps·σ_max`` survive, where the normal
    routes keep only those above ``~√eps·σ_max``."""
    inv_sqrt = diag.rsqrt()
    left, sigma, right_t = torch.linalg.svd(jac * inv_sqrt, full_matrices=False)
    keep = sigma.pow(2) > rtol * sigma[0].pow(2)
    left, sigma, right_t = left[:, keep], sigma[keep], right_t[keep]

    def pullback(lam: float) -> Callable[[torch.Tensor], torch.Tensor]:
        factor = sigma / (sigma.pow(2) + lam)
        return lambda u: inv_sqrt * (right_t.T @ (factor * (left.T @ u)))
    return pullback


def _conjugate_gradient(apply: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor,
                        iters: int, tol: float) -> torch.Tensor:
    """CG for a symmetric positive definite operator ``apply``; stops at ``‖res‖ ≤
    tol·‖rhs‖``."""
    x = torch.zeros_like(rhs)
    res = rhs.clone()
    direction = res.clone()
    rr = float(res @ res)
    stop = tol * tol * rr
    for _ in range(iters):
        if rr <= stop:
            break
        ad = apply(direction)
        alpha = rr / float(direction @ ad)
        x += alpha * direction
        res -= alpha * ad
        rr_new = float(res @ res)
        direction = res + (rr_new / rr) * direction
        rr = rr_new
    return x
