"""neuralnum.solvers.operators.AxialLearnedOperator: the shape-general operator's products
and fused step as the solvers see them (equilibrated, centred), and every method on it."""

from __future__ import annotations

import pytest
import torch
from axial_helpers import assert_within, gamma, random_problem
from hypothesis import given, settings
from hypothesis import strategies as st
from no_factorisations import no_factorisations

from neuralnum.models.axial import construct_axial_gd
from neuralnum.models.axial_stage import matrix_stats
from neuralnum.problems import reference
from neuralnum.problems.double_double import dd_matvec
from neuralnum.problems.families import SpectrumFamily
from neuralnum.solvers import operators
from neuralnum.solvers.axial_learner import AxialLearner
from neuralnum.solvers.methods import METHODS, solve
from neuralnum.solvers.operators import AxialLearnedOperator, ExactOperator
from neuralnum.solvers.spectrum import extreme_eigenvalues

pytestmark = pytest.mark.usefixtures("single_thread")
DTYPES = (torch.float32, torch.float64)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 200), d=st.integers(1, 200),
       dtype=st.sampled_from(DTYPES))
def test_products_of_the_exact_construction_are_a_matmuls(seed: int, n: int, d: int,
                                                          dtype: torch.dtype) -> None:
    A, u, v = random_problem(seed, 1, n, d, dtype)
    op = AxialLearnedOperator(construct_axial_gd(dtype).coefficients(), A, u)
    idx = torch.arange(1)
    A_eq, Aa = op.A, op.A.double().abs()
    assert_within(op.matvec(v, idx), dd_matvec(A_eq, v),
                  gamma(d, dtype) * (Aa @ v.double().abs()[..., None])[..., 0])
    assert_within(op.rmatvec(u, idx), dd_matvec(A_eq.mT, u),
                  gamma(n, dtype) * (Aa.mT @ u.double().abs()[..., None])[..., 0])


def test_a_learned_constant_offset_cancels_in_the_products():
    """Centring: an offset added to the row stage's output (``r + c``) and to the column
    stage's (``g + c'``) leaves both products and the fused step's solution unchanged."""
    model = construct_axial_gd()
    with torch.no_grad():
        model.rows.skip[1] = 0.75  # r ← r + 0.75
        model.cols.skip[1] = -0.5  # g ← g − 0.5
    P = SpectrumFamily(n=12, d=4, cond=5.0).sample(3, torch.Generator().manual_seed(1))
    exact, learned = ExactOperator(P.A, P.b), AxialLearnedOperator(model.coefficients(), P.A,
                                                                   P.b)
    v, u, idx = torch.randn(3, 4, dtype=torch.float64), P.b, torch.arange(3)
    torch.testing.assert_close(learned.matvec(v, idx), exact.matvec(v, idx))
    torch.testing.assert_close(learned.rmatvec(u, idx), exact.rmatvec(u, idx))
    x, _ = solve(learned, "cg")
    torch.testing.assert_close(x, reference.lstsq(P.A, P.b), rtol=1e-10, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_column_balancing_refreshes_what_the_operator_derived_from_a(dtype, monkeypatch):
    """The Lanczos runs before and after balancing see the moments (``Σ a²``, ``Σ a``)
    and the centring offsets of the ``A`` they run on, not of the one before."""
    coefficients = AxialLearner(seed=0).coefficients()  # untrained: reads the moments
    assert coefficients.needs_stats(dtype)
    P = SpectrumFamily(n=12, d=4, cond=5.0).sample(3, torch.Generator().manual_seed(1), dtype)
    A = P.A * torch.tensor([1.0, 64.0, 1.0, 1 / 64], dtype=dtype)  # columns 12 binades apart
    op = AxialLearnedOperator(coefficients, A, P.b)
    calls = []

    def checked(operator, start, steps):
        stats = operator._moments(operator._every, operator.A)
        for derived, fresh in zip(stats, matrix_stats(operator.A), strict=True):
            torch.testing.assert_close(derived, fresh, rtol=0, atol=0)
        rows = coefficients.row_product(operator.A, torch.zeros_like(P.A[:, 0]), stats)
        torch.testing.assert_close(operator._centred("rows", rows, operator._every),
                                   rows - rows, rtol=0, atol=0)
        calls.append(steps)
        return extreme_eigenvalues(operator, start, steps)

    monkeypatch.setattr(operators, "extreme_eigenvalues", checked)
    op.balance_columns()
    assert calls == [4, 4]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_method_on_the_exact_construction_matches_the_exact_operator(method, dtype):
    P = SpectrumFamily(n=15, d=5, cond=5.0).sample(4, torch.Generator().manual_seed(2), dtype)
    coefficients = construct_axial_gd().coefficients()
    with no_factorisations(pytest.MonkeyPatch()):
        x, info = solve(AxialLearnedOperator(coefficients, P.A, P.b), method)
    x_exact, exact = solve(ExactOperator(P.A, P.b), method)
    eps = torch.finfo(dtype).eps
    assert (reference.relative_error(x, x_exact) < 1e3 * eps).all()
    if method in ("lsqr", "cgls"):  # the same arithmetic: the same iterations
        assert torch.equal(info.iterations, exact.iterations)
