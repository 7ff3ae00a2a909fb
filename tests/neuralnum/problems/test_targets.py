"""GD-iterate targets: the step formula, k steps, step-size rules, the contraction bound.

Bound checked: ``‖x_k − x*‖ ≤ ρ^k ‖x_0 − x*‖ + slack`` with ``ρ`` from
:func:`contraction_factor`, ``x*`` the minimum-norm solution from mpmath and ``slack`` the
accumulated rounding of the iteration in the working dtype: each step commits an error
``≲ c·u·η·σ_max·(σ_max‖x‖ + ‖b‖)``, damped geometrically, so
``slack = c·u·η·σ_max·(σ_max·max‖x‖ + ‖b‖)/(1 − ρ)`` with ``c = 10·max(n, d)``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from lsq_strategies import DTYPES, dtypes, generator, seeds, small_families, unit_roundoff

from neuralnum.problems.families import RankDeficientFamily, SpectrumFamily
from neuralnum.problems.reference import lstsq
from neuralnum.problems.targets import (
    FixedStep,
    GDStep,
    GDSteps,
    InverseLipschitzStep,
    OptimalStep,
    contraction_factor,
    gradient,
)

RULES = {"optimal": OptimalStep(), "inverse_lipschitz": InverseLipschitzStep()}


@given(small_families(), seeds, dtypes, st.sampled_from(sorted(RULES)),
       st.integers(min_value=1, max_value=30))
def test_k_gd_steps_obey_the_contraction_bound(family, seed, dtype, rule, k):
    p = family.sample(2, generator(seed), dtype)
    steps = GDSteps(k, RULES[rule])
    traj = steps.trajectory(p.A, p.b).double()  # x_0 = 0 lies in the row space
    x_star = lstsq(p.A, p.b, "mpmath", dps=30).double()
    eta = steps.step(p.A).double()
    rho = contraction_factor(p.A, steps.step(p.A)).double()
    assert (rho < 1).all()
    A, b = p.A.double(), p.b.double()
    smax = torch.linalg.svdvals(A)[:, 0]
    xmax = traj.norm(dim=2).amax(dim=0)
    c = 10 * max(family.n, family.d)
    slack = c * unit_roundoff(dtype) * eta * smax * (smax * xmax + b.norm(dim=1)) / (1 - rho)
    e0 = (traj[0] - x_star).norm(dim=1)
    for j in range(k + 1):
        assert ((traj[j] - x_star).norm(dim=1) <= rho**j * e0 * (1 + 1e-12) + slack).all()
    assert torch.equal(steps(p.A, p.b), traj[-1].to(dtype))


@given(st.floats(min_value=1.0, max_value=1e3), seeds, dtypes)
def test_contraction_factor_of_the_step_rules_is_exact(cond, seed, dtype):
    """With κ(A) = cond prescribed: ρ = (κ²−1)/(κ²+1) (optimal), 1 − 1/κ² (1/σ_max²)."""
    A = SpectrumFamily(n=6, d=3, cond=cond, spectrum="linear").sample(2, generator(seed)).A
    A = A.to(dtype)
    k2 = cond**2
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    got = contraction_factor(A, OptimalStep()(A))
    assert torch.allclose(got, torch.full_like(got, (k2 - 1) / (k2 + 1)), rtol=tol, atol=tol)
    got = contraction_factor(A, InverseLipschitzStep()(A))
    assert torch.allclose(got, torch.full_like(got, 1 - 1 / k2), rtol=tol, atol=tol)


@given(seeds)
def test_contraction_bound_is_attained_along_the_extreme_singular_vector(seed):
    p = SpectrumFamily(n=6, d=3, cond=4.0, spectrum="geometric").sample(2, generator(seed))
    _, _, vh = torch.linalg.svd(p.A, full_matrices=False)
    eta = OptimalStep()(p.A)
    rho = contraction_factor(p.A, eta)
    for v in (vh[:, 0], vh[:, -1]):  # |1 − ησ²| is maximal at both ends for the optimal η
        x1 = GDStep(OptimalStep())(p.A, p.b, p.x_star + v)
        assert torch.allclose((x1 - p.x_star).norm(dim=1), rho, rtol=1e-12)


@given(seeds, dtypes, st.floats(min_value=1e-3, max_value=1.0))
def test_gd_step_formula_and_k_steps_compose(seed, dtype, eta):
    p = SpectrumFamily(n=5, d=3).sample(3, generator(seed), dtype)
    x0 = torch.randn(3, 3, generator=generator(seed + 1), dtype=torch.float64).to(dtype)
    residual = (p.A @ x0.unsqueeze(-1)).squeeze(-1) - p.b
    grad = (p.A.transpose(1, 2) @ residual.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(gradient(p.A, p.b, x0), grad)
    grad = gradient(p.A, p.b, x0)
    one = GDStep(eta)(p.A, p.b, x0)
    assert torch.equal(one, x0 - eta * grad)
    assert torch.equal(GDStep(FixedStep(eta))(p.A, p.b, x0), one)
    x = x0
    for _ in range(3):
        x = GDStep(eta)(p.A, p.b, x)
    traj = GDSteps(3, eta).trajectory(p.A, p.b, x0)
    assert traj.shape == (4, 3, 3) and traj.dtype == dtype
    assert torch.equal(traj[0], x0) and torch.equal(traj[-1], x)
    assert torch.equal(GDSteps(0).trajectory(p.A, p.b)[0], torch.zeros_like(x0))


def test_step_rules_match_numpy_singular_values():
    A = SpectrumFamily(n=5, d=3, singular_values=(3.0, 2.0, 0.5)).sample(1, generator(0)).A
    assert torch.allclose(OptimalStep()(A), torch.tensor([2 / (9 + 0.25)], dtype=A.dtype))
    assert torch.allclose(InverseLipschitzStep()(A), torch.tensor([1 / 9], dtype=A.dtype))
    assert torch.equal(FixedStep(0.1)(A), torch.tensor([0.1], dtype=A.dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gd_converges_to_the_minimum_norm_solution_when_rank_deficient(dtype):
    p = RankDeficientFamily(n=6, d=4, rank=2, cond=2.0).sample(2, generator(5), dtype)
    x = GDSteps(120)(p.A, p.b)  # ρ = 3/5: ρ^120 ≈ 1e-27
    x_ref = lstsq(p.A, p.b, "mpmath", dps=30)
    err = (x.double() - x_ref.double()).norm(dim=1) / x_ref.double().norm(dim=1)
    assert (err < 100 * unit_roundoff(dtype)).all()


def test_bad_inputs_raise():
    A, b, x = torch.ones(2, 3, 2), torch.ones(2, 3), torch.ones(2, 2)
    with pytest.raises(ValueError, match="eta"):
        FixedStep(0.0)
    with pytest.raises(ValueError, match="k must"):
        GDSteps(-1)
    with pytest.raises(ValueError, match="x must have shape"):
        GDStep(0.1)(A, b, torch.ones(2, 3))
    with pytest.raises(TypeError, match=r"x\.dtype"):
        GDStep(0.1)(A, b, x.double())
    with pytest.raises(ValueError, match="x contains NaN"):
        GDSteps(2, 0.1)(A, b, torch.full((2, 2), float("nan")))
    with pytest.raises(TypeError, match=r"A\.dtype"):
        GDStep(0.1)(A.half(), b.half(), x.half())
