"""neuralnum.models.axial: exact construction at the matmul's rounding level, fast == reference
path, permutation equivariance, input validation, seeded initialisation.

Rounding bounds (Higham, ``γ_k = k·u/(1 − k·u)``, ``u`` the unit roundoff of the dtype):

* exact construction, any summation order: ``|r̂ − r| ≤ γ_{d+1}(|A||x| + |b|)`` and, since
  ``ĝ − g = (ĝ − Aᵀr̂) + Aᵀ(r̂ − r)``, ``|ĝ − g| ≤ γ_n|Aᵀ||r̂| + γ_{d+1}|Aᵀ|(|A||x| + |b|)``;
  ``r``, ``g`` judged exactly (double-double, :mod:`exact`).
* two evaluations of one stage (fast, reference, permuted inputs) each round every term of the
  same polynomial at most ``K = N_s + 64`` times (``N_s`` the summed axis; the rest covers the
  feature, head, moment and Horner sums), so they differ by at most ``2γ_K·M`` with ``M`` the
  stage evaluated on absolute values (``stage_reference`` of ``|weights|``, ``|inputs|``).
  Through the column stage an input error ``|δr| ≤ e`` adds at most ``M_col(|r| + e) −
  M_col(|r|)`` (a polynomial with non-negative coefficients bounds the variation).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from axial_helpers import (
    BAD_INPUTS,
    assert_drawn_from_generator,
    assert_within,
    gamma,
    random_problem,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from neuralnum.models.axial import AxialConfig, AxialOperator, construct_axial_gd
from neuralnum.models.axial_stage import (
    MatrixStats,
    StageWeights,
    matrix_stats,
    needs_matrix_moments,
    stage_fast,
    stage_reference,
    stage_terms,
    vanishes_at_zero,
)
from neuralnum.problems.double_double import dd_step

DTYPES = (torch.float32, torch.float64)
dtypes = st.sampled_from(DTYPES)
seeds = st.integers(0, 2**32 - 1)


def integer_problem(seed: int, batch: int, n: int, d: int, dtype: torch.dtype,
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return tuple(torch.from_numpy(rng.integers(-2, 3, shape).astype(np.float64)).to(dtype)
                 for shape in ((batch, n, d), (batch, n), (batch, d)))


def random_model(seed: int, head_dim: int = 4) -> AxialOperator:
    return AxialOperator(AxialConfig(head_dim=head_dim),
                         generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- bounds
def _absolute(weights: StageWeights) -> StageWeights:
    return StageWeights(*(t.detach().abs().to(torch.float64) for t in weights))


def _abs_stage(weights: StageWeights, mat: torch.Tensor, own: torch.Tensor,
               others: torch.Tensor) -> torch.Tensor:
    """The stage evaluated on absolute values, float64: ``M`` of the module docstring."""
    def wide(t: torch.Tensor) -> torch.Tensor:
        return t.detach().abs().to(torch.float64)

    return stage_reference(_absolute(weights), wide(mat), wide(own), wide(others))


def evaluation_bounds(model: AxialOperator, A: torch.Tensor, b: torch.Tensor,
                      x: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds on ``|r₁ − r₂|`` and ``|g₁ − g₂|`` between two evaluations of ``model`` (float64;
    ``r`` either evaluation's residual)."""
    n, d = A.shape[1:]
    bound_r = 2 * gamma(d + 64, A.dtype) * _abs_stage(model.rows.weights(), A, b, x[..., None])
    wide_r = r.detach().abs().to(torch.float64)

    def col(rr: torch.Tensor) -> torch.Tensor:
        return _abs_stage(model.cols.weights(), A.mT, x, rr.unsqueeze(2))

    upper = col(wide_r + bound_r)
    bound_g = 2 * gamma(n + 64, A.dtype) * upper + (upper - col(wide_r))
    return bound_r, bound_g


# --------------------------------------------------------------------------- exact weights
@settings(max_examples=100, deadline=None)
@given(seed=seeds, n=st.integers(1, 300), d=st.integers(1, 300), batch=st.integers(1, 2),
       dtype=dtypes, fast=st.booleans())
@example(seed=0, n=300, d=300, batch=2, dtype=torch.float32, fast=True)
@example(seed=1, n=300, d=1, batch=1, dtype=torch.float64, fast=False)
@example(seed=2, n=1, d=300, batch=1, dtype=torch.float32, fast=False)
def test_exact_construction_within_matmul_rounding(seed: int, n: int, d: int, batch: int,
                                                   dtype: torch.dtype, fast: bool) -> None:
    A, b, x = random_problem(seed, batch, n, d, dtype)
    model = construct_axial_gd(dtype)
    r_hat, g_hat = model(A, b, x) if fast else model.forward_reference(A, b, x)
    assert r_hat.dtype == g_hat.dtype == dtype
    r_true, g_true = dd_step(A, b, x)
    wide = [t.double() for t in (A, b, x, r_hat)]
    Aa, ba, xa, ra = (t.abs() for t in wide)
    row_terms = (Aa @ xa[..., None])[..., 0] + ba
    assert_within(r_hat, r_true, gamma(d + 1, dtype) * row_terms)
    g_bound = (gamma(n, dtype) * (Aa.mT @ ra[..., None])[..., 0]
               + gamma(d + 1, dtype) * (Aa.mT @ row_terms[..., None])[..., 0])
    assert_within(g_hat, g_true, g_bound)


# --------------------------------------------------------------------------- fast == reference
@settings(max_examples=100, deadline=None)
@given(seed=seeds, n=st.integers(1, 40), d=st.integers(1, 40), batch=st.integers(1, 3),
       dtype=dtypes, head_dim=st.integers(1, 4))
def test_fast_path_matches_reference(seed: int, n: int, d: int, batch: int,
                                     dtype: torch.dtype, head_dim: int) -> None:
    A, b, x = random_problem(seed, batch, n, d, dtype, decades=2.0)
    model = random_model(seed % 1000, head_dim)
    with torch.no_grad():
        r_fast, g_fast = model(A, b, x)
        r_ref, g_ref = model.forward_reference(A, b, x)
    bound_r, bound_g = evaluation_bounds(model, A, b, x, r_ref)
    assert_within(r_fast, r_ref, bound_r)
    assert_within(g_fast, g_ref, bound_g)


def test_fast_path_precomputed_stats_are_the_same_computation() -> None:
    A, b, x = random_problem(3, 2, 9, 4, torch.float64)
    coefficients = random_model(3).coefficients()
    assert all(torch.equal(p, q) for p, q in zip(coefficients(A, b, x),
                                                 coefficients(A, b, x, matrix_stats(A)),
                                                 strict=True))


def test_gradients_flow_to_every_parameter() -> None:
    model = random_model(0)
    A, b, x = random_problem(0, 2, 6, 3, torch.float64)
    r, g = model(A, b, x)
    (r.sum() + g.sum()).backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())


# --------------------------------------------------------------------------- equivariance
def _permuted(model: AxialOperator, path: str, A: torch.Tensor, b: torch.Tensor,
              x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
              ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """``(r, g)`` of the problem and ``(r[π]⁻¹, g[σ]⁻¹)`` of its row/column permutation."""
    forward = model if path == "fast" else model.forward_reference
    with torch.no_grad():
        base = forward(A, b, x)
        r_p, g_p = forward(A[:, rows][:, :, cols], b[:, rows], x[:, cols])
    return base, (r_p[:, rows.argsort()], g_p[:, cols.argsort()])


@settings(max_examples=60, deadline=None)
@given(seed=seeds, n=st.integers(1, 8), d=st.integers(1, 8), dtype=dtypes,
       path=st.sampled_from(("fast", "reference")), exact_weights=st.booleans())
def test_equivariance_bitwise_on_integer_inputs(seed: int, n: int, d: int, dtype: torch.dtype,
                                                path: str, exact_weights: bool) -> None:
    """Integer inputs and weights in {−1, 0, 1} (or the exact construction): every sum is
    exact, so a permuted problem gives bitwise-permuted outputs."""
    gen = torch.Generator().manual_seed(seed)
    if exact_weights:
        model = construct_axial_gd(dtype, head_dim=2)
    else:
        model = random_model(0, head_dim=2)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randint(-1, 2, p.shape, generator=gen))
    A, b, x = integer_problem(seed, 2, n, d, dtype)
    rows, cols = torch.randperm(n, generator=gen), torch.randperm(d, generator=gen)
    if dtype == torch.float32 and not exact_weights:
        A, b, x = (t.double() for t in (A, b, x))  # random cubic terms need float64's 53 bits
    (r, g), (r_back, g_back) = _permuted(model, path, A, b, x, rows, cols)
    assert torch.equal(r, r_back)
    assert torch.equal(g, g_back)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, n=st.integers(1, 60), d=st.integers(1, 60), dtype=dtypes,
       path=st.sampled_from(("fast", "reference")))
def test_equivariance_within_rounding(seed: int, n: int, d: int, dtype: torch.dtype,
                                      path: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    model = random_model(seed % 1000)
    A, b, x = random_problem(seed, 2, n, d, dtype, decades=2.0)
    rows, cols = torch.randperm(n, generator=gen), torch.randperm(d, generator=gen)
    (r, g), (r_back, g_back) = _permuted(model, path, A, b, x, rows, cols)
    bound_r, bound_g = evaluation_bounds(model, A, b, x, r)
    assert_within(r_back, r, bound_r)
    assert_within(g_back, g, bound_g)


# --------------------------------------------------------------------------- initialisation
def test_init_draws_only_from_the_given_generator() -> None:
    assert_drawn_from_generator(random_model)


@pytest.mark.parametrize("dtype", DTYPES)
def test_parameter_dtype_and_count(dtype: torch.dtype) -> None:
    model = AxialOperator(AxialConfig(), dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert sum(p.numel() for p in model.parameters()) == 92


def test_snapping_keeps_large_and_drops_tiny_coefficients() -> None:
    exact = construct_axial_gd().coefficients()
    noisy = type(exact)(exact.rows + 1e-17, exact.cols - 1e-17)
    snapped = noisy.snapped(1e-12)
    assert torch.equal(snapped.rows, exact.rows) and torch.equal(snapped.cols, exact.cols)


# --------------------------------------------------------------------------- bad inputs
def _good() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return random_problem(0, 2, 5, 3, torch.float64)


@pytest.mark.parametrize("path", ["fast", "reference"])
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise(case: str, path: str) -> None:
    args, kind, message = BAD_INPUTS[case]
    model = construct_axial_gd()
    with pytest.raises(kind, match=message):
        (model if path == "fast" else model.forward_reference)(*args)


def test_overflowing_moments_raise() -> None:
    A, b, x = (t.float() for t in _good())
    with pytest.raises(ValueError, match="overflows"):
        construct_axial_gd()(A * 1e20, b, x)
    with pytest.raises(ValueError, match="overflowed"):
        random_model(0)(A, b * 1e15, x)


def test_stats_of_another_matrix_raise() -> None:
    A, b, x = _good()
    stats = matrix_stats(A[:, :4])
    with pytest.raises(ValueError, match="stats do not belong"):
        construct_axial_gd()(A, b, x, stats)
    with pytest.raises(ValueError, match="stats do not belong"):
        construct_axial_gd()(A, b, x, MatrixStats(*(t.float() for t in matrix_stats(A))))


@pytest.mark.parametrize("fields", [{"head_dim": 0}, {"head_dim": 9}, {"head_dim": 2.0},
                                    {"init_std": 0.0}, {"init_std": float("nan")}])
def test_bad_config_raises(fields: dict[str, float]) -> None:
    with pytest.raises((ValueError, TypeError)):
        AxialConfig(**fields)


def test_bad_parameter_dtype_raises() -> None:
    with pytest.raises(TypeError, match=r"float32 or torch\.float64"):
        AxialOperator(AxialConfig(), dtype=torch.float16)


# --------------------------------------------------------------------------- nonzero terms
def _table(entries: list[tuple[int, int, float]]) -> torch.Tensor:
    """A ``(7, 4)`` canonical table with ``value`` at ``(moment, power)`` of each entry."""
    table = torch.zeros(7, 4, dtype=torch.float64)
    for moment, power, value in entries:
        table[moment, power] = value
    return table


entries = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3),
                             st.sampled_from([1.0, -1.0, 0.75, -2.5, 1e-3])),
                   min_size=0, max_size=3)


@settings(max_examples=100, deadline=None)
@given(seed=seeds, n=st.integers(1, 30), d=st.integers(1, 30), dtype=dtypes, table=entries,
       zero_own=st.booleans(), columns=st.booleans())
def test_nonzero_terms_evaluate_bit_for_bit_as_every_term(seed: int, n: int, d: int,
                                                          dtype: torch.dtype, table: list,
                                                          zero_own: bool, columns: bool) -> None:
    """``stage_fast`` from its nonzero terms (at most two: moments formed only where
    needed, leading zero powers skipped) equals the dense evaluation exactly; with more
    terms it is the dense evaluation."""
    A, b, x = random_problem(seed, 2, n, d, dtype, decades=2.0)
    coefficients = _table(table)
    stats = matrix_stats(A)
    mat, own, other, square, total = ((A.mT, x, b, stats.col_sq, stats.col_sum) if columns
                                      else (A, b, x, stats.row_sq, stats.row_sum))
    own_arg = None if zero_own else own
    terms = stage_terms(coefficients, dtype, zero_own)
    dense = stage_fast(coefficients, mat, torch.zeros_like(own) if zero_own else own,
                       other.unsqueeze(2), square, total)
    sparse = stage_fast(coefficients, mat, own_arg, other.unsqueeze(2), square, total, terms)
    assert torch.equal(sparse, dense)
    if not needs_matrix_moments(terms):  # then it runs without Σ a², Σ a
        assert torch.equal(stage_fast(coefficients, mat, own_arg, other.unsqueeze(2), None,
                                      None, terms), dense)


def test_stage_terms_list_the_nonzero_coefficients_up_to_the_highest_power() -> None:
    table = _table([(1, 0, 1.0), (6, 1, -1.0), (6, 3, 0.5), (3, 2, 1e-60)])
    assert stage_terms(table, torch.float64) == ((1, (1.0,)), (3, (0.0, 0.0, 1e-60)),
                                                 (6, (0.0, -1.0, 0.0, 0.5)))
    assert stage_terms(table, torch.float32) == ((1, (1.0,)), (6, (0.0, -1.0, 0.0, 0.5)))
    assert stage_terms(table, torch.float64, zero_own=True) == ((1, (1.0,)),)


def test_what_the_terms_read_and_whether_they_vanish_at_zero() -> None:
    exact = construct_axial_gd().coefficients().detached()
    assert exact.centred("rows", torch.float64) and exact.centred("cols", torch.float32)
    assert not exact.needs_stats(torch.float64)
    for moment, vanishes in ((0, False), (1, True), (2, False), (3, True), (4, True),
                             (5, False), (6, False)):
        terms = stage_terms(_table([(moment, 0, 1.0)]), torch.float64, zero_own=True)
        assert vanishes_at_zero(terms) is vanishes
        assert needs_matrix_moments(terms) is (moment in (0, 2))
    three = stage_terms(_table([(1, 0, 1.0), (3, 0, 1.0), (4, 1, 1.0)]), torch.float64)
    assert needs_matrix_moments(three)  # evaluated densely, which reads them


@pytest.mark.parametrize("model", ["exact", "offset", "random"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_unchecked_products_are_the_checked_calls(model: str, dtype: torch.dtype) -> None:
    net = random_model(5) if model == "random" else construct_axial_gd()
    if model == "offset":
        with torch.no_grad():
            net.rows.skip[1] = 0.75
    coefficients = net.coefficients().detached()
    A, b, x = random_problem(4, 3, 7, 5, dtype, decades=2.0)
    stats = matrix_stats(A)
    stats_arg = stats if coefficients.needs_stats(dtype) else None
    _, g = coefficients(A, b, x, stats)
    assert torch.equal(coefficients.step(A, b, x, stats_arg), g)
    r_at_zero_b, _ = coefficients(A, torch.zeros_like(b), x, stats)  # the row stage at b = 0
    assert torch.equal(coefficients.row_product(A, x, stats_arg), r_at_zero_b)
    r, g_at_zero_x = coefficients(A, b, torch.zeros_like(x), stats)  # columns read r at x = 0
    assert torch.equal(coefficients.column_product(A, r, stats_arg), g_at_zero_x)
    assert coefficients.centred("rows", dtype) is (model == "exact")
