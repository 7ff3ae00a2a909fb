"""Monarch-DFT long convolution in Triton (interpreted on CPU) against the torch.fft reference.

The three-pass plan (rows longer than ``ONE_PASS_MAX_N``) is tested at small ``L`` by
lowering the threshold (``_force_three_passes``, fixture ``passes``) and, in
``test_three_pass_plan_matches_reference``, the row width and tile sizes too, so that the
tile grids and reduction loops run several iterations; one test runs it at its real size,
``L = 16384``.
"""

import contextlib
import importlib

import pytest
import torch
from conftest import TOL, triton_backend

import kernels
from kernels import long_conv, long_conv_reference

# Small three-pass settings (row width, tile sizes); ONE_PASS_MAX_N = 256 < every N = 2L.
SMALL_PASSES = {
    # L = 512: N1 = 64, N2 = 16: 4 (pass 1) / 2 (pass 3) row blocks, K loops of 2–4 chunks
    "w16": (16, {"m": 16, "k": 16, "c": 16, "r": 16}),
    # L = 512: N1 = N2 = 32: 2 column blocks per tile row, 2 row-pass blocks
    "w32": (32, {"m": 16, "k": 16, "c": 16, "r": 16}),
}


def _inputs(batch, channels, length, bidirectional, gates, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    u = rand(batch, channels, length)
    k = rand(channels, 2 * length if bidirectional else length) / length**0.5
    pre, post = (rand(batch, channels, length), rand(batch, channels, length)) if gates else (
        None, None)
    return u, k, pre, post


def _triton(u, k, pre=None, post=None):
    with triton_backend():
        return long_conv(u, k, pre, post)


def _value_and_grads(fn, args, gy):
    leaves = [None if a is None else a.detach().clone().requires_grad_() for a in args]
    y = fn(*leaves)
    wanted = [a for a in leaves if a is not None]
    return (y, *torch.autograd.grad(y, wanted, gy))


def _triton_module():
    return importlib.import_module("kernels.long_conv_triton")


def _force_three_passes(monkeypatch, width=None, blocks=None):
    lct = _triton_module()
    monkeypatch.setattr(lct, "ONE_PASS_MAX_N", 256)
    if width is not None:
        monkeypatch.setattr(lct, "ROW_WIDTH", width)
        monkeypatch.setattr(lct, "PASS_BLOCKS", blocks)
    return lct


@pytest.fixture(params=["one", "three"])
def passes(request, monkeypatch):
    """Run a test under the one-pass plan and, with its default tiles, the three-pass plan."""
    if request.param == "three":
        _force_three_passes(monkeypatch)
    return request.param


def _check_against_reference(case, dtype, rel_err):
    u, k, pre, post = _inputs(*case, dtype)
    gy = torch.randn(u.shape, dtype=dtype, generator=torch.Generator().manual_seed(5))
    got = _value_and_grads(_triton, (u, k, pre, post), gy)
    ref = _value_and_grads(long_conv_reference, (u, k, pre, post), gy)
    for i, (a, b) in enumerate(zip(got, ref, strict=True)):
        assert a.shape == b.shape and a.dtype == dtype, i
        assert rel_err(a, b) < TOL[dtype], i


@pytest.mark.parametrize("case", [
    (3, 2, 256, False, False),   # causal, odd batch
    (1, 3, 256, True, True),     # bidirectional (2L taps), both gates
    (2, 1, 512, False, True),    # causal, gates, N = 1024 = 32 × 32
])
def test_forward_and_backward_match_reference(case, dtype, rel_err):
    assert _triton_module().plan(case[2], dtype).one_pass
    _check_against_reference(case, dtype, rel_err)


@pytest.mark.parametrize("small, case", [
    ("w16", (3, 1, 256, False, False)),   # causal, odd batch
    ("w16", (1, 2, 512, True, True)),     # bidirectional (2L taps), both gates
    ("w32", (2, 1, 512, False, True)),    # causal, gates
])
def test_three_pass_plan_matches_reference(monkeypatch, small, case, dtype, rel_err):
    lct = _force_three_passes(monkeypatch, *SMALL_PASSES[small])
    p = lct.plan(case[2], dtype)
    assert not p.one_pass and p.n1 * p.n2 == 2 * case[2] and p.n2 <= lct.ROW_WIDTH
    _check_against_reference(case, dtype, rel_err)


def test_three_pass_plan_at_full_length(dtype, rel_err):
    """``L = 16384`` (past ``ONE_PASS_MAX_N``) with the real row width and tiles, forward
    only (the interpreter is slow; backward runs the same kernels, tested above):
    causal in float32, bidirectional in float64."""
    lct = _triton_module()
    p = lct.plan(16384, dtype)
    assert not p.one_pass and p.n2 == (128 if dtype == torch.float32 else 64)
    u, k, _, post = _inputs(1, 1, 16384, dtype == torch.float64, True, dtype)
    assert rel_err(_triton(u, k, None, post), long_conv_reference(u, k, None, post)) < TOL[dtype]


@pytest.mark.parametrize("length", [256, 1024, 4096, 8192, 16384, 65536])
def test_plan_tiles_divide_the_row(length, dtype):
    p = _triton_module().plan(length, dtype)
    # one pass up to L = 8192 in float32, 4096 in float64 (shared memory, see the module)
    assert p.one_pass == (length <= (8192 if dtype == torch.float32 else 4096))
    assert p.n1 * p.n2 == 2 * length and min(p.n1, p.n2) >= 16
    if not p.one_pass:
        assert (p.n1 // 2) % p.block_m == 0 and (p.n1 // 2) % p.block_k == 0
        assert p.n2 % p.block_c == 0 and p.n1 % p.block_r == 0
        assert min(p.block_m, p.block_k, p.block_c, p.block_r) >= 16


@pytest.mark.parametrize("bidirectional", [False, True])
def test_causal_never_reads_the_future(bidirectional, passes):
    u, k, pre, post = _inputs(2, 2, 256, bidirectional, True, torch.float64)
    t = 100
    u2 = u.clone()
    g = torch.Generator().manual_seed(9)
    u2[..., t:] += 1e3 * torch.randn(u[..., t:].shape, dtype=u.dtype, generator=g)
    dy = _triton(u2, k, pre, post) - _triton(u, k, pre, post)
    past, future = dy[..., :t].norm(), dy[..., t:].norm()
    assert future > 1.0
    if bidirectional:   # control: taps k[L+1:] do reach into the future
        assert past > 1e-3 * future
    else:               # only FFT roundoff may leak (exact arithmetic gives 0)
        assert past < 1e-13 * future


def test_non_contiguous_inputs(dtype, rel_err, passes):
    u, k, pre, post = _inputs(2, 3, 256, True, True, dtype)
    u_nc = u.transpose(0, 1).contiguous().transpose(0, 1)
    k_nc = torch.stack([k, k], dim=-1)[..., 0]
    pre_nc = torch.stack([pre, pre], dim=-1)[..., 1]
    post_nc = post.permute(2, 1, 0).contiguous().permute(2, 1, 0)
    assert not any(t.is_contiguous() for t in (u_nc, k_nc, pre_nc, post_nc))
    g = torch.Generator().manual_seed(2)
    gy = torch.randn(3, 2, 256, dtype=dtype, generator=g).transpose(0, 1)
    got = _value_and_grads(_triton, (u_nc, k_nc, pre_nc, post_nc), gy)
    ref = _value_and_grads(long_conv_reference, (u, k, pre, post), gy)
    for a, b in zip(got, ref, strict=True):
        assert rel_err(a, b) < TOL[dtype]


def test_bfloat16_as_accurate_as_reference(rel_err, passes):
    u, k, pre, post = _inputs(2, 2, 256, False, True, torch.bfloat16)
    exact = long_conv_reference(*(t.double() for t in (u, k, pre, post)))
    y = _triton(u, k, pre, post)
    assert y.dtype == torch.bfloat16
    err_ref = rel_err(long_conv_reference(u, k, pre, post), exact)
    assert rel_err(y, exact) < 2 * err_ref + 1e-3


def test_gated_reference_is_the_direct_sum():
    """The reference's gate semantics, checked against the O(L²) definition."""
    u, _, pre, post = _inputs(2, 2, 8, False, True, torch.float64)
    k = torch.randn(2, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    v = pre * u
    direct = torch.zeros_like(u)
    for t in range(8):
        for s in range(8):
            direct[..., t] += k[:, (t - s) % 16] * v[..., s]
    assert torch.allclose(long_conv_reference(u, k, pre, post), post * direct, atol=1e-12)


def test_empty_batch(passes):
    u, k, _, _ = _inputs(0, 2, 256, False, False, torch.float32)
    assert _triton(u, k).shape == (0, 2, 256)


@pytest.mark.parametrize("length", [128, 384, 131072])
def test_unsupported_length(monkeypatch, length):
    u, k, _, _ = _inputs(1, 1, length, False, False, torch.float64)
    with pytest.raises(ValueError, match="power of two"):
        _triton(u, k)
    # "auto" on a device that would pick Triton falls back to the reference
    monkeypatch.setattr(kernels.ops, "use_triton", lambda *tensors, backend=None: True)
    torch.testing.assert_close(long_conv(u, k), long_conv_reference(u, k))


@pytest.mark.parametrize("make, err", [
    (lambda u, k, a, b: (u, k, a[:, :, :-1], b), ValueError),    # gate shape
    (lambda u, k, a, b: (u, k, a, b[None]), ValueError),          # gate rank (no broadcast)
    (lambda u, k, a, b: (u, k, a.double(), b), TypeError),        # gate dtype
    (lambda u, k, a, b: (u, k[:, :-1], a, b), ValueError),        # filter taps
    (lambda u, k, a, b: (u[0], k, None, None), ValueError),       # u not 3-D
])
def test_bad_inputs_raise(make, err):
    u, k, pre, post = _inputs(2, 2, 256, False, True, torch.float32)
    for backend in (triton_backend, contextlib.nullcontext):   # CPU default: reference
        with pytest.raises(err), backend():
            long_conv(*make(u, k, pre, post))


def test_sum_backward_with_broadcast_gradient(rel_err, passes):
    """``y.sum()`` hands backward a stride-0 gradient; the kernel reads it through strides."""
    u, k, pre, post = _inputs(2, 2, 256, True, True, torch.float64)
    got = _value_and_grads(_triton, (u, k, pre, post),
                           torch.ones((), dtype=torch.float64).expand(2, 2, 256))
    ref = _value_and_grads(long_conv_reference, (u, k, pre, post), torch.ones_like(u))
    for a, b in zip(got, ref, strict=True):
        assert rel_err(a, b) < 1e-12
