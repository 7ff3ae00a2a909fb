"""The Triton kernels run (launch counts), every autotune configuration runs, and results
match products computed independently of the PyTorch references (dense matrices and the
direct convolution sum), forward and backward.

A test here fails if a kernel entry point is replaced by its PyTorch reference: the
``launches`` fixture (``conftest.py``) counts the launches of each ``@triton.jit`` kernel.
"""

import importlib

import pytest
import torch
import triton
from conftest import TOL, triton_backend

from kernels import long_conv, monarch_matmul


def _monarch_case(k, p, q, s, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, R, L = (torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
               for shape in ((n, k * p), (k, q, p), (q, s, k)))
    return x, R, L


def _dense(R: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """``M[a·q + i, j·p + c] = L[i, a, j] R[j, i, c]`` as a float64 matrix (einsum, no bmm)."""
    q, s, _ = L.shape
    return torch.einsum("iaj,jic->aijc", L.double(), R.double()).reshape(s * q, -1)


def _dense_grads(x, R, L, gy):
    """``(y, gx, gR, gL)`` of ``y = x Mᵀ`` through the dense matrix, in float64."""
    leaves = [t.detach().double().requires_grad_() for t in (x, R, L)]
    y = leaves[0] @ _dense(leaves[1], leaves[2]).T
    return (y, *torch.autograd.grad(y, leaves, gy.double()))


def _triton_grads(fn, args, gy):
    leaves = [None if a is None else a.detach().clone().requires_grad_() for a in args]
    with triton_backend():
        y = fn(*leaves)
    return (y, *torch.autograd.grad(y, [a for a in leaves if a is not None], gy))


def test_monarch_launches_once_forward_and_once_backward(dtype, launches, rel_err):
    x, R, L = _monarch_case(3, 5, 4, 6, 7, dtype)
    with torch.no_grad(), triton_backend():
        y = monarch_matmul(x, R, L)
    assert launches.count == {"_fused_two_stage_kernel": 1}
    assert rel_err(y, x.double() @ _dense(R, L).T) < TOL[dtype]
    launches.reset()
    gy = torch.randn(7, 24, dtype=dtype, generator=torch.Generator().manual_seed(1))
    got = _triton_grads(monarch_matmul, (x, R, L), gy)
    assert launches.count == {"_fused_two_stage_kernel": 2}      # forward + Mᵀ gy
    for name, a, b in zip("y gx gR gL".split(), got, _dense_grads(x, R, L, gy), strict=True):
        assert rel_err(a, b) < TOL[dtype], name


def _monarch_kernel():
    return importlib.import_module("kernels.monarch_triton")._fused_two_stage_kernel


def _all_configs() -> list[triton.Config]:
    """The interpreter's config plus every GPU autotune config (``GPU_CONFIGS``)."""
    mt = importlib.import_module("kernels.monarch_triton")
    return [*mt._configs(), *(triton.Config(dict(zip(("BLOCK_N", "BLOCK_M", "BLOCK_E",
                                                      "BLOCK_A"), c[:4], strict=True)),
                                            num_warps=c[4], num_stages=c[5])
                              for c in mt.GPU_CONFIGS)]


@pytest.mark.parametrize("index", range(5))
def test_every_autotune_config_runs(index, monkeypatch, launches, rel_err):
    """Each configuration (tile sizes) of the autotuner, forced in turn, on a shape whose
    every dimension spans several tiles, forward and backward, against the dense product."""
    configs = _all_configs()
    assert len(configs) == 5
    config = configs[index]
    kernel = _monarch_kernel()
    monkeypatch.setattr(kernel, "configs", [config])
    monkeypatch.setattr(kernel, "cache", {})
    # rows 40 > BLOCK_N; p = 40 > BLOCK_E; s = 40 > BLOCK_A; q = 20 > BLOCK_M
    x, R, L = _monarch_case(3, 40, 20, 40, 40, torch.float64, seed=index)
    gy = torch.randn(40, 800, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    got = _triton_grads(monarch_matmul, (x, R, L), gy)
    for name, a, b in zip("y gx gR gL".split(), got, _dense_grads(x, R, L, gy), strict=True):
        assert rel_err(a, b) < 1e-12, name
    assert launches.count == {"_fused_two_stage_kernel": 2}
    assert all(blocks == config.kwargs for _, blocks in launches.blocks)


def _conv_case(batch, channels, length, taps, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    return (rand(batch, channels, length), rand(channels, taps) / length**0.5,
            rand(batch, channels, length), rand(batch, channels, length))


def _direct_conv(u, k, pre, post):
    """``post ⊙ (T_h (pre ⊙ u))`` with the Toeplitz matrix ``T_h[t, s] = k[h, (t − s) mod
    taps]`` (zero above the diagonal for a causal ``L``-tap filter), in float64."""
    length, taps = u.shape[-1], k.shape[-1]
    t = torch.arange(length)
    lag = (t[:, None] - t[None, :]) % taps
    T = k.double()[:, lag]                                         # (H, L, L)
    if taps == length:
        T = T * (t[:, None] >= t[None, :])
    return post.double() * torch.einsum("hts,bhs->bht", T, pre.double() * u.double())


def _direct_conv_grads(args, gy):
    leaves = [a.detach().double().requires_grad_() for a in args]
    y = _direct_conv(*leaves)
    return (y, *torch.autograd.grad(y, leaves, gy.double()))


# kernel launches of one call: forward (filter spectrum + convolution) and backward (the
# adjoint convolution), for the one-pass and the three-pass plan
EXPECTED = {
    "one": ({"_spectrum_kernel": 1, "_conv_kernel": 1}, {"_conv_kernel": 1}),
    "three": ({"_columns_forward_kernel": 2, "_rows_kernel": 2, "_columns_inverse_kernel": 1},
              {"_columns_forward_kernel": 1, "_rows_kernel": 1, "_columns_inverse_kernel": 1}),
}


@pytest.mark.parametrize("plan", ["one", "three"])
@pytest.mark.parametrize("taps", ["causal", "bidirectional"])
def test_long_conv_launches_and_matches_direct_sum(plan, taps, dtype, monkeypatch, launches,
                                                   rel_err):
    if plan == "three":   # small tiles so the three-pass grids and loops iterate
        lct = importlib.import_module("kernels.long_conv_triton")
        monkeypatch.setattr(lct, "ONE_PASS_MAX_N", 256)
        monkeypatch.setattr(lct, "ROW_WIDTH", 16)
        monkeypatch.setattr(lct, "PASS_BLOCKS", {"m": 16, "k": 16, "c": 16, "r": 16})
    args = _conv_case(2, 2, 256, 256 if taps == "causal" else 512, dtype)
    with torch.no_grad(), triton_backend():
        y = long_conv(*args)
    forward, backward = EXPECTED[plan]
    assert launches.count == forward
    assert rel_err(y, _direct_conv(*args)) < TOL[dtype]
    launches.reset()
    gy = torch.randn(2, 2, 256, dtype=dtype, generator=torch.Generator().manual_seed(3))
    got = _triton_grads(long_conv, args, gy)
    assert launches.count == {name: forward.get(name, 0) + backward.get(name, 0)
                              for name in {*forward, *backward}}
    for name, a, b in zip("y gu gk gpre gpost".split(), got, _direct_conv_grads(args, gy),
                          strict=True):
        assert rel_err(a, b) < TOL[dtype], name
