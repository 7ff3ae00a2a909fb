"""Edges of :mod:`structured.monarch` that the main tests do not pin (added for the
mutation check, ``python3 -m mutmut run``): ``MonarchMatrix.random``'s scale, rank axis,
generator and dtype; every factor / shape check with its message; ``project`` on zero."""

import math

import pytest
import torch

from structured.monarch import MonarchMatrix, MonarchShape, project


@pytest.mark.parametrize("rank", [1, 3])
def test_random_factors_scale_shape_and_generator(rank):
    g = torch.Generator().manual_seed(0)
    M = MonarchMatrix.random(64, 64, 8, rank=rank, dtype=torch.float64, generator=g)
    lead = () if rank == 1 else (rank,)
    assert M.R.shape == (*lead, 8, 8, 8) and M.L.shape == (*lead, 8, 8, 8) and M.rank == rank
    assert M.R.device.type == "cpu" and M.dtype == torch.float64
    # entries: N(0, 1) / sqrt(fan_in · sqrt(rank)), fan_in = p = 8 for R and k = 8 for L
    for t in (M.R, M.L):
        assert t.std().item() == pytest.approx((8 * rank**0.5) ** -0.5, rel=0.15)
    again = MonarchMatrix.random(64, 64, 8, rank=rank, dtype=torch.float64,
                                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(M.R, again.R) and torch.equal(M.L, again.L)
    with pytest.raises(TypeError, match=r"^dtype must be one of"):
        MonarchMatrix.random(64, 64, 8, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"^rank must be a positive int"):
        MonarchMatrix.random(64, 64, 8, rank=0)


@pytest.mark.parametrize(("args", "match"), [
    ((0, 4, 2), r"^in_features must be a positive int, got 0"),
    ((4, 0, 2), r"^out_features must be a positive int, got 0"),
    ((4, 4, 0), r"^nblocks must be a positive int, got 0"),
])
def test_for_features_names_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        MonarchShape.for_features(*args)


def _factors(*shapes, dtype=torch.float64):
    return [torch.ones(*s, dtype=dtype) for s in shapes]


@pytest.mark.parametrize(("R", "L", "err", "match"), [
    ([[1.0]], torch.ones(2, 2, 2), TypeError, r"^R must be a torch.Tensor, got list"),
    (torch.ones(2, 2, 2), [[1.0]], TypeError, r"^L must be a torch.Tensor, got list"),
    (*_factors((2, 2, 2), (2, 2)), ValueError, r"^R and L must both be 3-D"),
    (*_factors((2, 2), (2, 2, 2)), ValueError, r"^R and L must both be 3-D"),
    (*_factors((2, 3, 4), (2, 5, 3)), ValueError,
     r"^L must have shape \(3, 's', 2\) to follow R \(2, 3, 4\), got \(2, 5, 3\)"),
    (*_factors((2, 3, 4), (3, 5, 3)), ValueError, r"^L must have shape \(3, 's', 2\)"),
    (*_factors((2, 2, 3, 4), (3, 3, 5, 2)), ValueError,
     r"^L must have shape \(2, 3, 's', 2\) to follow R"),
    (*_factors((0, 3, 4), (3, 5, 0)), ValueError, r"^empty Monarch factors"),
    (*_factors((2, 3, 0), (3, 5, 2)), ValueError, r"^empty Monarch factors"),
    (*_factors((2, 0, 4), (0, 5, 2)), ValueError, r"^empty Monarch factors"),
    (*_factors((2, 3, 4), (3, 0, 2)), ValueError, r"^empty Monarch factors"),
    (*_factors((0, 2, 3, 4), (0, 3, 5, 2)), ValueError, r"^empty Monarch factors"),
])
def test_factor_checks(R, L, err, match):
    with pytest.raises(err, match=match):
        MonarchMatrix(R, L)


def test_rank_stacked_factors_with_a_leading_axis_of_one_are_fine():
    M = MonarchMatrix(*_factors((1, 2, 3, 4), (1, 3, 5, 2)))
    assert M.shape == (15, 8) and M.rank == 1


def test_project_of_zero_is_exact():
    P = project(torch.zeros(8, 8, dtype=torch.float64), 2)
    assert P.rel_error == 0.0 and not math.isnan(P.rel_error)
    assert torch.equal(P.monarch.to_dense(), torch.zeros(8, 8, dtype=torch.float64))


def test_project_error_of_a_small_matrix_is_relative():
    W = 1e-3 * torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    P = project(W, 2)
    want = (torch.linalg.norm(W - P.monarch.to_dense()) / torch.linalg.norm(W)).item()
    assert 0 < P.rel_error == pytest.approx(want, rel=1e-12)
