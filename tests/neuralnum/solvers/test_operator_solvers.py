"""neuralnum.solvers.krylov: CG / Chebyshev / GD that see A only through the operator."""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from learner_standins import one_thread  # noqa: F401 (autouse fixture)
from no_factorisations import no_factorisations

import neuralnum
from neuralnum.models import construct
from neuralnum.problems import reference
from neuralnum.problems.families import GaussianFamily, RankDeficientFamily, SpectrumFamily
from neuralnum.solvers import krylov
from neuralnum.solvers.krylov import DIVERGED, SolveWarning, solve
from neuralnum.solvers.learner import Learner
from neuralnum.solvers.operators import ExactOperator, LearnedOperator
from neuralnum.solvers.spectrum import extreme_eigenvalues
from neuralnum.training.recipe import Recipe

DTYPES = [torch.float32, torch.float64]
NAME = {torch.float32: "float32", torch.float64: "float64"}
N, D = 8, 3
METHODS = ["cg", "chebyshev", "gd"]


def exact_learner(dtype, n=N, d=D):
    """Linear attention set to the exact construction: the model computes Aᵀ(Ax − b)/n."""
    return Learner("linear_attention", "gd", Recipe(dtype=NAME[dtype]), n=n,
                   d=d).init_construction()


LEARNERS = {dtype: exact_learner(dtype) for dtype in DTYPES}


def sample(family, batch, seed, dtype):
    return family.sample(batch, torch.Generator().manual_seed(seed), dtype)


def kappa(A):
    return reference.condition_number(A)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10**6), cond=st.floats(1.0, 10.0), noisy=st.booleans())
def test_learned_cg_with_exact_model_equals_exact_cg_and_reaches_the_bound(dtype, seed,
                                                                          cond, noisy):
    P = sample(SpectrumFamily(n=N, d=D, cond=cond, spectrum="geometric",
                              noise=1e-2 if noisy else 0.0), 4, seed, dtype)
    x_learned = LEARNERS[dtype].solve(P.A, P.b)
    x_exact, info = solve(ExactOperator(P.A, P.b), "cg")
    assert info.converged.all() and LEARNERS[dtype].last_solve.converged.all()
    u = torch.finfo(dtype).eps / 2
    bound = 100 * kappa(P.A) ** 2 * u  # the normal-equations bound κ²·u (c = 100)
    assert (reference.relative_error(x_learned, x_exact) <= bound).all()
    x_ref = reference.lstsq(P.A.double(), P.b.double(), method="mpmath")
    assert (reference.relative_error(x_learned, x_ref) <= bound).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_method_converges_in_both_dtypes(method, dtype):
    P = sample(SpectrumFamily(n=N, d=D, cond=3.0), 5, 1, dtype)
    x = LEARNERS[dtype].solve(P.A, P.b, method)
    info = LEARNERS[dtype].last_solve
    assert x.dtype == dtype and info.method == method and info.converged.all()
    x_ref = reference.lstsq(P.A.double(), P.b.double())
    assert (reference.relative_error(x, x_ref) <= 1e3 * torch.finfo(dtype).eps).all()
    # 1 initial call; CG: 2 per iteration + one g(0; b=0); the others: 1 per iteration
    # plus the Lanczos steps (min(d, 20)) and g(0; b=0)
    extra = 1 if method == "cg" else D + 1
    per = 2 if method == "cg" else 1
    assert torch.equal(info.model_calls, 1 + extra + per * info.iterations)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10**6), cond=st.sampled_from([10.0, 1e3, 1e5]),
       method=st.sampled_from(METHODS))
def test_returned_iterate_is_the_best_and_more_iterations_never_lose(seed, cond, method):
    P = sample(SpectrumFamily(n=N, d=D, cond=cond, spectrum="geometric", noise=1e-3), 3,
               seed, torch.float64)
    op = ExactOperator(P.A, P.b)
    x, info = solve(op, method, iters=40, record=True)
    every = torch.arange(3)

    def residual(z):
        return op.gradient(op.to_equilibrated(z), every).norm(dim=1)

    history = torch.stack([residual(h) for h in info.history])
    assert torch.equal(residual(x), history.min(dim=0).values)
    previous = None
    for budget in (5, 10, 20, 40):
        x_k, _ = solve(ExactOperator(P.A, P.b), method, max_iters=budget, warn=False)
        r = residual(x_k)
        assert previous is None or (r <= previous).all()
        previous = r


@pytest.mark.parametrize("dtype", DTYPES)
def test_scaling_A_or_b_by_powers_of_two_changes_nothing(dtype):
    P = sample(SpectrumFamily(n=N, d=D, cond=5.0), 3, 2, dtype)
    learner = LEARNERS[dtype]
    x = learner.solve(P.A, P.b)
    big = 600 if dtype == torch.float64 else 60
    for ea, eb in ((big, 0), (-big, 3), (7, -big), (-big // 2, big // 2)):
        xs = learner.solve(P.A * 2.0**ea, P.b * 2.0**eb)
        assert torch.equal(xs, x * 2.0 ** (eb - ea))
    if dtype == torch.float64:  # scipy solves A·1e200; so must the learned solver
        x200 = learner.solve(P.A * 1e200, P.b)
        assert torch.isfinite(x200).all()
        assert (reference.relative_error(x200 * 1e200, x) < 1e-13).all()


def test_batch_problems_stop_independently_and_record_calls():
    P = sample(SpectrumFamily(n=N, d=D, cond=2.0), 3, 4, torch.float64)
    hard = sample(SpectrumFamily(n=N, d=D, cond=1e4, spectrum="geometric"), 1, 4,
                  torch.float64)
    A = torch.cat([P.A, hard.A])
    b = torch.cat([P.b, hard.b])
    b[0] = 0  # x = 0 solves it before any iteration
    learner = LEARNERS[torch.float64]
    x = learner.solve(A, b, "gd", max_iters=300, warn=False)
    info = learner.last_solve
    assert torch.equal(x[0], torch.zeros(D, dtype=torch.float64))
    # its only calls: g(0) and the learned offset g(0; b = 0) the residual is centred by
    assert info.iterations[0] == 0 and info.model_calls[0] == 2
    assert info.iterations[3] == 300 > info.iterations[1:3].max()  # κ = 1e4: GD crawls
    assert (info.model_calls[1:] > info.model_calls[0]).all()
    assert info.converged[:3].all() and info.stagnated[3]
    summary = info.summary()
    assert summary["converged"] == 3 and summary["iterations_max"] == 300


class _Poisoned(torch.nn.Module):
    """The exact construction, but NaN for problems whose first entry of b is > 0 once
    the iterate is non-zero (a model far outside its training distribution)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, tokens, *, increment=False):
        out = self.inner(tokens, increment=increment)
        bad = (tokens[:, 0, D] > 0) & (tokens[:, 0, D + 1:2 * D + 1].abs().sum(-1) > 0)
        out[bad] = math.nan
        return out


def test_diverged_problems_warn_and_return_the_best_finite_iterate():
    inner = construct.construct_linear_attention_gd(N, D, 1.0 / N, dtype=torch.float64)
    learner = Learner(_Poisoned(inner), "gd", Recipe(), n=N, d=D, d_model=2 * D + 1)
    P = sample(SpectrumFamily(n=N, d=D, cond=2.0), 6, 5, torch.float64)
    bad = P.b[:, 0] > 0
    assert 0 < bad.sum() < 6
    with pytest.warns(SolveWarning, match="diverged"):
        x = learner.solve(P.A, P.b)
    info = learner.last_solve
    assert torch.isfinite(x).all()
    assert torch.equal(info.diverged, bad) and info.converged[~bad].all()
    assert (info.status[bad] == DIVERGED).all()


def test_stagnation_far_above_the_floor_warns():
    P = sample(SpectrumFamily(n=N, d=D, cond=1e4, spectrum="geometric"), 2, 6, torch.float64)
    with pytest.warns(SolveWarning, match="stagnated"):
        _, info = solve(ExactOperator(P.A, P.b), "gd", max_iters=30)
    assert info.stagnated.all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_lanczos_extreme_eigenvalues_through_the_operator(dtype):
    P = sample(SpectrumFamily(n=N, d=D, cond=10.0), 4, 7, dtype)
    op = ExactOperator(P.A, P.b)
    r0 = -op.gradient(op.A.new_zeros(4, D), torch.arange(4))
    lmin, lmax = extreme_eigenvalues(op, r0)
    ev = torch.linalg.eigvalsh(op.A.double().mT @ op.A.double() / N)
    tol = 1e3 * torch.finfo(dtype).eps
    assert torch.allclose(lmin.double(), ev[:, 0], rtol=tol)
    assert torch.allclose(lmax.double(), ev[:, -1], rtol=tol)
    # rank-deficient: from r0 ∈ range(Aᵀ) Lanczos finds the smallest NON-zero eigenvalue
    R = sample(RankDeficientFamily(n=N, d=4, rank=2, cond=3.0), 2, 8, torch.float64)
    op = ExactOperator(R.A, R.b)
    lmin, _ = extreme_eigenvalues(op, -op.gradient(op.A.new_zeros(2, 4), torch.arange(2)))
    ev = torch.linalg.eigvalsh(op.A.mT @ op.A / N)
    assert torch.allclose(lmin, ev[:, 2], rtol=1e-8)


def test_rank_deficient_and_underdetermined_give_the_minimum_norm_solution():
    for family in (RankDeficientFamily(n=N, d=D, rank=2, cond=3.0), GaussianFamily(n=2, d=D)):
        P = sample(family, 3, 9, torch.float64)
        x_ref = reference.lstsq(P.A, P.b)
        for method in METHODS:
            x, info = solve(ExactOperator(P.A, P.b), method)
            assert info.converged.all()
            assert (reference.relative_error(x, x_ref) < 1e-10).all()


def test_a_learner_solves_other_n_than_it_was_trained_for():
    P = sample(SpectrumFamily(n=N - 3, d=D, cond=3.0), 3, 10, torch.float64)
    x = LEARNERS[torch.float64].solve(P.A, P.b)
    assert (reference.relative_error(x, reference.lstsq(P.A, P.b)) < 1e-12).all()


def test_bad_arguments():
    P = sample(SpectrumFamily(n=N, d=D), 2, 0, torch.float64)
    learner = LEARNERS[torch.float64]
    with pytest.raises(ValueError, match="method"):
        learner.solve(P.A, P.b, "lsqr")
    with pytest.raises(ValueError, match="patience"):
        learner.solve(P.A, P.b, patience=-1)
    with pytest.raises(ValueError, match="accept"):
        learner.solve(P.A, P.b, accept=0.0)
    with pytest.raises(ValueError, match="x0 must have shape"):
        learner.solve(P.A, P.b, x0=torch.zeros(2, D + 1, dtype=torch.float64))
    e2e = Learner("transformer", "solution", n=N, d=D, n_layers=1,
                  arch_options={"width": 8, "n_heads": 2})
    with pytest.raises(ValueError, match="end-to-end"):
        e2e.solve(P.A, P.b, "cg")


# ---------------------------------------------------------------- no factorisation of A
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_no_solve_path_factorises_A(monkeypatch, method, dtype):
    P = sample(SpectrumFamily(n=N, d=D, cond=4.0), 3, 11, dtype)
    learner = LEARNERS[dtype]
    # the canonical form of the weights (a QR of the query-key form, never of A) is
    # computed once per set of weights, before any problem is seen
    learner.solver_forward()
    with no_factorisations(monkeypatch):
        x = learner.solve(P.A, P.b, method)
        result = neuralnum.lstsq(P.A[0], P.b[:2].T, solver=learner, method=method)
        x_exact, _ = solve(ExactOperator(P.A, P.b), method)
    assert learner.last_solve.converged.all() and result.converged.all()
    assert (reference.relative_error(x, x_exact) < 1e3 * torch.finfo(dtype).eps).all()


def test_the_guard_catches_a_planted_svd(monkeypatch):
    """Plant an SVD-based step size back into the solver: the guard must notice."""
    P = sample(SpectrumFamily(n=N, d=D, cond=4.0), 2, 12, torch.float64)
    original = krylov._spectrum

    def planted(op, r0):
        torch.linalg.svdvals(op.A)
        return original(op, r0)

    monkeypatch.setattr(krylov, "_spectrum", planted)
    with no_factorisations(monkeypatch), pytest.raises(AssertionError, match="svdvals"):
        LEARNERS[torch.float64].solve(P.A, P.b, "gd")


def test_learned_operator_counts_calls_and_never_calls_on_nonfinite_x():
    P = sample(SpectrumFamily(n=N, d=D), 2, 13, torch.float64)
    op = LearnedOperator(LEARNERS[torch.float64], P.A, P.b)
    x = torch.zeros(2, D, dtype=torch.float64)
    x[1] = math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = op.gradient(x, torch.arange(2))
    assert torch.isfinite(g[0]).all() and torch.isnan(g[1]).all()
    assert torch.equal(op.calls, torch.tensor([2, 1]))  # g(0; b = 0) only where x is finite


@pytest.mark.parametrize("dtype", DTYPES)
def test_balanced_columns_make_column_scaling_by_powers_of_two_exact(dtype):
    P = sample(SpectrumFamily(n=N, d=D, cond=3.0), 3, 11, dtype)
    cols = 2.0 ** torch.tensor([0, 5, -4])  # a spread of 9 binades: balanced
    learner = LEARNERS[dtype]
    x = learner.solve(P.A * cols, P.b)
    assert learner.last_solve.converged.all()
    for shift in (torch.tensor([3, -7, 2]), torch.tensor([-20, 0, 20])):
        # the balanced problem the model sees is the same, so y is; x_j scales by 2^-shift_j
        xs = learner.solve(P.A * cols * 2.0**shift, P.b)
        assert torch.equal(xs, x * 2.0 ** -shift)
    x_ref = reference.lstsq(P.A.double() * cols.double(), P.b.double())
    assert (reference.relative_error(x, x_ref) <= 1e3 * torch.finfo(dtype).eps).all()
    op = ExactOperator(P.A * cols, P.b)
    assert op.balance_columns().all()
    every = torch.arange(3)
    assert torch.equal(op.from_equilibrated(op.to_equilibrated(x)), x)
    g_ref = op.gradient(op.to_equilibrated(x_ref.to(dtype)), every).norm(dim=1)
    g_zero = op.gradient(torch.zeros_like(x), every).norm(dim=1)
    assert (g_ref <= 1e2 * torch.finfo(dtype).eps * g_zero).all()


def test_balancing_keeps_the_minimum_norm_solution_of_rank_deficient_problems():
    P = sample(RankDeficientFamily(n=N, d=D, rank=2), 4, 12, torch.float64)
    A = P.A * 2.0 ** torch.tensor([0.0, 6.0, -5.0])  # unbalanced columns, still rank 2
    op = ExactOperator(A, P.b)
    assert not op.balance_columns().any()  # Lanczos finds M singular: left as it is
    # at most d Lanczos steps and g(0; b = 0), twice (fewer where the Krylov space ends)
    assert ((op.calls > 0) & (op.calls <= 2 * (D + 1))).all()
    x, info = solve(ExactOperator(A, P.b), "cg")
    assert info.converged.all()
    x_ref = reference.lstsq(A, P.b, method="mpmath")
    assert (reference.relative_error(x, x_ref) <= 1e-10).all()
    # an under-determined problem is never balanced (and costs no call)
    wide = sample(GaussianFamily(n=D, d=N), 2, 13, torch.float64)
    op = ExactOperator(wide.A * 2.0 ** torch.arange(N), wide.b)
    assert not op.balance_columns().any() and (op.calls == 0).all()


def test_learned_operator_presents_short_problems_at_the_trained_length(monkeypatch):
    learner = LEARNERS[torch.float64]
    P = sample(GaussianFamily(n=N // 2, d=D), 3, 15, torch.float64)
    lengths = []
    forward = learner._raw_forward

    def spy(A, b, x, **net):
        lengths.append(A.shape[1])
        return forward(A, b, x, **net)

    monkeypatch.setattr(learner, "_raw_forward", spy)
    x = learner.solve(P.A, P.b)
    assert set(lengths) == {N}  # rows repeated N / n times: AᵀA/n, Aᵀb/n unchanged
    x_ref = reference.lstsq(P.A, P.b, method="mpmath")
    assert (reference.relative_error(x, x_ref) <= 1e3 * torch.finfo(torch.float64).eps).all()
    lengths.clear()
    odd = sample(GaussianFamily(n=N - 3, d=D), 3, 15, torch.float64)  # 5 does not divide 8
    learner.solve(odd.A, odd.b)
    assert set(lengths) == {N - 3}
