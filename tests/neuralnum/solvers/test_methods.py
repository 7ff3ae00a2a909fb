"""neuralnum.solvers.methods: LSQR / CGLS on an operator's products, beside the fused
methods; equilibration, scale invariance, records, warnings and the no-factorisation
guard on the product paths."""

import warnings

import pytest
import scipy.sparse.linalg as sla
import torch
from learner_standins import ScaledGradient
from no_factorisations import no_factorisations

from neuralnum.problems import reference
from neuralnum.problems.families import GaussianFamily, SpectrumFamily, family_from_name
from neuralnum.solvers.krylov import SolveWarning
from neuralnum.solvers.learner import Learner
from neuralnum.solvers.methods import METHODS, PRODUCT_METHODS, REFINE_ACOND, solve
from neuralnum.solvers.operators import ExactOperator, LearnedOperator

pytestmark = pytest.mark.usefixtures("single_thread")
DTYPES = [torch.float32, torch.float64]


def problems(family, batch: int, seed: int, dtype=torch.float64):
    return family.sample(batch, torch.Generator().manual_seed(seed), dtype)


def test_lsqr_on_the_exact_operator_is_scipys_lsqr():
    """LSQR on the exact operator takes scipy's iterations on the problem it solves (the
    equilibrated one: A and b scaled by powers of two): the same iterates to rounding in
    the early iterations, the same istop and itn where it stops well before the Krylov
    space is exhausted (there, after ``d`` steps, rounding decides), x to rounding."""
    P = problems(GaussianFamily(n=200, d=20, scale=3.0), 6, 0)
    op = ExactOperator(P.A, P.b)
    A_eq, b_eq = op.A.clone(), op.b.clone()
    x, info = solve(op, "lsqr", atol=1e-6, btol=1e-6, record=True)
    assert (info.itn < 20).all()
    for i in range(6):
        A, b = A_eq[i].numpy(), b_eq[i].numpy()
        ref = sla.lsqr(A, b, atol=1e-6, btol=1e-6)
        assert (int(info.istop[i]), int(info.itn[i])) == (ref[1], ref[2])
        for k in (1, 2, 3, 4, int(info.itn[i])):
            early = sla.lsqr(A, b, atol=0, btol=0, conlim=0, iter_lim=k)[0] if k < ref[2] \
                else ref[0]
            x_ref = op.from_equilibrated(torch.tensor(early).expand(6, -1))[i]
            assert (info.history[k][i] - x_ref).norm() <= 1e-13 * x_ref.norm(), k
    assert torch.equal(info.history[-1], x)
    assert info.method == "lsqr" and torch.equal(info.iterations, info.itn)
    assert (info.model_calls == 1 + 2 * info.itn).all()  # Aᵀb, then one A v, one Aᵀu each


@pytest.mark.parametrize("method", PRODUCT_METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_product_methods_reach_lstsq_and_are_scale_invariant(method, dtype):
    P = problems(GaussianFamily(n=12, d=4), 4, 1, dtype)
    x, info = solve(ExactOperator(P.A, P.b), method)
    assert info.converged.all()
    eps = torch.finfo(dtype).eps
    x_ref = reference.lstsq(P.A.double(), P.b.double())
    assert (reference.relative_error(x, x_ref) < 1e3 * eps).all()
    scale = 2.0 ** (-60 if dtype == torch.float32 else 400)
    x_big, _ = solve(ExactOperator(P.A * scale, P.b), method)
    assert torch.equal(x_big, x / scale)


@pytest.mark.parametrize("method", PRODUCT_METHODS)
def test_minimum_norm_for_wide_and_rank_deficient_problems(method):
    for name in ("underdetermined", "rank_deficient"):
        P = problems(family_from_name(name), 4, 2)
        x, _ = solve(ExactOperator(P.A, P.b), method, iter_lim=60)
        assert (reference.relative_error(x, P.x_star) < 1e-12).all(), name


@pytest.mark.parametrize("method", PRODUCT_METHODS)
def test_record_is_in_the_original_coordinates_and_x0_is_used(method):
    P = problems(GaussianFamily(n=10, d=3, scale=2.0 ** 30), 2, 3)
    x, info = solve(ExactOperator(P.A, P.b), method, record=True)
    assert torch.equal(info.history[-1], x) and torch.equal(info.history[0], torch.zeros_like(x))
    _, again = solve(ExactOperator(P.A, P.b), method, x0=x)
    assert (again.itn <= 1).all()  # started at the solution


def test_hitting_the_iteration_limit_warns_naming_scipys_meaning():
    P = problems(family_from_name("ill_conditioned"), 3, 4)
    with pytest.warns(SolveWarning, match="iteration limit"):
        _, info = solve(ExactOperator(P.A, P.b), "lsqr", iter_lim=2)
    assert not info.converged.any() and (info.istop == 7).all()
    assert info.meaning(0).startswith("The iteration limit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solve(ExactOperator(P.A, P.b), "lsqr", iter_lim=2, warn=False)


def test_a_fused_learned_operator_refuses_the_product_methods():
    learner = Learner(ScaledGradient(8, 3, 1.0), "gd", n=8, d=3)
    P = problems(GaussianFamily(n=8, d=3), 2, 5)
    with pytest.raises(TypeError, match="solver='learned'"):
        solve(LearnedOperator(learner, P.A, P.b), "lsqr")
    with pytest.raises(ValueError, match="method must be one of"):
        solve(ExactOperator(P.A, P.b), "qr")
    assert set(METHODS) == {"lsqr", "cgls", "cg", "chebyshev", "gd"}


@pytest.mark.parametrize("method", PRODUCT_METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_no_product_path_factorises_A(monkeypatch, method, dtype):
    P = problems(SpectrumFamily(n=9, d=4, cond=10.0), 3, 6, dtype)
    with no_factorisations(monkeypatch):
        x, info = solve(ExactOperator(P.A, P.b), method, record=True)
    assert info.converged.all() and torch.isfinite(x).all()


def _ill(n: int, d: int, batch: int, dtype=torch.float64):
    """``ill_conditioned`` problems (κ = 1e4) and ``spectrum`` ones (κ ≈ 5) in one batch."""
    P = problems(family_from_name("ill_conditioned", n=n, d=d), batch, 7, dtype)
    Q = problems(SpectrumFamily(n=n, d=d, cond=5.0), batch, 8, dtype)
    A, b = torch.cat([P.A, Q.A]), torch.cat([P.b, Q.b])
    return A, b, reference.lstsq(A.double(), b.double(), method="mpmath")


@pytest.mark.parametrize(("method", "gain"), [("lsqr", 0.3), ("cgls", 2.0)])
def test_refinement_gains_digits_where_the_condition_estimate_is_large(method, gain):
    """One refinement step: the ill-conditioned problems (``acond ≥ REFINE_ACOND``) gain
    digits against mpmath, the well-conditioned ones are left exactly as they were; the
    record adds the correction solve's iterations and products to the first solve's."""
    A, b, x_true = _ill(24, 6, 6)
    extra = {"reorthogonalize": True} if method == "lsqr" else {}
    x0, first = solve(ExactOperator(A, b), method, warn=False, **extra)
    x1, info = solve(ExactOperator(A, b), method, refine=1, record=True, warn=False, **extra)
    assert first.refined is None
    torch.testing.assert_close(info.refined, first.acond >= REFINE_ACOND, rtol=0, atol=0)
    assert info.refined[:6].all() and not info.refined[6:].any()
    assert torch.equal(x1[6:], x0[6:])
    before = reference.digits(x0[:6], x_true[:6]).median()
    after = reference.digits(x1[:6], x_true[:6]).median()
    assert after >= before + gain, (before, after)
    assert (info.itn[:6] > first.itn[:6]).all() and torch.equal(info.itn[6:], first.itn[6:])
    assert torch.equal(info.model_calls, info.matvecs + info.rmatvecs)
    assert (info.matvecs[:6] > first.matvecs[:6] + 1).all()
    assert info.history.shape[0] == int(first.itn.max()) + 1 + int(
        (info.itn - first.itn).max()) and torch.equal(info.history[-1], x1)


def test_refine_takes_a_count():
    P = problems(GaussianFamily(n=6, d=2), 1, 0)
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError, match="refine must be an int >= 0"):
            solve(ExactOperator(P.A, P.b), "lsqr", refine=bad)
