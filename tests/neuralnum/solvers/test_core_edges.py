"""Edges of the numerical core that the main tests do not pin: the per-problem MSE, the
condition number's cutoff and the sensitivity formula, small ``MonarchMatrix`` API pieces,
and argument messages.
(Added for the mutation check, ``python3 -m mutmut run``: each test kills mutants that
survived the main tests.)"""

import math

import pytest
import torch

from kernels.long_conv_reference import long_conv_reference
from kernels.monarch_reference import monarch_matmul_reference
from neuralnum.models.construct import (
    SoftmaxProduct,
    construct_baseconv_gd,
    construct_linear_attention_gd,
    gd_rounding_bound,
)
from neuralnum.problems.reference import (
    condition_number,
    default_rcond,
    lstsq,
    mse,
    relative_error,
    sensitivity,
)
from neuralnum.problems.targets import contraction_factor
from structured.monarch import MonarchMatrix, project


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mse_is_per_problem_mean_of_squares(dtype):
    x = torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.5, 0.5]], dtype=dtype)
    x_ref = torch.tensor([[0.0, 0.0, 0.0], [0.5, 1.5, -0.5]], dtype=dtype)
    got = mse(x, x_ref)
    assert got.dtype == torch.float64 and got.shape == (2,)
    torch.testing.assert_close(got, torch.tensor([5 / 3, 2 / 3], dtype=torch.float64),
                               rtol=0, atol=1e-15)     # negative differences square
    assert mse(x_ref, x).equal(got)


def test_softmax_product_messages_name_the_argument():
    with pytest.raises(TypeError, match=r"^m must be "):
        SoftmaxProduct(2.0, 0.1)
    with pytest.raises(ValueError, match=r"^m must be "):
        SoftmaxProduct(0, 0.1)
    with pytest.raises(ValueError, match=r"^eps must be finite and > 0"):
        SoftmaxProduct(2, 0.0)
    with pytest.raises(ValueError, match=r"^u must be \(B, L, 4\) torch.float64, got \(2, 3, 5\)"):
        SoftmaxProduct(2, 0.1, dtype=torch.float64)(torch.zeros(2, 3, 5, dtype=torch.float64))


def _diag_problems(scale: float = 100.0) -> torch.Tensor:
    """Two (3, 2) problems with exactly known singular values ``scale·(1, 1e-3)`` and
    ``scale·(1, 0.5)`` (diagonal, so ``svdvals`` returns them exactly)."""
    A = torch.zeros(2, 3, 2, dtype=torch.float64)
    A[0, 0, 0], A[0, 1, 1] = scale, scale * 1e-3
    A[1, 0, 0], A[1, 1, 1] = scale, scale * 0.5
    return A


def test_condition_number_cutoff_per_problem():
    A = _diag_problems()
    kappa = condition_number(A)                               # default cutoff: both kept
    torch.testing.assert_close(kappa, torch.tensor([1e3, 2.0], dtype=torch.float64))
    # a singular value exactly at rcond·σ_max counts as zero; the cutoff is relative to σ_max
    kappa = condition_number(A, rcond=1e-3)
    torch.testing.assert_close(kappa, torch.tensor([1.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(condition_number(A, rcond=0.6),
                               torch.tensor([1.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^A must have 3 dimensions"):
        condition_number(A[0])
    with pytest.raises(ValueError, match=r"^A contains NaN or Inf"):
        condition_number(torch.full((1, 3, 2), math.nan, dtype=torch.float64))


def test_sensitivity_formula_and_cutoff():
    A = _diag_problems(scale=2.0)
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0]], dtype=torch.float64)
    b = torch.einsum("bnd,bd->bn", A, x)
    b[:, 2] = torch.tensor([3.0, 4.0], dtype=torch.float64)      # residual r = (3, 4)
    kappa = torch.tensor([1e3, 2.0], dtype=torch.float64)
    ratio = torch.tensor([3.0, 4.0], dtype=torch.float64) / (2.0 * x.norm(dim=1))
    want = kappa * (2 + (kappa + 1) * ratio)
    torch.testing.assert_close(sensitivity(A, b, x), want, rtol=1e-14, atol=0)
    # rcond is passed on to κ: the tiny singular value of problem 0 is cut off
    got = sensitivity(A, b, x, rcond=1e-3)
    torch.testing.assert_close(got[0], 1.0 * (2 + 2.0 * ratio[0]), rtol=1e-14, atol=0)
    # a zero residual at x = 0 (b = 0) gives 2κ, not 0/0
    zero = sensitivity(A, torch.zeros(2, 3, dtype=torch.float64),
                       torch.zeros(2, 2, dtype=torch.float64))
    torch.testing.assert_close(zero, 2 * kappa)
    with pytest.raises(ValueError):
        sensitivity(A, b, x[:, :1])                            # x is checked too


def test_monarch_matrix_small_api():
    M = MonarchMatrix.random(6, 4, 2, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(0))
    assert M.flops() == 2 * M.num_params() and M.flops(3) == 6 * M.num_params()
    with pytest.raises(ValueError, match=r"^batch must be a positive int"):
        M.flops(0)
    assert repr(M) == ("MonarchMatrix(shape=(4, 6), k=2, p=3, q=2, s=2, rank=1, "
                       "dtype=torch.float64)")
    y = torch.randn(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(M.adjoint_matmul(y), y @ M.to_dense())   # 2 batch dims
    with pytest.raises(ValueError, match=r"^y's last dimension must be 4"):
        M.adjoint_matmul(y[..., :3])


def test_long_conv_message_gives_both_filter_lengths():
    with pytest.raises(ValueError, match=r"k must be \(3, 4\) \(causal\) or \(3, 8\) "):
        long_conv_reference(torch.ones(2, 3, 4), torch.ones(3, 5))


def test_mse_names_the_bad_argument():
    good = torch.zeros(2, 3, dtype=torch.float64)
    bad = torch.full((2, 3), math.nan, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^x contains NaN or Inf"):
        mse(bad, good)
    with pytest.raises(ValueError, match=r"^x_ref contains NaN or Inf"):
        mse(good, bad)
    with pytest.raises(ValueError, match=r"^x has shape \(2, 3\) but x_ref has \(2, 2\)"):
        mse(good, good[:, :2])


def test_contraction_factor_cutoff_uses_the_larger_dimension():
    """σ's at or below ``σ_max·max(n, d)·eps`` are zero: with n = 40 > d = 2, a σ₂ between
    ``d·eps`` and ``n·eps`` is cut (ρ from σ₁ alone), and σ₂ exactly at the cutoff too."""
    eps = torch.finfo(torch.float64).eps
    A = torch.zeros(3, 40, 2, dtype=torch.float64)
    A[:, 0, 0] = 1.0
    A[0, 1, 1] = 10 * eps          # between 2·eps and 40·eps: cut
    A[1, 1, 1] = 40 * eps          # exactly at the cutoff: cut
    A[2, 1, 1] = 0.5               # kept
    eta = torch.full((3,), 0.5, dtype=torch.float64)
    rho = contraction_factor(A, eta)
    torch.testing.assert_close(rho, torch.tensor([0.5, 0.5, 0.875], dtype=torch.float64),
                               rtol=0, atol=1e-15)                 # per problem


def test_gd_rounding_bound_value():
    """``γ_{n+d+3} (|x| + η|A|ᵀ(|A||x| + |b|))`` with ``γ_k = k·u/(1 − k·u)``, u = eps/2."""
    A = torch.tensor([[[1.0, -2.0], [0.5, 0.0], [0.0, 3.0]]], dtype=torch.float64)
    b = torch.tensor([[1.0, -1.0, 2.0]], dtype=torch.float64)
    x = torch.tensor([[-1.0, 0.5]], dtype=torch.float64)
    k = (3 + 2 + 3) * torch.finfo(torch.float64).eps / 2
    scale = A.abs()[0] @ x.abs()[0] + b.abs()[0]
    want = k / (1 - k) * (x.abs()[0] + 0.25 * A.abs()[0].T @ scale)
    torch.testing.assert_close(gd_rounding_bound(A, b, x, 0.25)[0], want, rtol=1e-15, atol=0)
    with pytest.raises(ValueError):
        gd_rounding_bound(A, b, x[:, :1], 0.25)                    # x is checked


def test_monarch_operand_checks():
    M = MonarchMatrix.random(6, 4, 2, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(0))
    x = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(M @ x, M.to_dense() @ x)             # an unbatched vector
    with pytest.raises(TypeError, match=r"^x must be a torch.Tensor, got list"):
        M.matmul([1.0] * 6)
    with pytest.raises(ValueError, match=r"^x's last dimension must be 6, got shape \(\)"):
        M.matmul(torch.tensor(1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"k·p = 6, got 5$"):
        monarch_matmul_reference(torch.ones(2, 3, 5), torch.ones(2, 3, 3), torch.ones(3, 4, 2))


def test_project_messages_name_the_argument():
    W = torch.ones(4, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"^W must be a torch.Tensor, got list"):
        project([[1.0]], 2)
    with pytest.raises(ValueError, match=r"^W contains NaN or Inf$"):
        project(W * math.inf, 2)
    with pytest.raises(ValueError, match=r"^rank must be a positive int, got 0"):
        project(W, 2, rank=0)


@pytest.mark.parametrize("method", ["mpmath", "scipy", "numpy"])
def test_rcond_cutoff_is_relative_and_inclusive(method):
    """σ₂ exactly at ``rcond·σ_max`` (powers of two: exact) is treated as zero."""
    A = torch.zeros(1, 3, 2, dtype=torch.float64)
    A[0, 0, 0], A[0, 1, 1] = 4.0, 4.0 * 2.0**-10
    b = torch.tensor([[8.0, 1.0, 5.0]], dtype=torch.float64)
    x = lstsq(A, b, method, rcond=2.0**-10)
    torch.testing.assert_close(x, torch.tensor([[2.0, 0.0]], dtype=torch.float64))
    kept = lstsq(A, b, method, rcond=2.0**-11)
    torch.testing.assert_close(kept, torch.tensor([[2.0, 256.0]], dtype=torch.float64))


def test_default_cutoff_and_rcond_range():
    eps = torch.finfo(torch.float64).eps
    A = torch.zeros(1, 3, 2, dtype=torch.float64)
    A[0, 0, 0], A[0, 1, 1] = 1.0, 2.5 * eps         # below the default 3·eps: treated as 0
    assert condition_number(A).item() == 1.0
    assert default_rcond(torch.float32, 3, 5) == 5 * torch.finfo(torch.float32).eps
    b = torch.ones(1, 3, dtype=torch.float64)
    assert lstsq(A, b, rcond=0.0).shape == (1, 2)                  # 0 is allowed
    for bad in (1.0, 1.5, -0.1, math.nan):
        with pytest.raises(ValueError, match=r"^rcond must be in \[0, 1\)"):
            lstsq(A, b, rcond=bad)
    assert lstsq(A, b, "mpmath", dps=17).shape == (1, 2)           # 17 digits suffice
    for bad in (16, True, 17.5):
        with pytest.raises(ValueError, match=r"^dps must be an int >= 17"):
            lstsq(A, b, "mpmath", dps=bad)


def test_relative_error_of_a_small_reference():
    x_ref = torch.tensor([[0.3, 0.4], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([[0.3, 0.5], [0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    got = relative_error(x, x_ref)
    torch.testing.assert_close(got, torch.tensor([0.2, 0.0, math.inf], dtype=torch.float64))


@pytest.mark.parametrize("build", [construct_baseconv_gd, construct_linear_attention_gd])
def test_constructions_name_bad_arguments(build):
    with pytest.raises(ValueError, match=r"^n must be "):
        build(0, 2, 0.1)
    with pytest.raises(ValueError, match=r"^d must be "):
        build(4, 0, 0.1)
    with pytest.raises(ValueError, match=r"^eta must be finite and > 0"):
        build(4, 2, 0.0)


def test_linear_attention_construction_steps_checks():
    with pytest.raises(ValueError, match=r"^steps must be "):
        construct_linear_attention_gd(4, 2, 0.1, steps=0)
    with pytest.raises(ValueError, match=r"^steps > 1 needs causal=False: a causal layer "
                                         r"leaves partial sums in the x slots of all but "
                                         r"the last token$"):
        construct_linear_attention_gd(4, 2, 0.1, steps=2, causal=True)
