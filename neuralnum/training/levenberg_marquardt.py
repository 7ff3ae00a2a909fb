"""Levenberg–Marquardt / Gauss–Newton on a least-squares problem ``min_θ ½‖r(θ)‖²``.

The engine works on a flat float64 parameter vector ``θ: (p,)`` and a
:class:`~neuralnum.training.lm_problems.LeastSquaresProblem`. Each iteration
(:meth:`LevenbergMarquardt.step`) linearises once and solves ``(JᵀJ + λD) δ = −Jᵀr`` by the
cheapest exact route (:func:`choose_solver`): Cholesky of the ``p × p`` normal matrix, the
dual ``m × m`` form ``δ = −D^{-1/2}J̃ᵀ(J̃J̃ᵀ + λI)^{-1} r`` (``J̃ = J D^{-1/2}``) when there
are fewer residuals than parameters, or Gauss–Newton-CG with ``jvp``/``vjp`` when neither
fits in memory; ``solver="eigh"`` replaces the Cholesky factorisation by one truncated
eigendecomposition of the scaled ``JᵀJ``, and ``solver="svd"`` by one thin SVD of the
scaled ``J`` (no squared condition number: see :class:`LMSettings`).

``D = mean(diag(JᵀJ))·I`` (Levenberg; ``λ`` is relative; ``scaling="marquardt"`` gives
``diag(JᵀJ)``, whose huge steps along ill-determined directions stall on BaseConv) for the
direct solvers and ``D = s·I`` (``s`` = mean curvature from one random probe) for CG.
Damping follows the gain ratio ``ρ``: very good steps (``ρ > 0.75``) ``λ ← shrink·λ``,
other accepted steps Nielsen's ``λ ← λ·max(1/3, 1 − (2ρ − 1)³)``, rejected ``λ ← λ·ν,
ν ← 2ν``; clamped to ``[damping_floor, damping_max]``. A step is accepted only when it
strictly lowers ``‖r‖²``; ``corrections`` chord steps may follow it (:class:`LMSettings`).
The state (``θ, λ, ν``, counters) round-trips through
:meth:`~LevenbergMarquardt.state_dict` for an exact resume.

Where Gauss–Newton converges only linearly: on a nearly singular solution manifold —
e.g. BaseConv channels with both factors at zero, where the zero-loss weights form two
crossing branches and the residual is quadratic in the weights —
:func:`neuralnum.training.finisher.finish_lm` first snaps such channels onto one branch.

Why hand-written rather than a library: the finisher needs float64 master parameters
for a float32 model, a per-sample ``vmap(jacrev)`` Jacobian, four linear-solve routes,
rank-sized training sets and an exact resume, all on a pure residual function of a flat
vector; ``torch-levenberg-marquardt`` trains a module in its own loop, and
``curvlinops-for-pytorch``'s GGN operator would replace only the two ``torch.func`` calls
of the CG route.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from neuralnum.core.validation import (
    check_config_choices,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    check_range,
)
from neuralnum.training.lm_problems import LeastSquaresProblem, normal_matrix

__all__ = ["SOLVERS", "LMSettings", "LevenbergMarquardt", "choose_solver"]

Solver = Literal["auto", "cholesky", "eigh", "svd", "dual", "cg"]
SOLVERS: tuple[str, ...] = Solver.__args__


@dataclass(frozen=True)
class LMSettings:
    """Settings of :class:`LevenbergMarquardt`.

    ``damping``: initial λ (relative to ``D``); ``damping_floor``/``damping_max`` clamp it.
    ``solver``: one of :data:`SOLVERS`. ``"eigh"``: one eigendecomposition of the scaled
    ``JᵀJ`` per iteration, eigenvalues below ``eig_rtol``·largest dropped — a truncated
    pseudo-inverse that never fails at tiny λ, and every further trial λ costs a
    matrix-vector product instead of a factorisation. ``"svd"``: one thin SVD of the
    scaled ``J`` itself, singular values with ``σ² ≤ eig_rtol·σ²_max`` dropped, applied to
    residual-space vectors, so directions down to ``σ/σ_max ≈ eps`` are resolved where the
    normal routes lose everything below ``≈ √eps`` (at about five times the cost of a
    Cholesky iteration). ``max_direct``: the largest ``p`` (Cholesky, eigh, svd) or ``m``
    (dual) solved by a dense factorisation; ``cg_iters``/``cg_tol``: the GN-CG inner solve
    (relative residual); ``max_rejects``: rejected trials per :meth:`~LevenbergMarquardt.step`.
    ``scaling``: ``D = diag(JᵀJ)`` (``"marquardt"``) or ``mean(diag(JᵀJ))·I``
    (``"identity"``, Levenberg: short steps along ill-determined directions).
    ``geodesic``: add Transtrum–Sethna geodesic acceleration ``½a``, ``(JᵀJ + λD) a =
    −Jᵀ r_vv`` with ``r_vv`` the second directional derivative along δ (direct routes; a
    trial with ``2‖a‖ > 0.75‖δ‖`` is rejected): it keeps the gain ratio near 1 and takes
    far longer steps along a curved valley, where plain LM crawls with λ stuck small.
    ``shrink``: the factor λ is multiplied by after a very good step (gain ratio ρ > 0.75;
    otherwise Nielsen's ``max(1/3, 1 − (2ρ − 1)³)``): far below Nielsen's 1/3 lets λ fall
    as fast as a zero-residual problem allows. ``corrections``: after an accepted step, up
    to this many chord (lazy-Jacobian) corrections ``δ' = −(JᵀJ + λD)⁻¹ Jᵀ r(θ + δ)`` with
    the same ``J`` and factorisation (one residual and one ``Jᵀu`` each, kept only while
    they lower ``‖r‖²``; direct routes ``"cholesky"``/``"eigh"``/``"svd"`` only).
    """

    damping: float = 1e-3
    damping_floor: float = 1e-30
    damping_max: float = 1e20
    solver: Solver = "auto"
    max_direct: int = 6000
    cg_iters: int = 200
    cg_tol: float = 1e-14
    max_rejects: int = 12
    scaling: Literal["identity", "marquardt"] = "identity"
    shrink: float = 0.01
    geodesic: bool = False
    eig_rtol: float = 1e-20
    corrections: int = 0

    def __post_init__(self) -> None:
        check_config_choices(self)
        check_range(self.damping_floor, "damping_floor", 0, low_open=True)
        check_range(self.damping, "damping", self.damping_floor, self.damping_max)
        for name in ("max_direct", "cg_iters", "max_rejects"):
            check_positive_int(getattr(self, name), name)
        check_nonnegative_int(self.corrections, "corrections")
        check_positive_float(self.eig_rtol, "eig_rtol")
        check_positive_float(self.cg_tol, "cg_tol")
        check_range(self.shrink, "shrink", 0, 1, low_open=True, high_open=True)


def choose_solver(m: int, p: int, max_direct: int) -> str:
    """``"dual"`` when ``m < p`` and ``m ≤ max_direct``, ``"cholesky"`` when ``p ≤
    max_direct``, else ``"cg"``."""
    if m < p and m <= max_direct:
        return "dual"
    return "cholesky" if p <= max_direct else "cg"


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
