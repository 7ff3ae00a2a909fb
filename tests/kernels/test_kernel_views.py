"""Tensors with PyTorch's lazy negative / conjugate bit, and strided views, reach the Triton
kernels correctly (a kernel reads raw memory, so an unresolved ``z.conj().imag`` would be
read with the wrong sign), in every dtype; and the complex Monarch products of
:mod:`structured` (which pass such views) are right on the Triton backend.
"""

import pytest
import torch
from conftest import TOL, triton_backend

from kernels import long_conv, long_conv_reference, monarch_matmul
from structured.monarch import MonarchMatrix
from structured.transforms import circulant_monarch

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _as_view(t: torch.Tensor, how: str) -> torch.Tensor:
    """A tensor equal to ``t`` whose memory is not ``t``'s plain layout."""
    if how == "neg":                       # negative bit: memory holds −t
        v = torch._neg_view(-t)
        assert v.is_neg()
    elif how == "conj-imag":               # z.conj().imag: memory holds −t, negative bit set
        z = torch.complex(torch.randn_like(t), -t)
        v = z.conj().imag
        assert v.is_neg()
    else:                                  # "strided": every other element of a wider buffer
        v = torch.stack([t, -t], dim=-1)[..., 0]
        assert not v.is_contiguous()
    assert torch.equal(v, t)
    return v


def _views(dtype):
    return ["neg", "strided"] + (["conj-imag"] if dtype in COMPLEX else [])


def _run(fn, args, gy, gy_view):
    """``(y, grads)`` on the Triton backend; the incoming gradient is passed as a view."""
    leaves = [a.detach().clone().requires_grad_() if a.requires_grad else a for a in args]
    with triton_backend():
        y = fn(*leaves)
    grads = torch.autograd.grad(y, [a for a in leaves if a.requires_grad],
                                _as_view(gy, gy_view))
    return y, grads


def _same(got, want, dtype):
    """Bit-for-bit in bfloat16 (same kernel, same values); within TOL otherwise."""
    for a, b in zip(got, want, strict=True):
        if dtype == torch.bfloat16:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=TOL[dtype], atol=TOL[dtype])


def _monarch_case(g):
    def dense_product(x, R, L):
        return x @ torch.einsum("iaj,jic->aijc", L, R).reshape(8, 12).T

    args = [torch.randn(*s, generator=g) for s in ((5, 12), (3, 4, 4), (4, 2, 3))]
    return monarch_matmul, args, torch.randn(5, 8, generator=g), dense_product


def _long_conv_case(g):
    u, pre, post = (torch.randn(1, 2, 256, generator=g) for _ in range(3))
    k = torch.randn(2, 256, generator=g) / 16
    return long_conv, [u, k, pre, post], torch.randn(1, 2, 256, generator=g), long_conv_reference


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("how", ["neg", "strided", "conj-imag"])
@pytest.mark.parametrize("case", [_monarch_case, _long_conv_case], ids=["monarch", "long_conv"])
def test_views_reach_the_kernel_with_their_values(case, dtype, how):
    """The kernel on a view equals the kernel on a plain copy (bit for bit in bfloat16),
    for the output and every gradient (the incoming gradient passed as a view too)."""
    if how not in _views(dtype):
        pytest.skip("no complex bfloat16")
    fn, args, gy, exact = case(torch.Generator().manual_seed(0))
    args, gy = [t.to(dtype) for t in args], gy.to(dtype)
    want_y, want_g = _run(fn, [t.clone().requires_grad_() for t in args], gy, "strided")
    views = [_as_view(t, how).requires_grad_() for t in args]
    got_y, got_g = _run(fn, views, gy, how)
    _same((got_y, *got_g), (want_y, *want_g), dtype)
    if dtype != torch.bfloat16:           # and both are the right answer
        want = exact(*(t.double() for t in args))       # float64 from the same values
        torch.testing.assert_close(got_y.double(), want, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
def test_complex_monarch_products_on_triton(dtype, launches):
    g = torch.Generator().manual_seed(2)
    M = MonarchMatrix.random(12, 8, 2, dtype=dtype, generator=g)
    x = torch.randn(3, 12, dtype=dtype, generator=g)
    y = torch.randn(3, 8, dtype=dtype, generator=g)
    dense = M.to_dense()
    with triton_backend():
        mx, mhy = M @ x, M.adjoint_matmul(y)
    assert launches.count["_fused_two_stage_kernel"] == 8        # four real products each
    tol = 1e-5 if dtype == torch.complex64 else 1e-12
    torch.testing.assert_close(mx, x @ dense.T, rtol=tol, atol=tol)
    torch.testing.assert_close(mhy, y @ dense.conj(), rtol=tol, atol=tol)


@pytest.mark.parametrize("real", [torch.float32, torch.float64], ids=str)
def test_circulant_monarch_on_triton(real, launches):
    """``A Bᴴ x`` is the circular convolution ``Σ_v h[(u − v) mod n] x[v]``."""
    n, n1 = 16, 4
    g = torch.Generator().manual_seed(3)
    h = torch.randn(n, dtype=real, generator=g)
    x = torch.randn(2, n, dtype=COMPLEX[real], generator=g)
    with triton_backend():
        A, B = circulant_monarch(h, n1)
        y = A @ B.adjoint_matmul(x)
    assert launches.count["_fused_two_stage_kernel"] >= 8
    idx = (torch.arange(n)[:, None] - torch.arange(n)[None, :]) % n
    want = x @ h[idx].to(x.dtype).T
    tol = 1e-5 if real == torch.float32 else 1e-12
    torch.testing.assert_close(y, want, rtol=tol, atol=tol)
