"""neuralnum.lstsq: unpacks like scipy.linalg.lstsq; learned solvers through the same door."""

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from learner_standins import one_thread  # noqa: F401 (autouse fixture)

import neuralnum
from neuralnum.solvers.learner import Learner
from neuralnum.training.recipe import Recipe


def _problem(seed, n, d, k, rank, dtype):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, min(rank, n, d))) @ rng.standard_normal((min(rank, n, d), d))
    b = rng.standard_normal((n,) if k is None else (n, k))
    return A.astype(dtype), b.astype(dtype)


def _same(ours, theirs):
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs, strict=True):
        assert type(a) is type(b) or (np.isscalar(a) and np.isscalar(b))
        assert np.shape(a) == np.shape(b)
        np.testing.assert_array_equal(a, b)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 9), d=st.integers(1, 9),
       k=st.one_of(st.none(), st.integers(1, 3)), rank=st.integers(1, 9),
       dtype=st.sampled_from([np.float32, np.float64]),
       cond=st.one_of(st.none(), st.just(1e-3)))
def test_reference_path_is_scipy_gelsd_bit_for_bit(seed, n, d, k, rank, dtype, cond):
    A, b = _problem(seed, n, d, k, rank, dtype)
    ours = neuralnum.lstsq(A, b, cond=cond)
    theirs = scipy.linalg.lstsq(A, b, cond=cond, lapack_driver="gelsd")
    _same(ours, theirs)
    x, _residues, rank_, _s = ours  # tuple unpacking, and attribute access
    assert ours.x is x and ours.rank == rank_ and ours.iterations is None
    # array-likes, and torch in -> torch out with the same numbers
    _same(neuralnum.lstsq(A.tolist(), b.tolist(), cond=cond) if dtype == np.float64 else ours,
          theirs)
    t = neuralnum.lstsq(torch.from_numpy(A), torch.from_numpy(b), cond=cond)
    assert isinstance(t.x, torch.Tensor) and isinstance(t.s, torch.Tensor)
    np.testing.assert_array_equal(t.x.numpy(), theirs[0])
    np.testing.assert_array_equal(t.s.numpy(), theirs[3])


def test_zero_right_hand_sides_and_batches():
    A, b = _problem(0, 6, 3, 2, 3, np.float64)
    x, residues, rank, s = neuralnum.lstsq(A, np.zeros((6, 0)))
    ref = scipy.linalg.lstsq(A, b, lapack_driver="gelsd")
    assert x.shape == (3, 0) and residues.shape == (0,)
    assert rank == ref[2] and np.array_equal(s, ref[3])
    stack = np.stack([A, 2 * A])
    bs = np.stack([b, b])
    xb, rb, kb, _sb = neuralnum.lstsq(stack, bs)
    assert xb.shape == (2, 3, 2) and rb.shape == (2, 2) and kb.tolist() == [3, 3]
    np.testing.assert_array_equal(xb[1], scipy.linalg.lstsq(2 * A, b, lapack_driver="gelsd")[0])
    wide = neuralnum.lstsq(stack.transpose(0, 2, 1), bs[:, :3, 0])  # n < d: no residues
    assert wide.x.shape == (2, 6) and np.isnan(wide.residues).all()


@pytest.mark.parametrize(("A", "b", "error", "match"), [
    (np.ones((3, 2), complex), np.ones(3, complex), TypeError,
     r"A has complex dtype.*real embedding.*scipy\.linalg\.lstsq"),
    (np.ones((3, 2)), torch.ones(3, dtype=torch.complex64), TypeError, "b has complex dtype"),
    (np.ones((3, 2), np.longdouble), np.ones(3), TypeError,
     r"A has dtype float128.*convert it explicitly \(A\.astype\(np\.float64\)\)"),
    (np.ones((3, 2)), np.array(["a", "b", "c"]), TypeError, "b has dtype <U1, not numbers"),
    (np.ma.ones((3, 2)), np.ones(3), ValueError, r"A is a masked array.*A\.filled"),
    (scipy.sparse.eye(3).tocsr(), np.ones(3), ValueError, r"A is a sparse.*A\.toarray\(\)"),
    ([[1.0, 2.0], [3.0]], [1.0, 2.0], ValueError, "A is not a rectangular array"),
    (np.ones((3, 2)), np.ones(4), ValueError, "b must have shape .*rows must match A's 3"),
    (np.ones(3), np.ones(3), ValueError, "A must have shape"),
    (np.ones((3, 2)), np.ones((3, 1, 1)), ValueError, "b must have shape"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), np.ones(2), ValueError,
     "A contains NaN or Inf: remove them, or pass check_finite=False"),
    (np.eye(2), np.array([1.0, np.inf]), ValueError, "b contains NaN or Inf"),
])
def test_bad_input_names_the_argument_and_the_fix(A, b, error, match):
    with pytest.raises(error, match=match):
        neuralnum.lstsq(A, b)


@pytest.mark.parametrize(("a_dtype", "b_dtype", "want"), [
    (np.int64, np.int64, np.float64), (np.int32, np.float32, np.float64),
    (np.bool_, np.bool_, np.float32), (np.int16, np.float32, np.float32),
    (np.float16, np.float16, np.float32), (np.float64, np.float32, np.float64),
    (np.float32, np.float64, np.float64), (np.uint8, np.int64, np.float64),
])
def test_scipy_casts_integers_and_upcasts_mixed_floats(a_dtype, b_dtype, want):
    A = np.array([[1, 0], [0, 1], [1, 1]]).astype(a_dtype)
    b = np.array([1, 0, 1]).astype(b_dtype)
    ours, theirs = neuralnum.lstsq(A, b), scipy.linalg.lstsq(A, b)
    _same(ours, theirs)
    assert ours.x.dtype == want
    t = neuralnum.lstsq(torch.from_numpy(A), torch.from_numpy(b))
    assert t.x.dtype == torch.from_numpy(theirs[0]).dtype
    np.testing.assert_array_equal(t.x.numpy(), theirs[0])


@pytest.mark.parametrize("driver", ["gelsd", "gelsy", "gelss"])
def test_lapack_driver_and_overwrite_are_scipys(driver):
    A, b = _problem(3, 7, 4, 2, 3, np.float64)  # rank 3 < d = 4
    _same(neuralnum.lstsq(A, b, lapack_driver=driver, cond=1e-10),
          scipy.linalg.lstsq(A, b, lapack_driver=driver, cond=1e-10))
    A1, b1, A2, b2 = (np.asfortranarray(v) for v in (A, b, A, b))
    _same(neuralnum.lstsq(A1, b1, None, True, True, False, driver),  # scipy's positions
          scipy.linalg.lstsq(A2, b2, None, True, True, False, driver))
    # whatever LAPACK overwrote (gelss: both), it overwrote alike
    np.testing.assert_array_equal(A1, A2)
    np.testing.assert_array_equal(b1, b2)
    stack = neuralnum.lstsq(np.stack([A, A]), np.stack([b, b]), lapack_driver=driver)
    assert stack.rank.tolist() == [3, 3] and np.isnan(stack.residues).all()
    assert (stack.s is None) == (driver == "gelsy")
    with pytest.raises(ValueError, match=r"lapack_driver must be one of \('gelsd'"):
        neuralnum.lstsq(A, b, lapack_driver="gelsx")


def test_reference_options_and_check_finite():
    for options in ({"method": "cg"}, {"tol": 1e-3}, {"lapack_drivr": "gelsy"}):
        with pytest.raises(TypeError, match=r"are for a learned solver \(pass solver=\.\.\.\)"
                                            r".*cond, overwrite_a"):
            neuralnum.lstsq(np.eye(2), np.ones(2), **options)
    # check_finite=False hands the data to LAPACK unchecked, as scipy does
    x = neuralnum.lstsq(np.eye(2), np.array([1.0, np.inf]), check_finite=False).x
    assert x.shape == (2,) and np.isnan(x).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_learned_solver_through_the_front_door(dtype):
    name = "float32" if dtype == torch.float32 else "float64"
    learner = Learner("linear_attention", "gd", Recipe(dtype=name), n=8,
                      d=3).init_construction()
    A, b = _problem(1, 8, 3, 2, 3, np.float64 if dtype == torch.float64 else np.float32)
    result = neuralnum.lstsq(A, b, solver=learner, method="cg")
    x, residues, rank, s = result
    ref = scipy.linalg.lstsq(A, b, lapack_driver="gelsd")
    assert rank is None and s is None and x.shape == (3, 2) and residues.shape == (2,)
    eps = float(torch.finfo(dtype).eps)
    assert np.allclose(x, ref[0], rtol=1e3 * eps, atol=1e3 * eps)
    assert np.allclose(residues, ref[1], rtol=1e3 * eps)
    assert result.iterations.shape == (2,) and result.converged.all()
    assert (result.model_calls > result.iterations).all()
    one = neuralnum.lstsq(torch.from_numpy(A), torch.from_numpy(b[:, 0]), solver=learner,
                          method="chebyshev")
    assert isinstance(one.x, torch.Tensor) and one.x.shape == (3,) and one.residues.shape == ()
    assert int(one.iterations) > 0 and bool(one.converged) and one.info.method == "chebyshev"
    batched = neuralnum.lstsq(np.stack([A, A]), np.stack([b, b]), solver=learner)
    assert batched.x.shape == (2, 3, 2) and batched.iterations.shape == (2, 2)
    empty = neuralnum.lstsq(A, np.zeros((8, 0), A.dtype), solver=learner)
    assert empty.x.shape == (3, 0) and empty.residues.shape == (0,)
    with pytest.raises(TypeError, match="cond"):
        neuralnum.lstsq(A, b, solver=learner, cond=1e-3)


class _NaNSolver:
    """A learned solver whose answer is NaN (as a diverged model's would be)."""

    last_solve = None

    def solve(self, A, b, **options):
        return torch.full(A.shape[::2], float("nan"), dtype=A.dtype)


def test_scipy_options_on_a_learned_path():
    learner = Learner("linear_attention", "gd", Recipe(dtype="float64"), n=6,
                      d=3).init_construction()
    A, b = _problem(2, 6, 3, None, 3, np.float64)
    ref = neuralnum.lstsq(A, b, solver=learner)
    # overwrite_* are a permission: accepted, and nothing is written into A or b
    A0, b0 = A.copy(), b.copy()
    same = neuralnum.lstsq(A, b, overwrite_a=True, overwrite_b=True, solver=learner)
    np.testing.assert_array_equal(same.x, ref.x)
    assert np.array_equal(A, A0) and np.array_equal(b, b0)
    # integers are cast as scipy casts them (int64 -> float64), any memory layout
    Ai = np.round(4 * A).astype(np.int64)
    xi = neuralnum.lstsq(np.asfortranarray(Ai)[::-1], b[::-1], solver=learner).x
    assert xi.dtype == np.float64
    np.testing.assert_allclose(xi, neuralnum.lstsq(Ai.astype(float), b, solver=learner).x)
    for option, value in (("cond", 1e-3), ("lapack_driver", "gelsy")):
        with pytest.raises(TypeError, match=f"{option}=.* does not apply to a learned solver"):
            neuralnum.lstsq(A, b, solver=learner, **{option: value})
    bad = b.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="b contains NaN or Inf: a learned solver cannot"):
        neuralnum.lstsq(A, bad, check_finite=False, solver=learner)
    with pytest.raises(TypeError, match=r"computes in float64 but A and b give float32.*"
                                        r"A\.astype\(np\.float64\)"):
        neuralnum.lstsq(A.astype(np.float32), b.astype(np.float32), solver=learner)
    with pytest.raises(ValueError, match=r"trained for A of shape \(6, 3\) and cannot solve A "
                                         r"of shape \(7, 3\).*--n 7 --d 3"):
        neuralnum.lstsq(np.ones((7, 3)), np.ones(7), solver=learner)
    with pytest.raises(TypeError, match=r"solver must be None .* got 3"):
        neuralnum.lstsq(A, b, solver=3)
    with pytest.raises(FloatingPointError, match="returned NaN/Inf for 2 of 2 right-hand"):
        neuralnum.lstsq(A, np.stack([b, b], axis=1), solver=_NaNSolver())
