"""``neuralnum.lstsq`` without a solver IS ``scipy.linalg.lstsq(..., lapack_driver="gelsd")``,
bit for bit, in float32 and float64, on well-conditioned, ill-conditioned, rank-deficient
and under-determined problems, through the batched and the scipy-shaped entry points.
(Another driver — ``gelsy``, ``gelss`` — or ``numpy.linalg.lstsq`` gives other last bits on
these problems, so switching the reference path fails here.)"""

import numpy as np
import pytest
import scipy.linalg
import torch

import neuralnum


def _problem(kind: str, dtype, seed: int):
    rng = np.random.default_rng(seed)
    n, d = (6, 9) if kind == "underdetermined" else (12, 5)
    A = rng.standard_normal((n, d))
    if kind == "ill_conditioned":
        U, _, Vt = np.linalg.svd(A, full_matrices=False)
        A = (U * np.logspace(0, -6, min(n, d))) @ Vt
    elif kind == "rank_deficient":
        A[:, -1] = A[:, 0] + A[:, 1]
    b = rng.standard_normal((n, 3))
    return A.astype(dtype), b.astype(dtype)


def _gelsd(A: np.ndarray, b: np.ndarray) -> tuple:
    """``scipy.linalg.lstsq`` with the gelsd driver and scipy's default cutoff."""
    return scipy.linalg.lstsq(A, b, lapack_driver="gelsd")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["gaussian", "ill_conditioned", "rank_deficient",
                                  "underdetermined"])
def test_reference_path_is_scipy_gelsd_bit_for_bit(dtype, kind):
    for seed in range(3):
        A, B = _problem(kind, dtype, seed)
        # scipy shape: A (n, d), b (n,) → x (d,), numpy in and out
        for j in range(B.shape[1]):
            result = neuralnum.lstsq(A, B[:, j])
            assert isinstance(result.x, np.ndarray) and result.x.dtype == dtype
            for got, want in zip(result, _gelsd(A, B[:, j]), strict=True):
                np.testing.assert_array_equal(got, want)
        # batched tensors: A (B, n, d), b (B, n)
        At = torch.from_numpy(np.stack([A] * 3))
        xt = neuralnum.lstsq(At, torch.from_numpy(B.T.copy())).x
        want = np.stack([_gelsd(A, B[:, j])[0] for j in range(3)])
        assert xt.dtype == At.dtype
        np.testing.assert_array_equal(xt.numpy(), want)


def test_other_solvers_differ_in_the_last_bits():
    """The pin above can fail: the other LAPACK drivers differ on these problems in both
    dtypes; ``numpy.linalg.lstsq`` (itself ``gelsd``: bit-identical in float64 here) differs
    in float32, so a switch to numpy is caught there."""
    differs = {}
    for dtype in (np.float32, np.float64):
        for kind in ("gaussian", "ill_conditioned", "rank_deficient", "underdetermined"):
            for seed in range(3):
                A, B = _problem(kind, dtype, seed)
                x = _gelsd(A, B[:, 0])[0]
                others = {driver: scipy.linalg.lstsq(A, B[:, 0], lapack_driver=driver)[0]
                          for driver in ("gelsy", "gelss")}
                # scipy's default cutoff is eps·σ_max; numpy's rcond means the same
                others["numpy"] = np.linalg.lstsq(A, B[:, 0], rcond=np.finfo(dtype).eps)[0]
                for name, other in others.items():
                    key = (name, np.dtype(dtype).name)
                    differs[key] = differs.get(key, False) or not np.array_equal(x, other)
    assert all(differs[driver, dt] for driver in ("gelsy", "gelss")
               for dt in ("float32", "float64"))
    assert differs["numpy", "float32"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_method_is_numpy_lstsq_bit_for_bit(dtype):
    from neuralnum.problems.reference import lstsq

    A, B = _problem("ill_conditioned", dtype, 0)
    x = lstsq(torch.from_numpy(A[None]), torch.from_numpy(B[:, 0][None].copy()), "numpy")
    cond = np.finfo(dtype).eps * max(A.shape)
    np.testing.assert_array_equal(x[0].numpy(), np.linalg.lstsq(A, B[:, 0], rcond=cond)[0])
