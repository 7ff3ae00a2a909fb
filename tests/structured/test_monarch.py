"""MonarchMatrix and the optimal projection: shapes, products, recovery, optimality."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from structured.monarch import MonarchMatrix, MonarchShape, project

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 2e-5, torch.float64: 1e-12}


@st.composite
def features(draw):
    """``(in, out, nblocks, expected MonarchShape)`` covering out ≥ in and out < in."""
    nb = draw(st.integers(1, 4))
    p = draw(st.integers(1, 5))
    if draw(st.booleans()):                       # out ≥ in: q = p, s ≥ nb
        s = draw(st.integers(nb, nb + 4))
        expected = MonarchShape(k=nb, p=p, q=p, s=s)
    else:                                         # out < in: q < p, s = nb
        q = draw(st.integers(1, max(p - 1, 1)))
        expected = MonarchShape(k=nb, p=p, q=q, s=nb)
    return expected.in_features, expected.out_features, nb, expected


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@given(features())
def test_block_sizes_follow_the_documented_rule(case):
    n_in, n_out, nb, expected = case
    blocks = MonarchShape.for_features(n_in, n_out, nb)
    assert blocks == expected
    assert (blocks.in_features, blocks.out_features) == (n_in, n_out)
    assert blocks.k * blocks.q == min(n_in, n_out)          # no rank bottleneck


def test_classic_square_monarch_and_counts():
    M = MonarchMatrix.random(4096, 4096, 64, generator=gen(0))
    assert M.blocks == MonarchShape(64, 64, 64, 64)
    assert M.num_params() == 2 * 4096 * 64 == M.R.numel() + M.L.numel()
    assert M.flops(batch=3) == 2 * 3 * M.num_params()
    assert 4096 * 4096 // M.num_params() == 32               # the paper's 32× at n = 4096


@pytest.mark.parametrize(
    ("n_in", "n_out", "nblocks", "error", "match"),
    [(16, 16, 3, ValueError, "must divide in_features"), (16, 6, 4, ValueError, "min"),
     (12, 20, 2, ValueError, "must divide out_features"),
     (16, 16, 0, ValueError, "nblocks"), (16, 16, True, TypeError, "nblocks"),
     (16, 16, 2.0, TypeError, "nblocks"), (0, 4, 1, ValueError, "in_features")],
)
def test_bad_block_configuration_is_named(n_in, n_out, nblocks, error, match):
    with pytest.raises(error, match=match):
        MonarchShape.for_features(n_in, n_out, nblocks)


def test_bad_factors_and_operands():
    R, L = torch.randn(2, 3, 4), torch.randn(3, 5, 2)
    with pytest.raises(TypeError, match=r"R\.dtype"):
        MonarchMatrix(R.int(), L.int())
    with pytest.raises(TypeError, match="share a dtype"):
        MonarchMatrix(R, L.double())
    with pytest.raises(ValueError, match="L must have shape"):
        MonarchMatrix(R, torch.randn(3, 5, 3))
    with pytest.raises(ValueError, match="3-D"):
        MonarchMatrix(R[0], L)
    M = MonarchMatrix(R, L)
    with pytest.raises(TypeError, match=r"x\.dtype"):
        M.matmul(torch.randn(8, dtype=torch.float64))
    with pytest.raises(ValueError, match="last dimension must be 8"):
        M.matmul(torch.randn(7))
    with pytest.raises(ValueError, match="last dimension must be 15"):
        M.adjoint_matmul(torch.randn(8))


def test_bad_projection_input():
    with pytest.raises(ValueError, match="2-D"):
        project(torch.randn(2, 4, 4), 2)
    with pytest.raises(ValueError, match="NaN"):
        project(torch.full((4, 4), float("nan")), 2)
    with pytest.raises(TypeError, match=r"W\.dtype"):
        project(torch.ones(4, 4, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="must divide in_features"):
        project(torch.randn(6, 6), 4)
    with pytest.raises(ValueError, match="rank=3 exceeds"):
        project(torch.randn(8, 8), 4, rank=3)


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=features(), rank=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_multiply_and_adjoint_match_dense(dtype, case, rank, seed):
    n_in, n_out, nb, _ = case
    g = gen(seed)
    M = MonarchMatrix.random(n_in, n_out, nb, rank=rank, dtype=dtype, generator=g)
    D = M.to_dense()
    assert D.shape == M.shape == (n_out, n_in)
    x = torch.randn(2, 3, n_in, dtype=dtype, generator=g)
    y = torch.randn(4, n_out, dtype=dtype, generator=g)
    assert rel(M @ x, x @ D.T) < TOL[dtype] * 10
    assert rel(M.adjoint_matmul(y), y @ D) < TOL[dtype] * 10


def test_dense_form_follows_the_layout_entrywise():
    g = gen(1)
    M = MonarchMatrix(torch.randn(3, 2, 4, generator=g, dtype=torch.float64),
                      torch.randn(2, 5, 3, generator=g, dtype=torch.float64))
    D = M.to_dense()
    for a, i, j, c in [(0, 0, 0, 0), (4, 1, 2, 3), (2, 1, 0, 2)]:
        assert D[a * 2 + i, j * 4 + c] == M.L[i, a, j] * M.R[j, i, c]


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_factors_multiply(dtype):
    g = gen(2)
    M = MonarchMatrix(torch.randn(2, 3, 4, dtype=dtype, generator=g),
                      torch.randn(3, 2, 2, dtype=dtype, generator=g))
    x = torch.randn(5, 8, dtype=dtype, generator=g)
    y = torch.randn(5, 6, dtype=dtype, generator=g)
    D = M.to_dense()
    tol = 1e-5 if dtype == torch.complex64 else 1e-13
    assert rel(M @ x, x @ D.T) < tol
    assert rel(M.adjoint_matmul(y), y @ D.conj()) < tol


def test_bfloat16_multiply():
    M = MonarchMatrix.random(64, 64, 8, dtype=torch.bfloat16, generator=gen(3))
    x = torch.randn(16, 64, generator=gen(4)).bfloat16()
    ref = x.double() @ M.to_dense().double().T
    assert (M @ x).dtype == torch.bfloat16
    assert rel((M @ x).double(), ref) < 3e-2


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=features(), rank=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_projection_recovers_monarch_exactly(dtype, case, rank, seed):
    n_in, n_out, nb, blocks = case
    rank = min(rank, blocks.s, blocks.p)
    M = MonarchMatrix.random(n_in, n_out, nb, rank=rank, dtype=dtype, generator=gen(seed))
    P = project(M.to_dense(), nb, rank=rank)
    assert P.monarch.rank == rank and P.monarch.dtype == dtype
    assert rel(P.monarch.to_dense(), M.to_dense()) < TOL[dtype]
    assert P.rel_error < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=features(), seed=st.integers(0, 2**16))
def test_projection_is_a_projection(dtype, case, seed):
    n_in, n_out, nb, _ = case
    W = torch.randn(n_out, n_in, dtype=dtype, generator=gen(seed))
    P = project(W, nb)
    again = project(P.monarch.to_dense(), nb)
    assert rel(again.monarch.to_dense(), P.monarch.to_dense()) < TOL[dtype] * 10
    # Pythagoras: the residual is orthogonal to the (tangent of the) Monarch set at M.
    M = P.monarch.to_dense()
    assert abs(float((W - M).mul(M).sum())) < TOL[dtype] * 10 * float(W.norm()) ** 2


def _error(W: torch.Tensor, R: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    return torch.linalg.norm(W - MonarchMatrix(R, L).to_dense())


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=features(), rank=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_projection_is_optimal_under_perturbation(dtype, case, rank, seed):
    n_in, n_out, nb, blocks = case
    rank = min(rank, blocks.s, blocks.p)
    g = gen(seed)
    W = torch.randn(n_out, n_in, dtype=torch.float64, generator=g)
    M = project(W.to(dtype), nb, rank=rank).monarch
    R, L = M.R.double(), M.L.double()
    best = _error(W, R, L)
    # Local optimality: 16 random small perturbations never lower the error.
    for _ in range(16):
        dR = 1e-3 * torch.randn(R.shape, dtype=R.dtype, generator=g)
        dL = 1e-3 * torch.randn(L.shape, dtype=L.dtype, generator=g)
        assert _error(W, R + dR, L + dL) >= best * (1 - TOL[dtype])
    # Global optimality: no random Monarch of the same structure does better either.
    for _ in range(4):
        other = MonarchMatrix.random(n_in, n_out, nb, rank=rank, dtype=torch.float64,
                                     generator=g)
        assert torch.linalg.norm(W - other.to_dense()) >= best * (1 - TOL[dtype])


def test_projection_error_shrinks_with_rank_and_blocks_structure():
    W = torch.randn(24, 24, dtype=torch.float64, generator=gen(5))
    errors = [project(W, 4, rank=r).rel_error for r in (1, 2, 3, 4)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-12                        # rank min(s, p) = 4 represents any W


def test_projection_of_bfloat16_weights():
    W = torch.randn(16, 16, generator=gen(6)).bfloat16()
    P = project(W, 4)
    assert P.monarch.dtype == torch.bfloat16
    assert 0.2 < P.rel_error < 1.0


@pytest.mark.parametrize("rank", [1, 2])
def test_gradcheck_through_factors_and_input(rank):
    g = gen(7)
    lead = () if rank == 1 else (rank,)
    R = torch.randn(*lead, 2, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    L = torch.randn(*lead, 3, 2, 2, dtype=torch.float64, generator=g, requires_grad=True)
    x = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, R, L: MonarchMatrix(R, L) @ x, (x, R, L))
    assert torch.autograd.gradcheck(lambda R, L: MonarchMatrix(R, L).to_dense(), (R, L))
