"""Exact Monarch factorisations: DFT, Walsh–Hadamard, Kronecker, circulant convolution."""

import numpy as np
import pytest
import scipy.linalg
import torch

from structured.monarch import project
from structured.transforms import (
    circulant_monarch,
    dft_monarch,
    hadamard_monarch,
    kronecker_monarch,
    stride_permute,
)

REAL = [torch.float32, torch.float64]
COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}
TOL = {torch.float32: 5e-6, torch.float64: 1e-14}
SPLITS = [(8, 2), (12, 3), (16, 4), (15, 5), (7, 1), (32, 8)]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@pytest.mark.parametrize("real", REAL)
@pytest.mark.parametrize(("n", "n1"), SPLITS)
def test_dft_is_monarch_times_stride_permutation(real, n, n1):
    dtype = COMPLEX[real]
    M = dft_monarch(n, n1, dtype)
    assert M.blocks.k == M.blocks.s == n // n1 and M.blocks.p == M.blocks.q == n1
    x = torch.randn(3, n, dtype=dtype, generator=torch.Generator().manual_seed(n))
    fft = torch.fft.fft(x.to(torch.complex128))
    assert rel((M @ stride_permute(x, n1)).to(torch.complex128), fft) < TOL[real] * n
    eye = torch.eye(n, dtype=torch.complex128)
    F = torch.fft.fft(eye, dim=0)
    dense = M.to_dense().to(torch.complex128) @ stride_permute(eye, n1).T
    assert rel(dense, F) < TOL[real] * n


@pytest.mark.parametrize(("n", "n1"), SPLITS)
def test_projection_recovers_the_dft_factorisation(n, n1):
    F_perm = dft_monarch(n, n1).to_dense()                    # F Πᵀ: Monarch with nblocks = n/n1
    assert project(F_perm, n // n1).rel_error < 1e-14
    F = torch.fft.fft(torch.eye(n, dtype=torch.complex128), dim=0)
    if n1 not in (1, n):                                      # the DFT itself is not Monarch
        assert project(F, n // n1).rel_error > 0.1


@pytest.mark.parametrize("dtype", REAL)
@pytest.mark.parametrize(("n", "n1"), [(2, 1), (8, 2), (16, 4), (32, 8), (64, 64)])
def test_walsh_hadamard(dtype, n, n1):
    H = hadamard_monarch(n, n1, dtype)
    expected = torch.tensor(scipy.linalg.hadamard(n), dtype=dtype)
    assert torch.equal(H.to_dense(), expected)
    x = torch.randn(4, n, dtype=dtype, generator=torch.Generator().manual_seed(n))
    assert rel(H @ x, x @ expected.T) < TOL[dtype] * 4


@pytest.mark.parametrize("dtype", REAL)
def test_kronecker_products_are_monarch(dtype):
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(3, 4, dtype=dtype, generator=g), torch.randn(5, 2, dtype=dtype, generator=g)
    M = kronecker_monarch(A, B)
    assert rel(M.to_dense(), torch.kron(A, B)) < TOL[dtype]


@pytest.mark.parametrize("real", REAL)
@pytest.mark.parametrize(("n", "n1"), SPLITS)
def test_circular_convolution_is_a_product_of_monarchs(real, n, n1):
    g = torch.Generator().manual_seed(n)
    h = torch.randn(n, dtype=real, generator=g)
    x = torch.randn(3, n, dtype=real, generator=g)
    A, B = circulant_monarch(h, n1)
    y = A @ B.adjoint_matmul(x.to(A.dtype))
    h64, x64 = h.double().numpy(), x.double().numpy()
    direct = np.stack([[sum(h64[(u - v) % n] * row[v] for v in range(n)) for u in range(n)]
                       for row in x64])
    expected = torch.from_numpy(direct)
    assert rel(y.real.double(), expected) < TOL[real] * n
    assert float(y.imag.abs().max()) < TOL[real] * n * float(expected.abs().max())
    C = A.to_dense() @ B.to_dense().conj().T
    circulant = torch.from_numpy(scipy.linalg.circulant(h64))
    assert rel(C.real.double(), circulant) < TOL[real] * n


def test_bad_arguments():
    with pytest.raises(ValueError, match="n1 must be a positive divisor"):
        dft_monarch(12, 5)
    with pytest.raises(TypeError, match="complex"):
        dft_monarch(8, 2, torch.float64)
    with pytest.raises(ValueError, match="powers of two"):
        hadamard_monarch(12, 4)
    with pytest.raises(ValueError, match="1-D"):
        circulant_monarch(torch.randn(2, 4), 2)
    with pytest.raises(ValueError, match="NaN"):
        circulant_monarch(torch.tensor([1.0, float("inf")]), 1)
    with pytest.raises(ValueError, match="n1 must be a positive divisor"):
        stride_permute(torch.randn(6), 4)
