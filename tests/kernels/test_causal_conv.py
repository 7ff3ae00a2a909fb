"""Exactly causal convolutions: definition, agreement with the FFT, causality bit for bit."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kernels import causal_conv_direct, causal_long_conv

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: 1 thread

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-4, torch.float64: 1e-11}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", DTYPES)
def test_direct_convolution_definition(dtype):
    g = _gen(3)
    u = torch.randn(2, 3, 6, generator=g, dtype=dtype)
    k = torch.randn(3, 6, generator=g, dtype=dtype)
    expected = torch.stack(
        [sum(k[:, t - s] * u[..., s] for s in range(t + 1)) for t in range(6)], dim=-1)
    torch.testing.assert_close(causal_conv_direct(u, k), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("length", [1, 7, 32, 100])
def test_causal_long_conv_matches_direct_convolution(dtype, length):
    g = _gen(length)
    u = torch.randn(2, 3, length, generator=g, dtype=dtype)
    k = torch.randn(3, length, generator=g, dtype=dtype)
    y = causal_long_conv(u, k, block=8)
    assert y.dtype == dtype and y.shape == u.shape
    torch.testing.assert_close(y, causal_conv_direct(u, k), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("length", [64, 300, 1024])
def test_causal_long_conv_default_blocks_match_direct_convolution(dtype, length):
    g = _gen(length)
    u = torch.randn(2, 3, length, generator=g, dtype=dtype)
    k = torch.randn(3, length, generator=g, dtype=dtype) / length ** 0.5
    y = causal_long_conv(u, k)
    assert y.dtype == dtype and y.shape == u.shape
    expected = causal_conv_direct(u.double(), k.double())
    torch.testing.assert_close(y.double(), expected, rtol=TOL[dtype], atol=TOL[dtype])


@given(length=st.integers(2, 80), frac=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_causal_long_conv_is_causal_bit_for_bit(length, frac, seed):
    t = min(length - 1, int(frac * length))
    g = _gen(seed)
    u = torch.randn(1, 2, length, generator=g, dtype=torch.float64)
    k = torch.randn(2, length, generator=g, dtype=torch.float64)
    v = u.clone()
    v[..., t:] = torch.randn(1, 2, length - t, generator=g, dtype=torch.float64) * 1e3
    assert torch.equal(causal_long_conv(u, k, block=4)[..., :t],
                       causal_long_conv(v, k, block=4)[..., :t])


def test_causal_long_conv_rejects_bad_shapes():
    with pytest.raises(ValueError, match="k: \\(H, L\\)"):
        causal_long_conv(torch.zeros(1, 2, 8), torch.zeros(2, 16))


def test_direct_convolution_vmaps_without_the_batching_fallback(recwarn):
    """The LM finisher takes per-sample Jacobians, ``vmap(jacrev)``, through the filter;
    an op without a batching rule makes torch loop over the batch (and warn)."""
    g = _gen(5)
    u = torch.randn(4, 3, 6, generator=g, dtype=torch.float64)
    k = torch.randn(3, 6, generator=g, dtype=torch.float64)
    jac = torch.func.vmap(torch.func.jacrev(lambda kk, uu: causal_conv_direct(uu[None], kk)[0]),
                          in_dims=(None, 0))(k, u)
    assert not [w for w in recwarn if "batching rule" in str(w.message)]
    for sample in range(4):
        want = torch.func.jacrev(lambda kk, s=sample: causal_conv_direct(u[s:s + 1], kk)[0])(k)
        torch.testing.assert_close(jac[sample], want)
