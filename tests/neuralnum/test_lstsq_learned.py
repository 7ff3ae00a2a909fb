"""``neuralnum.lstsq(A, b, solver="learned")``: the shipped shape-general solver behind
scipy's signature.

Property: for any shape (tall, wide, square; one or several right-hand sides; batched or
not; full rank or not) and either float dtype, on problems whose nonzero singular values
lie in ``[1, κ]``, ``κ = 10``, the learned path returns the minimum-norm least-squares
solution of the float64 problem (before rounding to the dtype) as closely as scipy does
on the rounded problem, within ``100 κ`` ulps of the solution's scale; in scipy's shapes
and dtypes, with LSQR's stopping codes, and without factorising ``A``.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from no_factorisations import no_factorisations

import neuralnum
from neuralnum.solvers.pretrained import pretrained

KAPPA = 10.0


def _conditioned(rng: np.random.Generator, n: int, d: int, rank: int) -> np.ndarray:
    """``A: (n, d)`` float64 of rank ``rank`` with nonzero singular values in ``[1, κ]``."""
    U = np.linalg.qr(rng.standard_normal((n, rank)))[0]
    V = np.linalg.qr(rng.standard_normal((d, rank)))[0]
    s = np.geomspace(1.0, KAPPA, rank)
    return (U * rng.permutation(s)) @ V.T


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``A, b`` in the drawn dtype, and the float64 ``A, b`` they were rounded from."""
    n, d = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    rank = draw(st.integers(1, min(n, d)))
    batch = draw(st.sampled_from([(), (1,), (3,)]))
    k = draw(st.sampled_from([(), (1,), (2,)]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    A = np.stack([_conditioned(rng, n, d, rank) for _ in range(batch[0] if batch else 1)])
    b = rng.standard_normal((A.shape[0], n, *k))
    A, b = (A if batch else A[0]), (b if batch else b[0])
    return A.astype(dtype), b.astype(dtype), A, b


#: Relative singular-value cutoff of the reference: the drawn nonzero singular values lie
#: in [1, κ], a rank-deficient draw's others are rounding noise (≈ eps·κ, which LAPACK's
#: default cutoff of eps·σ_max can keep, giving a garbage "minimum-norm" reference).
CUTOFF = 1e-3


def _scipy(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """scipy's minimum-norm solutions of the rank-``r`` problems, problem by problem."""
    if A.ndim == 2:
        return scipy.linalg.lstsq(A, b, cond=CUTOFF)[0]
    return np.stack([scipy.linalg.lstsq(a, v, cond=CUTOFF)[0]
                     for a, v in zip(A, b, strict=True)])


@settings(max_examples=40)
@given(problems())
def test_any_shape_is_solved_to_the_minimum_norm_solution(problem):
    A, b, A64, b64 = problem
    with pytest.MonkeyPatch.context() as mp, no_factorisations(mp):
        x, residues, rank, s = result = neuralnum.lstsq(A, b, solver="learned")
    want = _scipy(A64, b64)
    assert x.dtype == A.dtype and x.shape == want.shape and rank is None and s is None
    eps = float(np.finfo(A.dtype).eps)
    tolerance = 100 * KAPPA * eps * (np.abs(want).max(initial=0.0) + np.abs(b64).max() / KAPPA)
    assert np.abs(_scipy(A, b) - want).max(initial=0.0) <= tolerance  # scipy meets it
    assert np.abs(x - want).max(initial=0.0) <= tolerance
    n, d = A.shape[-2:]
    rhs = b.shape[:-1] if b.ndim == A.ndim - 1 else (*b.shape[:-2], b.shape[-1])
    assert result.iterations.shape == rhs and result.istop.shape == rhs
    assert set(np.unique(result.istop)) <= {0, 1, 2} and result.converged.all()
    assert (result.iterations <= min(n, d) + 2).all()  # reorthogonalised LSQR: ≈ rank steps
    if n > d and A.ndim == 2:  # scipy's residues, when it reports them
        r = b64 - A64 @ want
        np.testing.assert_allclose(residues, (r * r).sum(axis=0), rtol=1e3 * KAPPA * eps,
                                   atol=1e3 * KAPPA * eps * float((b64 * b64).sum()))


@pytest.mark.parametrize("shape", [(300, 20), (20, 300), (64, 64)])
def test_tensors_in_give_tensors_out_on_their_device(shape):
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(2, *shape, generator=gen, dtype=torch.float64)
    b = torch.randn(2, shape[0], generator=gen, dtype=torch.float64)
    result = neuralnum.lstsq(A, b, solver="learned", method="cgls", iter_lim=200)
    assert isinstance(result.x, torch.Tensor) and result.x.shape == (2, shape[1])
    want = torch.linalg.lstsq(A, b.unsqueeze(-1), driver="gelsd").solution[..., 0]
    torch.testing.assert_close(result.x, want, rtol=1e-9, atol=1e-9)
    assert result.info.method == "cgls" and result.istop.shape == (2,)


def test_the_named_solver_is_the_shipped_one_per_dtype():
    A = np.random.default_rng(1).standard_normal((30, 4))
    b = A @ np.arange(1.0, 5.0)
    for dtype in (np.float32, np.float64):
        neuralnum.lstsq(A.astype(dtype), b.astype(dtype), solver="learned")
        learner = pretrained(np.dtype(dtype).name)
        assert learner.dtype == getattr(torch, np.dtype(dtype).name)
        assert learner.last_solve is not None and learner.last_solve.method == "lsqr"
    # consistent systems stop on istop 1 (A x ≈ b), and x is exact to the dtype
    result = neuralnum.lstsq(A, b, solver="learned")
    assert int(result.istop) == 1
    np.testing.assert_allclose(result.x, np.arange(1.0, 5.0), rtol=1e-13)


def test_bad_input_to_the_named_solver():
    A, b = np.ones((5, 2)), np.ones(5)
    with pytest.raises(ValueError, match=r"solver='lerned' names no solver: pass one of "
                                         r"\('learned',\)"):
        neuralnum.lstsq(A, b, solver="lerned")
    with pytest.raises(TypeError, match="lapack_driver='gelsy' does not apply"):
        neuralnum.lstsq(A, b, solver="learned", lapack_driver="gelsy")
    with pytest.raises(ValueError, match="A contains NaN or Inf: a learned solver cannot"):
        neuralnum.lstsq(np.full((5, 2), np.inf), b, solver="learned")
    with pytest.raises(TypeError, match="complex"):
        neuralnum.lstsq(A.astype(complex), b, solver="learned")
    with pytest.raises(ValueError, match=r"b must have shape \(5,\) or \(5, 'k'\)"):
        neuralnum.lstsq(A, np.ones(4), solver="learned")
    # a zero matrix is solved by x = 0 (LSQR's istop 0), as scipy's minimum-norm answer
    zero = neuralnum.lstsq(np.zeros((5, 2)), b, solver="learned")
    np.testing.assert_array_equal(zero.x, np.zeros(2))
    assert int(zero.istop) == 0
