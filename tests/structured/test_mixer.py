"""M2 layers: exact causality, bidirectional filter layout, implicit filter, GLU mixer."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import kernels
from kernels import causal_conv_direct
from structured.mixer import (
    GLUMixer,
    ImplicitFilter,
    SequenceMixer,
    cached_filters,
    features_first,
    make_linear,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: 1 thread

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-4, torch.float64: 1e-11}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _direct_conv(u, k_fwd, k_rev=None):
    """O(L²) reference: y[t] = Σ_{s≤t} k_fwd[t−s] u[s] + Σ_{s>t} k_rev[s−t−1] u[s] (the
    reverse sum is a causal one on the flipped sequence, taps shifted by one)."""
    y = causal_conv_direct(u, k_fwd)
    if k_rev is None:
        return y
    shifted = torch.nn.functional.pad(k_rev, (1, 0))[:, : u.shape[-1]]
    return y + causal_conv_direct(u.flip(-1), shifted).flip(-1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bidirectional_filter_layout_is_forward_plus_reverse(dtype):
    torch.manual_seed(0)
    mixer = SequenceMixer(3, causal=False, filter_order=8).to(dtype)
    length = 9
    k = mixer.long_filter(length)
    assert k.shape == (3, 2 * length)
    u = torch.randn(2, 3, length, generator=_gen(), dtype=dtype)
    expected = _direct_conv(u, mixer.filter(length), mixer.filter_rev(length))
    torch.testing.assert_close(kernels.long_conv(u, k), expected, rtol=TOL[dtype],
                               atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_implicit_filter_shape_dtype_and_decay_envelope(dtype):
    torch.manual_seed(0)
    filt = ImplicitFilter(6, order=8).to(dtype)
    k = filt(64)
    assert k.shape == (6, 64) and k.dtype == dtype
    # |sin| ≤ 1 feeds the last layer, so |k[c, t]| ≤ Σ|W_c| · exp(−α_c t/L).
    bound = filt.mlp[-1].weight.abs().sum(1, keepdim=True) * torch.exp(
        -filt.decay_rates.to(dtype)[:, None] * torch.arange(64, dtype=dtype) / 64)
    assert (k.abs() <= bound * (1 + 1e-6)).all()
    assert filt.decay_rates.min() > 0 and filt.decay_rates.max() > filt.decay_rates.min()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
def test_sequence_mixer_shape_and_dtype(dtype, causal):
    torch.manual_seed(0)
    mixer = SequenceMixer(8, causal=causal, filter_order=8).to(dtype)
    u = torch.randn(2, 16, 8, generator=_gen(), dtype=dtype)
    y = mixer(u)
    assert y.shape == u.shape and y.dtype == dtype and torch.isfinite(y).all()
    y.sum().backward()
    assert all(p.grad is not None for p in mixer.parameters())


@given(length=st.integers(2, 40), frac=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_causal_sequence_mixer_is_causal_bit_for_bit(length, frac, seed):
    t = min(length - 1, int(frac * length))
    torch.manual_seed(1)
    mixer = SequenceMixer(4, causal=True, filter_order=8).double()
    g = _gen(seed)
    u = torch.randn(2, length, 4, generator=g, dtype=torch.float64)
    v = u.clone()
    v[:, t:] = torch.randn(2, length - t, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(mixer(u)[:, :t], mixer(v)[:, :t])


def _mixer_reference(mixer, u):
    """The module docstring's formula, token-major, with ``torch.nn.functional`` calls."""
    length, d = u.shape[1], mixer.d_model
    z = torch.nn.functional.conv1d(mixer.in_proj(u).transpose(1, 2), mixer.short_conv.weight,
                                   mixer.short_conv.bias, padding=2, groups=3 * d)[..., :length]
    x1, x2, v = z.split(d, dim=1)
    v = v * x1
    if mixer.causal:
        conv = _direct_conv(v, mixer.filter(length))
    else:
        conv = _direct_conv(v, mixer.filter(length), mixer.filter_rev(length))
    return mixer.out_proj(((conv + mixer.skip[:, None] * v) * x2).transpose(1, 2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
def test_sequence_mixer_matches_its_formula(dtype, causal):
    torch.manual_seed(2)
    mixer = SequenceMixer(4, causal=causal, filter_order=8).to(dtype)
    u = torch.randn(3, 12, 4, generator=_gen(2), dtype=dtype)
    expected = _mixer_reference(mixer, u)
    torch.testing.assert_close(mixer(u), expected, rtol=TOL[dtype], atol=TOL[dtype])
    with torch.no_grad(), cached_filters(mixer):           # the cached-filter path
        torch.testing.assert_close(mixer(u), expected, rtol=TOL[dtype], atol=TOL[dtype])


def test_filter_cache_follows_length_and_parameter_changes():
    torch.manual_seed(3)
    mixer = SequenceMixer(4, causal=True, filter_order=8).double()
    with torch.no_grad():
        assert mixer.long_filter(16) is not mixer.long_filter(16)  # outside: never cached
    with cached_filters(mixer), torch.no_grad():
        first = mixer.long_filter(16)
        assert mixer.long_filter(16) is first             # reused
        assert torch.equal(first, mixer._compute_long_filter(16))
        assert mixer.long_filter(8).shape == (4, 8)       # new length, recomputed
        before = mixer.long_filter(8)
        mixer.filter.mlp[0].weight.add_(1)                # in place: a version bump
        assert torch.equal(mixer.long_filter(8), mixer._compute_long_filter(8))
        assert not torch.equal(mixer.long_filter(8), before)
        plain = mixer.float().long_filter(8)
        assert plain.dtype == torch.float32                            # new dtype
        with torch.autocast("cpu", dtype=torch.bfloat16):              # bf16 matmuls inside
            assert not torch.equal(mixer.long_filter(8), plain)
        assert torch.equal(mixer.long_filter(8), plain)                # autocast left
        with torch.enable_grad():
            assert mixer.long_filter(8).requires_grad                  # autograd: not cached
    assert mixer._filter_cache is None                                 # dropped on exit


@pytest.mark.parametrize("causal", [True, False])
def test_cached_filters_change_no_output(causal):
    torch.manual_seed(3)
    mixer = SequenceMixer(4, causal=causal, filter_order=8).double()
    u = torch.randn(2, 16, 4, generator=_gen(3), dtype=torch.float64)
    with torch.no_grad():
        plain = mixer(u)
        with cached_filters(mixer):
            assert torch.equal(mixer(u), plain) and torch.equal(mixer(u), plain)


def test_bidirectional_mixer_sees_the_future():
    torch.manual_seed(0)
    mixer = SequenceMixer(4, causal=False, filter_order=8).double()
    u = torch.randn(1, 16, 4, generator=_gen(), dtype=torch.float64)
    v = u.clone()
    v[:, -1] += 1.0
    with torch.no_grad():
        assert not torch.allclose(mixer(u)[:, 0], mixer(v)[:, 0])


def test_sequence_mixer_rejects_wrong_width():
    with pytest.raises(ValueError, match="batch, seq, 8"):
        SequenceMixer(8, causal=True)(torch.zeros(1, 4, 6))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["dense", "monarch", "blockdiag"])
def test_glu_mixer(dtype, kind):
    torch.manual_seed(0)
    mlp = GLUMixer(8, 16, linear=kind, nblocks=4).to(dtype)
    u = torch.randn(3, 5, 8, generator=_gen(), dtype=dtype)
    y = mlp(u)
    assert y.shape == u.shape and y.dtype == dtype
    gate, value = mlp.up(u).split(16, dim=-1)
    torch.testing.assert_close(y, mlp.down(torch.nn.functional.gelu(gate) * value))
    with torch.no_grad():                              # the inference path
        y_fast = mlp(u)
    assert not y_fast.requires_grad
    torch.testing.assert_close(y_fast, y.detach())
    n_dense = sum(p.numel() for p in GLUMixer(8, 16, linear="dense").parameters())
    n_kind = sum(p.numel() for p in mlp.parameters())
    assert n_kind < n_dense if kind != "dense" else n_kind == n_dense


@pytest.mark.parametrize("kind", ["dense", "monarch", "blockdiag"])
def test_glu_chunks_and_features_first_change_nothing(kind):
    torch.manual_seed(1)
    mlp = GLUMixer(8, 16, linear=kind, nblocks=4, chunk_rows=4).double()
    u = torch.randn(3, 5, 8, generator=_gen(1), dtype=torch.float64, requires_grad=True)
    gate, value = mlp.up(u).split(16, dim=-1)
    expected = mlp.down(torch.nn.functional.gelu(gate) * value)
    y = mlp(u)                                             # 15 rows: chunks 4, 4, 4, 3
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    grad_u, = torch.autograd.grad(y.square().sum(), u)
    expected_grad, = torch.autograd.grad(expected.square().sum(), u)
    torch.testing.assert_close(grad_u, expected_grad, rtol=1e-12, atol=1e-12)
    x_t = torch.randn(8, 6, dtype=torch.float64)
    torch.testing.assert_close(features_first(mlp.up, x_t), mlp.up(x_t.T).T)
    assert features_first(mlp.up, x_t).is_contiguous()


def test_make_linear_rejects_unknown_kind():
    with pytest.raises(ValueError, match="linear kind"):
        make_linear("sparse", 4, 4)
