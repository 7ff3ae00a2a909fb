"""The reference Monarch multiply: its no-grad (batch-major, ``out=``) path equals autograd's."""

import pytest
import torch

from kernels.monarch_reference import monarch_matmul_reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("k", "p", "q", "s"), [(3, 4, 5, 2), (1, 1, 1, 1), (4, 2, 3, 6)])
def test_no_grad_path_matches_autograd_path(dtype, k, p, q, s):
    g = torch.Generator().manual_seed(k * 100 + p * 10 + q)
    x = torch.randn(2, 3, k * p, dtype=dtype, generator=g)
    R = torch.randn(k, q, p, dtype=dtype, generator=g)
    L = torch.randn(q, s, k, dtype=dtype, generator=g)
    with torch.no_grad():
        fast = monarch_matmul_reference(x, R, L)
    tracked = monarch_matmul_reference(x, R.requires_grad_(), L)
    assert tracked.requires_grad and not fast.requires_grad
    assert fast.shape == tracked.shape == (2, 3, s * q)
    torch.testing.assert_close(fast, tracked.detach(), rtol=0, atol=0)
    dense = torch.einsum("iaj,jic->aijc", L.detach(), R.detach()).reshape(s * q, k * p)
    torch.testing.assert_close(fast, x @ dense.T)
