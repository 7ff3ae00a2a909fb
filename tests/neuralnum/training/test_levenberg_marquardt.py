"""neuralnum.training.levenberg_marquardt: the LM engine, its linear solvers, damping and resume
(on the problems of neuralnum.training.lm_problems)."""

import math

import pytest
import torch
from learner_standins import one_thread  # noqa: F401 (autouse fixture)

from neuralnum.training.levenberg_marquardt import LevenbergMarquardt, LMSettings, choose_solver
from neuralnum.training.lm_problems import FunctionalProblem, PerSampleProblem, numerical_rank

# ---------------------------------------------------------------- a 2-layer polynomial net
SHAPES = [(4, 3), (4,), (2, 4)]  # W1, c1, W2: y = W2 (W1 x + c1)²


def net(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x: (B, 3)`` → ``(B, 2)`` with ``θ: (24,)`` (float64 or float32)."""
    w1, c1, w2 = (t.view(s) for t, s in zip(theta.split([12, 4, 8]), SHAPES, strict=True))
    return ((x @ w1.T + c1) ** 2) @ w2.T


def teacher_problem(samples: int = 40, noise: float = 0.1, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(24, generator=gen, dtype=torch.float64)
    x = torch.randn(samples, 3, generator=gen, dtype=torch.float64)
    y = net(teacher, x)
    start = teacher + noise * torch.randn(24, generator=gen, dtype=torch.float64)
    return x, y, start


def per_sample(x, y):
    def residual(theta, xi, yi):
        return net(theta, xi[None])[0] - yi

    def evaluate(theta, xs, ys):
        return net(theta, xs) - ys
    return PerSampleProblem(residual, evaluate, (x, y), chunk=16)


@pytest.mark.parametrize("kind, geodesic, solver, corrections", [
    ("functional", False, "auto", 0), ("per_sample", False, "auto", 0),
    ("per_sample", True, "auto", 0), ("per_sample", False, "eigh", 0),
    ("per_sample", True, "eigh", 2), ("per_sample", True, "svd", 2)])
def test_fits_a_same_shape_teacher_to_machine_precision(kind, geodesic, solver, corrections):
    x, y, start = teacher_problem()
    problem = (FunctionalProblem(lambda t: net(t, x) - y, chunk=32) if kind == "functional"
               else per_sample(x, y))
    lm = LevenbergMarquardt(problem, start, LMSettings(geodesic=geodesic, solver=solver,
                                                       corrections=corrections))
    assert lm.loss > 1e-4
    records = lm.run(40, until=1e-28)
    assert lm.loss <= 1e-25, [r["loss"] for r in records]
    assert lm.solver == ("cholesky" if solver == "auto" else solver)


def test_per_sample_and_functional_linearisations_agree():
    x, y, start = teacher_problem(samples=10)
    a, b = FunctionalProblem(lambda t: net(t, x) - y), per_sample(x, y)
    ja, jb = torch.cat(list(a.jacobian_blocks(start))), torch.cat(list(b.jacobian_blocks(start)))
    torch.testing.assert_close(ja, jb)
    v, u = torch.randn(24, dtype=torch.float64), torch.randn(20, dtype=torch.float64)
    torch.testing.assert_close(b.jvp(start, v), ja @ v)
    torch.testing.assert_close(b.vjp(start, u), ja.T @ u)


def test_curvature_is_the_second_directional_derivative():
    x, y, start = teacher_problem(samples=10)
    v = torch.randn(24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    h = 1e-4
    f = lambda t: (net(t, x) - y).reshape(-1)  # noqa: E731
    second = (f(start + h * v) - 2 * f(start) + f(start - h * v)) / h ** 2
    for problem in (FunctionalProblem(lambda t: net(t, x) - y), per_sample(x, y)):
        torch.testing.assert_close(problem.curvature(start, v), second, rtol=1e-5, atol=1e-5)


def ill_conditioned_linear_problem(sigma_min: float, m: int = 30, p: int = 20):
    """``r(θ) = Jθ − y``, ``J: (m, p)`` with singular values ``1 … sigma_min`` (geometric),
    ``y = Jθ*`` for a unit ``θ*`` (a zero-residual problem), from ``θ = 0``."""
    gen = torch.Generator().manual_seed(3)
    left = torch.linalg.qr(torch.randn(m, p, generator=gen, dtype=torch.float64))[0]
    right = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=torch.float64))[0]
    jac = left * torch.logspace(0, math.log10(sigma_min), p, dtype=torch.float64) @ right.T
    truth = torch.randn(p, generator=gen, dtype=torch.float64)
    y = jac @ (truth / truth.norm())
    return FunctionalProblem(lambda t: jac @ t - y), torch.zeros(p, dtype=torch.float64)


def test_the_svd_route_resolves_directions_the_normal_equations_lose():
    """κ(J) = 1e12: the normal equations square it past 1/eps, so Cholesky and eigh of
    ``JᵀJ`` cannot remove the residual along the weakest directions; one SVD of ``J``
    works on the residual itself and reaches roundoff."""
    problem, start = ill_conditioned_linear_problem(1e-12)
    losses = {}
    for solver in ("cholesky", "eigh", "svd"):
        settings = LMSettings(solver=solver, damping=1e-30, damping_floor=1e-30,
                              eig_rtol=1e-30)
        lm = LevenbergMarquardt(problem, start, settings)
        lm.run(10)
        losses[solver] = lm.loss
    assert losses["svd"] < 1e-30, losses
    assert min(losses["cholesky"], losses["eigh"]) > 1e4 * losses["svd"], losses


def test_geodesic_acceleration_adds_the_second_order_correction():
    """``r(θ) = θ² − 4`` from 3: δ = −r/J = −5/6, r_vv = 2δ², a = −r_vv/J; the step is
    δ + a/2 (closer to the root 2 than Gauss–Newton's 3 − 5/6)."""
    problem = FunctionalProblem(lambda t: t ** 2 - 4)
    settings = LMSettings(damping=1e-15, damping_floor=1e-15, geodesic=True)
    lm = LevenbergMarquardt(problem, torch.tensor([3.0], dtype=torch.float64), settings)
    lm.step()
    delta = -5 / 6
    expected = 3 + delta + 0.5 * (-2 * delta ** 2 / 6)
    assert lm.theta.item() == pytest.approx(expected, rel=1e-12)


def test_a_chord_correction_reuses_the_first_jacobian():
    """``r(θ) = θ² − 4`` from 3 (``J = 6``): the step δ = −5/6, then one chord correction
    ``−r(θ₁)/6`` with the Jacobian of θ = 3 (Newton would divide by ``2θ₁``)."""
    problem = FunctionalProblem(lambda t: t ** 2 - 4)
    for solver in ("cholesky", "eigh", "svd"):
        settings = LMSettings(damping=1e-15, damping_floor=1e-15, solver=solver,
                              corrections=1)
        lm = LevenbergMarquardt(problem, torch.tensor([3.0], dtype=torch.float64), settings)
        record = lm.step()
        first = 3 - 5 / 6
        assert record["corrections"] == 1
        assert lm.theta.item() == pytest.approx(first - (first ** 2 - 4) / 6, rel=1e-12)


def test_a_correction_that_raises_the_loss_is_not_kept():
    """At the minimum after one exact step of a linear problem, no correction lowers the
    loss: none is kept and θ is the least-squares answer."""
    A, y, problem = linear_problem(30, 8)
    settings = LMSettings(damping=1e-14, damping_floor=1e-14, solver="eigh", corrections=3)
    lm = LevenbergMarquardt(problem, torch.zeros(8, dtype=torch.float64), settings)
    before = lm.loss
    record = lm.step()
    assert record["accepted"] and record["corrections"] == 0
    assert lm.loss < before
    torch.testing.assert_close(lm.theta, torch.linalg.pinv(A) @ y, rtol=1e-9, atol=1e-9)


def test_eigh_takes_the_minimum_norm_step_on_a_rank_deficient_jacobian():
    """``J`` of rank 3 (10 parameters) at λ = 1e-30: the truncated eigendecomposition gives
    the minimum-norm least-squares step ``J⁺ y``; Cholesky cannot factor ``JᵀJ + λD``."""
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(40, 3, generator=gen, dtype=torch.float64) @ torch.randn(
        3, 10, generator=gen, dtype=torch.float64)
    y = torch.randn(40, generator=gen, dtype=torch.float64)
    problem = FunctionalProblem(lambda t: A @ t - y)
    tiny = LMSettings(damping=1e-30, damping_floor=1e-30, solver="eigh", eig_rtol=1e-12)
    lm = LevenbergMarquardt(problem, torch.zeros(10, dtype=torch.float64), tiny)
    assert lm.step()["rejects"] == 0
    torch.testing.assert_close(lm.theta, torch.linalg.pinv(A) @ y, rtol=1e-8, atol=1e-8)
    chol = LevenbergMarquardt(problem, torch.zeros(10, dtype=torch.float64),
                              LMSettings(damping=1e-30, damping_floor=1e-30, max_rejects=1))
    assert chol.step()["rejects"] == 1


def test_float32_residuals_are_minimised_with_a_float64_master():
    x, y, start = teacher_problem()
    problem = FunctionalProblem(lambda t: (net(t.float(), x.float()) - y.float()).double(),
                                linearise=lambda t: net(t, x) - y)
    lm = LevenbergMarquardt(problem, start)
    floor = float(y.pow(2).mean()) * torch.finfo(torch.float32).eps ** 2  # float32 rounding
    lm.run(40, until=floor)
    assert lm.theta.dtype == torch.float64
    assert lm.loss <= 10 * floor


# ---------------------------------------------------------------- the three linear solvers
def linear_problem(m: int, p: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(m, p, generator=gen, dtype=torch.float64)
    y = torch.randn(m, generator=gen, dtype=torch.float64)
    return A, y, FunctionalProblem(lambda t: A @ t - y)


@pytest.mark.parametrize("solver, m, p", [("cholesky", 30, 8), ("eigh", 30, 8), ("cg", 30, 8),
                                          ("dual", 6, 20),
                                          ("auto", 30, 8), ("auto", 6, 20)])
def test_each_solver_finds_the_least_squares_answer(solver, m, p):
    """Linear residuals ``Aθ − y``: one step at tiny damping is the (minimum-norm, from
    θ = 0, Levenberg scaling) least-squares solution."""
    A, y, problem = linear_problem(m, p)
    settings = LMSettings(damping=1e-14, damping_floor=1e-14, solver=solver,
                          scaling="identity", cg_iters=p + 2)  # CG: exact in p steps
    if m < p:
        with pytest.warns(UserWarning, match="more training problems"):
            lm = LevenbergMarquardt(problem, torch.zeros(p, dtype=torch.float64), settings)
    else:
        lm = LevenbergMarquardt(problem, torch.zeros(p, dtype=torch.float64), settings)
    record = lm.step()
    assert record["accepted"]
    assert record["solver"] == (solver if solver != "auto" else choose_solver(m, p, 6000))
    expected = torch.linalg.pinv(A) @ y
    torch.testing.assert_close(lm.theta, expected, rtol=1e-9, atol=1e-9)


def test_choose_solver_by_size():
    assert choose_solver(100, 50, 6000) == "cholesky"
    assert choose_solver(50, 100, 6000) == "dual"
    assert choose_solver(10_000, 8000, 6000) == "cg"
    assert choose_solver(7000, 8000, 6000) == "cg"


def test_numerical_rank_of_a_rank_deficient_jacobian():
    gen = torch.Generator().manual_seed(0)
    J = torch.randn(40, 3, generator=gen, dtype=torch.float64) @ torch.randn(
        3, 10, generator=gen, dtype=torch.float64)
    rank, cond = numerical_rank(J.T @ J)
    assert rank == 3
    s = torch.linalg.svdvals(J)
    assert math.isclose(cond, float(s[0] / s[2]) ** 2, rel_tol=1e-6)


# ---------------------------------------------------------------- damping and acceptance
def rosenbrock():
    return FunctionalProblem(lambda t: torch.stack([10 * (t[1] - t[0] ** 2), 1 - t[0]]))


def test_a_step_that_raises_the_loss_is_never_accepted():
    """Rosenbrock from (−1.2, 1) at tiny damping: the first Gauss–Newton trial overshoots;
    it must be rejected (λ grows) and every accepted step must lower the loss."""
    lm = LevenbergMarquardt(rosenbrock(), torch.tensor([-1.2, 1.0], dtype=torch.float64),
                            LMSettings(damping=1e-12, damping_floor=1e-12))
    losses = [lm.loss]
    rejected = 0
    for _ in range(30):
        before = lm.theta.clone()
        record = lm.step()
        rejected += record["rejects"]
        if record["accepted"]:
            assert record["loss"] < losses[-1]
        else:
            assert torch.equal(lm.theta, before)
        losses.append(lm.loss)
    assert rejected >= 1
    assert losses[-1] < 1e-20


def test_a_step_with_no_descent_leaves_theta_unchanged():
    """At the exact minimum no trial can lower the loss: θ stays, λ grows."""
    lm = LevenbergMarquardt(rosenbrock(), torch.tensor([1.0, 1.0], dtype=torch.float64),
                            LMSettings(max_rejects=3))
    record = lm.step()
    assert not record["accepted"] and record["rejects"] == 3
    assert torch.equal(lm.theta, torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert lm.damping > LMSettings().damping


def test_resume_mid_run_is_exact():
    x, y, start = teacher_problem()
    one = LevenbergMarquardt(per_sample(x, y), start)
    one.run(3)
    state = one.state_dict()
    one.run(3)
    two = LevenbergMarquardt(per_sample(x, y), torch.zeros_like(start))
    two.load_state_dict(state)
    two.run(3)
    assert torch.equal(one.theta, two.theta)
    assert (one.damping, one.nu, one.iteration) == (two.damping, two.nu, two.iteration)


def test_resume_after_a_failed_step_keeps_the_damping_growth():
    """After a step whose trials were all rejected, ν (the growth of λ) must survive."""
    settings = LMSettings(max_rejects=2)
    one = LevenbergMarquardt(rosenbrock(), torch.tensor([1.0, 1.0], dtype=torch.float64),
                             settings)
    one.step()
    two = LevenbergMarquardt(rosenbrock(), torch.tensor([1.0, 1.0], dtype=torch.float64),
                             settings)
    two.load_state_dict(one.state_dict())
    one.step()
    two.step()
    assert one.damping == two.damping and one.nu == two.nu


# ---------------------------------------------------------------- bad settings
@pytest.mark.parametrize("bad, match", [
    ({"damping": 0.0}, "damping must be in"), ({"damping": -1.0}, "damping must be in"),
    ({"damping_floor": 1.0}, r"damping must be in \[1, "), ({"damping_floor": 0.0},
                                                             r"damping_floor must be in \(0"),
    ({"solver": "qr"}, "solver"),
    ({"cg_iters": 0}, "cg_iters"), ({"shrink": 1.0}, "shrink"), ({"scaling": "x"}, "scaling"),
    ({"corrections": -1}, "corrections"), ({"eig_rtol": 0.0}, "eig_rtol"),
])
def test_bad_settings_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        LMSettings(**bad)


def test_too_few_residuals_warns_naming_the_fix():
    _, _, problem = linear_problem(5, 20)
    with pytest.warns(UserWarning, match="1.5× the rank of J"):
        LevenbergMarquardt(problem, torch.zeros(20, dtype=torch.float64))


def test_resume_rejects_a_different_parameter_count():
    _, _, problem = linear_problem(30, 8)
    lm = LevenbergMarquardt(problem, torch.zeros(8, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        lm.load_state_dict({"theta": torch.zeros(9, dtype=torch.float64), "damping": 1.0,
                            "nu": 2.0, "iteration": 0})
