"""The PyTorch references themselves, judged against definitions written independently.

The Triton tests compare kernels with these references, so the references must be right
on their own: the Monarch multiply against the dense matrix built entry by entry from its
definition ``M[a·q + i, j·p + c] = L[i, a, j] · R[j, i, c]``, the long convolution against
the ``O(L²)`` sum. Every argument check is exercised with its message. CPU only, fast.
"""

import pytest
import torch

from kernels.long_conv_reference import check_long_conv_args, long_conv_reference
from kernels.monarch_reference import check_monarch_args, monarch_matmul_reference


def _dense_monarch(R: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """``(s·q, k·p)`` matrix from the entry-wise definition, by plain loops."""
    k, q, p = R.shape
    s = L.shape[1]
    M = torch.zeros(s * q, k * p, dtype=torch.float64)
    for a in range(s):
        for i in range(q):
            for j in range(k):
                for c in range(p):
                    M[a * q + i, j * p + c] = float(L[i, a, j]) * float(R[j, i, c])
    return M


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "autograd"])
@pytest.mark.parametrize(("k", "p", "q", "s"), [(2, 3, 4, 5), (3, 1, 2, 1), (2, 2, 2, 2)])
def test_monarch_reference_is_the_dense_product(dtype, grad, k, p, q, s):
    g = torch.Generator().manual_seed(k + 10 * p + 100 * q + 1000 * s)
    x = torch.randn(2, 3, k * p, dtype=dtype, generator=g)
    R = torch.randn(k, q, p, dtype=dtype, generator=g)
    L = torch.randn(q, s, k, dtype=dtype, generator=g)
    expected = x.double() @ _dense_monarch(R, L).T
    y = monarch_matmul_reference(x, R.requires_grad_(grad), L)
    assert y.shape == (2, 3, s * q) and y.dtype == dtype and y.requires_grad == grad
    tol = 1e-5 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(y.detach().double(), expected, rtol=tol, atol=tol)


def test_monarch_reference_gradients_are_the_dense_ones():
    g = torch.Generator().manual_seed(3)
    x, R, L = (torch.randn(*shape, dtype=torch.float64, generator=g).requires_grad_()
               for shape in ((4, 6), (2, 3, 3), (3, 2, 2)))
    gy = torch.randn(4, 6, dtype=torch.float64, generator=g)
    got = torch.autograd.grad(monarch_matmul_reference(x, R, L), (x, R, L), gy)
    dense = torch.einsum("iaj,jic->aijc", L, R).reshape(6, 6)
    want = torch.autograd.grad(x @ dense.T, (x, R, L), gy)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(("make", "err", "match"), [
    (lambda x, R, L: (x, R[0], L), ValueError, "3-D"),
    (lambda x, R, L: (x, R, L[0]), ValueError, "3-D"),
    (lambda x, R, L: (x, R, L[:, :, :-1]), ValueError, "L must have shape"),
    (lambda x, R, L: (x, R, L[:-1]), ValueError, "L must have shape"),
    (lambda x, R, L: (x[..., :-1], R, L), ValueError, "k·p = 6"),
    (lambda x, R, L: (x, R.double(), L), TypeError, "share a dtype"),
    (lambda x, R, L: (x, R, L.double()), TypeError, "share a dtype"),
    (lambda x, R, L: (x.int(), R.int(), L.int()), TypeError, "floating"),
])
def test_monarch_reference_rejects_bad_arguments(make, err, match):
    x, R, L = torch.ones(2, 6), torch.ones(2, 3, 3), torch.ones(3, 4, 2)
    assert check_monarch_args(x, R, L) == (2, 3, 3, 4)
    with pytest.raises(err, match=match):
        monarch_matmul_reference(*make(x, R, L))


def _direct_conv(u, k, pre, post):
    """``post ⊙ Σ_s k[(t − s) mod taps] (pre ⊙ u)[s]`` for ``t, s < L``, in float64."""
    length, taps = u.shape[-1], k.shape[-1]
    v = u.double() * (1 if pre is None else pre.double())
    y = torch.zeros_like(v)
    for t in range(length):
        for s in range(length):
            if taps == length and s > t:
                continue
            y[..., t] += k.double()[:, (t - s) % taps] * v[..., s]
    return y * (1 if post is None else post.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("taps", ["causal", "bidirectional"])
@pytest.mark.parametrize("gates", [(False, False), (True, False), (False, True), (True, True)])
def test_long_conv_reference_is_the_direct_sum(dtype, taps, gates):
    g = torch.Generator().manual_seed(7)
    length = 9
    u = torch.randn(2, 3, length, dtype=dtype, generator=g)
    k = torch.randn(3, length * (1 if taps == "causal" else 2), dtype=dtype, generator=g)
    pre, post = (torch.randn(2, 3, length, dtype=dtype, generator=g) if on else None
                 for on in gates)
    y = long_conv_reference(u, k, pre, post)
    assert y.dtype == dtype and y.shape == u.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(y.double(), _direct_conv(u, k, pre, post), rtol=tol, atol=tol)


def test_long_conv_reference_half_precision_runs_in_float32():
    g = torch.Generator().manual_seed(1)
    u = torch.randn(1, 2, 8, generator=g).bfloat16()
    k = torch.randn(2, 8, generator=g).bfloat16()
    y = long_conv_reference(u, k)
    assert y.dtype == torch.bfloat16
    exact = _direct_conv(u, k, None, None)
    # rounding of the output only: bf16 has 8 significant bits
    assert ((y.double() - exact).abs() <= 2**-7 * exact.abs() + 1e-2).all()


@pytest.mark.parametrize(("make", "err", "match"), [
    (lambda u, k, a, b: (u[0], k, None, None), ValueError, "batch, channels, length"),
    (lambda u, k, a, b: (u, k[:1], None, None), ValueError, "causal"),
    (lambda u, k, a, b: (u, k[:, :-1], None, None), ValueError, "bidirectional"),
    (lambda u, k, a, b: (u, k[None], None, None), ValueError, "causal"),
    (lambda u, k, a, b: (u.int(), k, None, None), TypeError, "floating"),
    (lambda u, k, a, b: (u, k.int(), None, None), TypeError, "floating"),
    (lambda u, k, a, b: (u, k, a[..., :-1], None), ValueError, "pre_gate must have"),
    (lambda u, k, a, b: (u, k, None, b[..., :-1]), ValueError, "post_gate must have"),
    (lambda u, k, a, b: (u, k, a.double(), None), TypeError, "pre_gate must have u's dtype"),
    (lambda u, k, a, b: (u, k, None, b.double()), TypeError, "post_gate must have u's dtype"),
])
def test_long_conv_reference_rejects_bad_arguments(make, err, match):
    u, k, a, b = torch.ones(2, 3, 4), torch.ones(3, 4), torch.ones(2, 3, 4), torch.ones(2, 3, 4)
    assert check_long_conv_args(u, k, a, b) == (2, 3, 4)
    assert check_long_conv_args(u, torch.ones(3, 8)) == (2, 3, 4)
    with pytest.raises(err, match=match):
        long_conv_reference(*make(u, k, a, b))
