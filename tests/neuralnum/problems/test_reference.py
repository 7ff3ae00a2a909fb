"""Ground truth: scipy / numpy / mpmath agree to the conditioning bound; metrics; bad input.

The bound: a backward-stable solver in unit roundoff ``u`` returns ``x̂`` with
``‖x̂ − x‖/‖x‖ ≤ c·u·S`` where ``S = κ(2 + (κ+1)‖r‖/(‖A‖‖x‖))`` (:func:`sensitivity`):
``≈ 2κ·u`` for consistent systems (r = 0), ``κ²·u`` terms once the residual is non-zero.
We take ``c = 10·max(n, d)`` for the dimension-dependent constant.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from lsq_strategies import DTYPES, dtypes, generator, seeds, small_families, unit_roundoff

from neuralnum.problems.families import GaussianFamily
from neuralnum.problems.reference import (
    digits,
    finite_digits,
    lstsq,
    mse,
    relative_error,
    sensitivity,
    stored_solution,
)


def conditioning_bound(A, b, x_ref):
    _, n, d = A.shape
    return 10 * max(n, d) * unit_roundoff(A.dtype) * sensitivity(A, b, x_ref)


@given(small_families(), seeds, dtypes, st.sampled_from(["scipy", "numpy"]))
def test_library_solvers_agree_with_mpmath_to_the_conditioning_bound(family, seed, dtype, method):
    p = family.sample(2, generator(seed), dtype)
    x_ref = lstsq(p.A, p.b, "mpmath", dps=30)
    x = lstsq(p.A, p.b, method)
    assert x.dtype == dtype and x.shape == (2, family.d)
    assert (relative_error(x, x_ref) <= conditioning_bound(p.A, p.b, x_ref)).all()


@given(small_families(), seeds, dtypes)
def test_mpmath_solution_satisfies_the_minimum_norm_conditions(family, seed, dtype):
    """Normal equations ``Aᵀ(Ax − b) = 0`` and ``x ⟂ null(A)`` (x in the row space)."""
    p = family.sample(2, generator(seed), dtype)
    x = lstsq(p.A, p.b, "mpmath", dps=30).double()
    A, b = p.A.double(), p.b.double()
    _, s, vh = torch.linalg.svd(A, full_matrices=True)
    rank = family.matrix_rank()
    null = vh[:, rank:, :]
    r = torch.einsum("bnd,bd->bn", A, x) - b
    u = unit_roundoff(dtype)
    scale = s[:, 0] * (s[:, 0] * x.norm(dim=1) + b.norm(dim=1))
    # x is the exact solution rounded to dtype: the normal-equation residual is at that
    # roundoff, amplified by at most κ
    kappa = s[:, 0] / s[:, rank - 1]
    assert (torch.einsum("bnd,bn->bd", A, r).norm(dim=1) <= 100 * u * kappa * scale).all()
    assert (torch.einsum("brd,bd->br", null, x).norm(dim=1) <= 100 * u * x.norm(dim=1)).all()


def test_hand_examples_are_exact():
    # under-determined: min ‖x‖ s.t. x1 + x2 = 2  ->  (1, 1)
    # rank-deficient: second column zero -> its coefficient is 0
    # inconsistent: mean of the two equations x = 1 and x = 2 -> 1.5
    cases = [([[[1.0, 1.0]]], [[2.0]], [[1.0, 1.0]]),
             ([[[2.0, 0.0], [0.0, 0.0]]], [[4.0, 3.0]], [[2.0, 0.0]]),
             ([[[1.0], [1.0]]], [[1.0, 2.0]], [[1.5]])]
    for dtype in DTYPES:
        for a, b, x in cases:
            A, B, X = (torch.tensor(v, dtype=dtype) for v in (a, b, x))
            for method in ("scipy", "numpy", "mpmath"):
                assert torch.allclose(lstsq(A, B, method), X, rtol=0, atol=4e-7), method
            assert torch.equal(lstsq(A, B, "mpmath"), X)


@given(seeds, dtypes)
def test_mpmath_digits_improve_with_dps(seed, dtype):
    """The float result is stable under more working digits (the judge is converged)."""
    p = GaussianFamily(n=4, d=2, noise=0.1).sample(2, generator(seed), dtype)
    assert torch.equal(lstsq(p.A, p.b, "mpmath", dps=30), lstsq(p.A, p.b, "mpmath", dps=60))


def test_rcond_controls_truncation():
    A = torch.tensor([[[1.0, 0.0], [0.0, 1e-6]]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    for method in ("scipy", "numpy", "mpmath"):
        full = lstsq(A, b, method)
        cut = lstsq(A, b, method, rcond=1e-3)
        assert torch.allclose(full, torch.tensor([[1.0, 1e6]], dtype=torch.float64))
        assert torch.equal(cut, torch.tensor([[1.0, 0.0]], dtype=torch.float64))


def test_stored_solution_uses_the_stored_dtypes_cutoff_in_float64():
    A = torch.tensor([[[1.0, 0.0], [0.0, 1e-7]]])  # float32: 1e-7 is below its cutoff
    b = torch.ones(1, 2)
    x = stored_solution(A, b)
    assert x.dtype == torch.float64 and x.tolist() == [[1.0, 0.0]]
    assert lstsq(A.double(), b.double(), method="mpmath")[0, 1] > 1e6  # float64's keeps it


def test_sensitivity_matches_the_formula():
    A = torch.tensor([[[4.0, 0.0], [0.0, 1.0], [0.0, 0.0]]], dtype=torch.float64)
    b = torch.tensor([[4.0, 1.0, 2.0]], dtype=torch.float64)
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    # κ = 4, ‖r‖ = 2, ‖A‖ = 4, ‖x‖ = √2
    expected = 4 * (2 + 5 * 2 / (4 * math.sqrt(2)))
    assert torch.allclose(sensitivity(A, b, x), torch.tensor([expected], dtype=torch.float64))


# ------------------------------------------------------------------------------ metrics
@given(st.integers(min_value=1, max_value=4), st.integers(min_value=1, max_value=5), seeds,
       dtypes, dtypes)
def test_metrics(batch, d, seed, dtype, ref_dtype):
    x_ref = torch.randn(batch, d, generator=generator(seed), dtype=torch.float64) + 3
    x_ref = x_ref.to(ref_dtype)
    x = (x_ref.double() * (1 + 1e-5)).to(dtype)
    err = relative_error(x, x_ref)
    assert err.shape == (batch,) and err.dtype == torch.float64
    assert torch.allclose(err, torch.full_like(err, 1e-5), rtol=0.05)
    assert torch.allclose(digits(x, x_ref), torch.full_like(err, 5.0), atol=0.03)
    cap = -math.log10(torch.finfo(ref_dtype).eps / 2)
    assert torch.allclose(digits(x_ref, x_ref), torch.full_like(err, cap))
    assert (digits(x, x_ref) <= -math.log10(torch.finfo(dtype).eps / 2)).all()
    assert (digits(-x_ref, x_ref) == 0).all()
    expected_mse = ((x.double() - x_ref.double()) ** 2).mean(dim=1)
    assert torch.allclose(mse(x, x_ref), expected_mse)


@pytest.mark.parametrize("dtype", DTYPES)
def test_finite_digits_count_a_non_finite_row_as_no_digits(dtype):
    x_ref = torch.randn(4, 3, generator=generator(0), dtype=torch.float64) + 3
    x = (x_ref * (1 + 1e-5)).to(dtype)
    x[1, 0], x[2, 2], x[3] = math.nan, math.inf, -math.inf
    got = finite_digits(x, x_ref)
    assert got.dtype == torch.float64 and got[1:].tolist() == [0.0, 0.0, 0.0]
    assert torch.equal(got[:1], digits(x[:1], x_ref[:1]))


def test_relative_error_with_a_zero_reference():
    zero = torch.zeros(2, 3)
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert relative_error(x, zero).tolist() == [0.0, math.inf]


# ------------------------------------------------------------------------------ bad input
def _good():
    return torch.ones(2, 3, 2), torch.ones(2, 3)


@pytest.mark.parametrize(
    ("make", "error", "pattern"),
    [
        (lambda A, b: (A.int(), b), TypeError, "A.dtype"),
        (lambda A, b: (A.half(), b.half()), TypeError, "A.dtype"),
        (lambda A, b: (A, b.double()), TypeError, "b.dtype"),
        (lambda A, b: (A.numpy(), b), TypeError, "A must be a torch.Tensor"),
        (lambda A, b: (A, b[:, :2]), ValueError, "b must have shape"),
        (lambda A, b: (A[0], b), ValueError, "A must have 3 dimensions"),
        (lambda A, b: (A[:0], b[:0]), ValueError, "A is empty"),
        (lambda A, b: (A, b.index_fill(1, torch.tensor([0]), math.nan)), ValueError,
         "b contains NaN"),
        (lambda A, b: (A.index_fill(1, torch.tensor([0]), math.inf), b), ValueError,
         "A contains NaN or Inf"),
    ],
)
def test_lstsq_bad_inputs_name_the_argument(make, error, pattern):
    A, b = make(*_good())
    with pytest.raises(error, match=pattern.replace(".", r"\.")):
        lstsq(A, b)


def test_lstsq_bad_options():
    A, b = _good()
    with pytest.raises(ValueError, match="method"):
        lstsq(A, b, "lapack")
    with pytest.raises(ValueError, match="dps"):
        lstsq(A, b, "mpmath", dps=10)
    with pytest.raises(ValueError, match="rcond"):
        lstsq(A, b, rcond=-1.0)


def test_metrics_bad_inputs():
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="x_ref has"):
        digits(x, torch.ones(2, 4))
    with pytest.raises(ValueError, match="x contains NaN"):
        mse(torch.full((2, 3), math.nan), x)
    with pytest.raises(TypeError, match=r"x_ref must be a torch\.Tensor"):
        relative_error(x, np.ones((2, 3)))
    with pytest.raises(TypeError, match=r"x\.dtype"):
        digits(x.long(), x)
