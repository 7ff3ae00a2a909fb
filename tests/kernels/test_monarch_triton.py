"""Fused Triton Monarch multiply (interpreted on CPU) against the two-bmm reference."""

import pytest
import torch
from conftest import TOL, triton_backend
from hypothesis import given
from hypothesis import strategies as st

from kernels import monarch_matmul, monarch_matmul_reference


def _factors(k, p, q, s, batch, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, k * p, generator=g, dtype=torch.float64).to(dtype)
    R = torch.randn(k, q, p, generator=g, dtype=torch.float64).to(dtype)
    L = torch.randn(q, s, k, generator=g, dtype=torch.float64).to(dtype)
    return x, R, L


def _triton(x, R, L):
    with triton_backend():
        return monarch_matmul(x, R, L)


def _grads(fn, x, R, L, gy):
    leaves = [t.detach().clone().requires_grad_() for t in (x, R, L)]
    y = fn(*leaves)
    return (y, *torch.autograd.grad(y, leaves, gy))


@pytest.mark.parametrize("shape", [
    (4, 4, 4, 4, (5,)),        # square Monarch, odd batch
    (16, 16, 16, 16, (3, 7)),  # n = 256, two batch dims, all blocks fill a 16-tile
    (3, 5, 2, 7, (1,)),        # rectangular, nothing a power of two
    (2, 70, 3, 90, (9,)),      # blocks span several chunks (loops inside the kernel)
])
def test_forward_and_backward_match_reference(shape, dtype, rel_err):
    k, p, q, s, batch = shape
    x, R, L = _factors(k, p, q, s, batch, dtype)
    gy = torch.randn(*batch, s * q, dtype=dtype, generator=torch.Generator().manual_seed(1))
    got = _grads(_triton, x, R, L, gy)
    ref = _grads(monarch_matmul_reference, x, R, L, gy)
    for name, a, b in zip(("y", "gx", "gR", "gL"), got, ref, strict=True):
        assert a.shape == b.shape and a.dtype == dtype, name
        assert rel_err(a, b) < TOL[dtype], name


@given(k=st.integers(1, 6), p=st.integers(1, 6), q=st.integers(1, 6), s=st.integers(1, 6),
       n=st.integers(1, 20))
def test_random_shapes_match_reference(k, p, q, s, n):
    x, R, L = _factors(k, p, q, s, (n,), torch.float64, seed=k + 7 * p + 49 * q)
    assert _triton(x, R, L).sub(monarch_matmul_reference(x, R, L)).abs().max() < 1e-12 * (
        1 + monarch_matmul_reference(x, R, L).abs().max())


def test_non_contiguous_inputs(dtype, rel_err):
    k, p, q, s = 4, 3, 5, 2
    x, R, L = _factors(k, p, q, s, (6, 2), dtype)
    x_nc = torch.cat([x, x], dim=-1)[..., ::2].transpose(0, 1)       # (2, 6, k·p) strided
    x_nc.copy_(x.transpose(0, 1))
    R_nc = R.transpose(1, 2).contiguous().transpose(1, 2)            # same values, new strides
    L_nc = L.permute(2, 1, 0).contiguous().permute(2, 1, 0)
    assert not (x_nc.is_contiguous() or R_nc.is_contiguous() or L_nc.is_contiguous())
    g = torch.Generator().manual_seed(2)
    gy = torch.randn(2, 6, s * q, dtype=dtype, generator=g).transpose(0, 1).contiguous()
    gy = gy.transpose(0, 1)   # (2, 6, s·q), non-contiguous
    got = _grads(_triton, x_nc, R_nc, L_nc, gy)
    ref = _grads(monarch_matmul_reference, x_nc, R_nc, L_nc, gy)
    for a, b in zip(got, ref, strict=True):
        assert rel_err(a, b) < TOL[dtype]


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False),
                                   (False, False, True), (False, True, True)])
def test_partial_gradients(needs, rel_err):
    x, R, L = _factors(3, 4, 5, 6, (7,), torch.float64)
    leaves = [t.clone().requires_grad_(need) for t, need in zip((x, R, L), needs, strict=True)]
    wanted = [t for t in leaves if t.requires_grad]
    gy = torch.randn(7, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    got = torch.autograd.grad(_triton(*leaves), wanted, gy)
    ref = torch.autograd.grad(monarch_matmul_reference(*leaves), wanted, gy)
    for a, b in zip(got, ref, strict=True):
        assert rel_err(a, b) < 1e-12


def test_bfloat16_as_accurate_as_reference(rel_err):
    x, R, L = _factors(8, 8, 8, 8, (5,), torch.bfloat16)
    exact = monarch_matmul_reference(x.double(), R.double(), L.double())
    err_triton = rel_err(_triton(x, R, L), exact)
    err_ref = rel_err(monarch_matmul_reference(x, R, L), exact)
    assert _triton(x, R, L).dtype == torch.bfloat16
    assert err_triton < 2 * err_ref + 1e-3 and err_triton < 2e-2


def test_empty_batch():
    x, R, L = _factors(2, 3, 4, 5, (0,), torch.float32)
    assert _triton(x, R, L).shape == (0, 20)


@pytest.mark.parametrize("make, err", [
    (lambda x, R, L: (x[..., :-1], R, L), ValueError),               # x's width
    (lambda x, R, L: (x, R[0], L), ValueError),                      # R not 3-D
    (lambda x, R, L: (x, R, L[:, :, :-1]), ValueError),              # L's k mismatch
    (lambda x, R, L: (x, R.double(), L), TypeError),                 # mixed dtypes
    (lambda x, R, L: (x.int(), R.int(), L.int()), TypeError),        # not floating
])
def test_bad_inputs_raise(make, err):
    x, R, L = _factors(2, 3, 4, 5, (3,), torch.float32)
    with pytest.raises(err):
        _triton(*make(x, R, L))


def test_sum_backward_with_broadcast_gradient(rel_err):
    """``y.sum()`` hands backward a stride-0 gradient; the kernel reads it through strides."""
    x, R, L = _factors(3, 4, 5, 2, (6,), torch.float64)
    got = _grads(_triton, x, R, L, torch.ones((), dtype=torch.float64).expand(6, 10))
    ref = _grads(monarch_matmul_reference, x, R, L, torch.ones(6, 10, dtype=torch.float64))
    for a, b in zip(got, ref, strict=True):
        assert rel_err(a, b) < 1e-12
