"""The reference Monarch multiply (permutations folded into strides, chunked rows) equals the
plain dense product ``x @ M(R, L)ᵀ`` in value and in every gradient."""

from functools import partial

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kernels import monarch_reference, native
from kernels.monarch_reference import monarch_matmul_reference
from kernels.native import native_status
from structured.monarch import MonarchMatrix

TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float64: {"rtol": 1e-12, "atol": 1e-12}}
#: Two multiplies in a row: values grow by about ``√(k·p)`` per factor, and so does rounding.
CHAINED_TOL = {dtype: {key: 10 * tol for key, tol in tols.items()} for dtype, tols in TOL.items()}


def _plain(x, R, L):
    """``x @ Mᵀ`` through ``MonarchMatrix.to_dense`` (an einsum): no permutation tricks."""
    return x @ MonarchMatrix(R, L).to_dense().T


def _leaf(t):
    """A leaf copy of ``t`` with ``t``'s strides (``clone`` would compact gapped ones)."""
    leaf = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype)
    return leaf.copy_(t.detach()).requires_grad_()


def _values_and_grads(fn, x, R, L, gy):
    leaves = [_leaf(t) for t in (x, R, L)]
    assert [t.stride() for t in leaves] == [t.stride() for t in (x, R, L)]
    y = fn(*leaves)
    return (y, *torch.autograd.grad(y, leaves, gy))


def _operands(dtype, k, p, q, s, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, k * p, dtype=dtype, generator=g)
    R = torch.randn(k, q, p, dtype=dtype, generator=g)
    L = torch.randn(q, s, k, dtype=dtype, generator=g)
    gy = torch.randn(*batch, s * q, dtype=dtype, generator=g)
    return x, R, L, gy


#: q is the block count of the second factor: the lanes of kernels.native.interleaved_bmm
#: (16 float32 / 8 float64 per vector): 19 runs a whole vector and a ragged tail, 32 whole
#: vectors only.
SHAPES = [(3, 4, 5, 2), (1, 1, 1, 1), (4, 2, 3, 6), (2, 3, 19, 7), (3, 2, 32, 11)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("k", "p", "q", "s"), SHAPES)
@pytest.mark.parametrize("batch", [(7,), (3, 5), (1,)])
@pytest.mark.parametrize("feature_major", [False, True])
def test_matches_plain_product_in_value_and_gradient(dtype, k, p, q, s, batch, feature_major):
    x, R, L, gy = _operands(dtype, k, p, q, s, batch, seed=k * 100 + p * 10 + q)
    multiply = partial(monarch_matmul_reference, feature_major=feature_major)
    got = _values_and_grads(multiply, x, R, L, gy)
    want = _values_and_grads(_plain, x, R, L, gy)
    assert got[0].shape == (*batch, s * q)
    if feature_major:
        assert got[0].reshape(-1, s * q).T.is_contiguous()
    else:
        assert got[0].is_contiguous()
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])
    with torch.no_grad():
        torch.testing.assert_close(multiply(x, R, L), want[0], **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("feature_major", [False, True])
def test_many_chunks_odd_rows_and_noncontiguous_operands(monkeypatch, dtype, feature_major):
    """Rows split over several chunks (the last one short); transposed / sliced inputs
    and factors; a non-contiguous output gradient."""
    monkeypatch.setattr(monarch_reference, "CHUNK_ELEMENTS", 1)     # 16-row chunks
    k, p, q, s = 4, 3, 2, 5
    x, R, L, _ = _operands(dtype, k, p, q, s, (37,), seed=1)
    x_nc = torch.randn(k * p, 2 * 37, dtype=dtype).T[::2]             # strided rows, cols
    x_nc.copy_(x)
    R_nc = R.transpose(1, 2).contiguous().transpose(1, 2)
    L_nc = L.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    gy = torch.randn(s * q, 37, dtype=dtype).T                        # transposed gradient
    assert not (x_nc.is_contiguous() or R_nc.is_contiguous() or L_nc.is_contiguous())
    multiply = partial(monarch_matmul_reference, feature_major=feature_major)
    got = _values_and_grads(multiply, x_nc, R_nc, L_nc, gy)
    want = _values_and_grads(_plain, x, R, L, gy)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])
    wide = torch.randn(37, k * p + 5, dtype=dtype)[:, 2: 2 + k * p]  # unit stride, row gap
    wide.copy_(x)
    got = _values_and_grads(multiply, wide, R, L, gy)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])


class _AtenOps(TorchDispatchMode):
    """Records every ATen op dispatched inside the ``with`` block: its name and the
    strides of its tensor arguments."""

    def __enter__(self):
        self.calls = []
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        strides = [a.stride() for a in args if isinstance(a, torch.Tensor)]
        self.calls.append((func.overloadpacket.__name__, strides))
        return func(*args, **(kwargs or {}))

    @property
    def ops(self) -> set[str]:
        return {name for name, _ in self.calls}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_feature_major_forward_makes_no_transposing_copy_and_chains(monkeypatch, dtype):
    """With ``feature_major``, row-major and feature-major inputs (a Monarch's own output)
    are read in place and the output is written without transposing: the forward's only
    copies move rows with unit stride on both sides, and with the native kernels a
    feature-major input is multiplied with no ATen op at all (``block_bmm`` writes both
    factors in place)."""
    monkeypatch.setattr(monarch_reference, "CHUNK_ELEMENTS", 1)     # 16-row chunks
    k, p, q, s = 3, 4, 4, 3
    x, R, L, _ = _operands(dtype, k, p, q, s, (37,), seed=2)
    R2, L2 = R.transpose(1, 2).contiguous(), L.transpose(1, 2).contiguous()  # square chain
    multiply = partial(monarch_matmul_reference, feature_major=True)
    with torch.no_grad():
        with _AtenOps() as first:
            y = multiply(x, R, L)
        with _AtenOps() as second:
            z = multiply(y, R2, L2)
    for recorded in (first, second):
        assert not {"clone", "_to_copy", "contiguous"} & recorded.ops
        copies = [strides for name, strides in recorded.calls if name == "copy_"]
        assert all(st[-1] == 1 for strides in copies for st in strides)
    if native_status().startswith("native"):
        assert not {"bmm", "copy_"} & second.ops
    assert y.T.is_contiguous()
    gz = torch.randn_like(z)
    want = _values_and_grads(lambda *t: _plain(_plain(*t), R2, L2), x, R, L, gz)
    got = _values_and_grads(lambda *t: multiply(multiply(*t), R2, L2), x, R, L, gz)
    torch.testing.assert_close(z, want[0], **CHAINED_TOL[dtype])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **CHAINED_TOL[dtype])


@pytest.mark.skipif(not native_status().startswith("native"), reason=native_status())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("k", "p", "q", "s"), [(3, 4, 4, 3), (2, 3, 19, 7)])
def test_row_major_runs_in_the_native_kernels(monkeypatch, dtype, k, p, q, s):
    """Row-major, every product runs in :mod:`kernels.native` (``R``'s in ``block_bmm``,
    ``L``'s in ``interleaved_bmm``) and the factors' re-layouts in ``transpose_into``:
    forward and backward dispatch no ATen matmul and no ``copy_`` at all (torch's
    fallbacks would dispatch both), and value and gradients equal the plain product."""
    monkeypatch.setattr(monarch_reference, "CHUNK_ELEMENTS", 1)     # 16-row chunks
    x, R, L, gy = _operands(dtype, k, p, q, s, (37,), seed=4)
    want = _values_and_grads(_plain, x, R, L, gy)
    leaves = [_leaf(t) for t in (x, R, L)]
    with _AtenOps() as forward:
        y = monarch_matmul_reference(*leaves)
    with _AtenOps() as backward:
        y.backward(gy)
    assert not {"bmm", "baddbmm", "mm", "copy_"} & (forward.ops | backward.ops)
    assert y.is_contiguous()
    for a, b in zip((y, *(t.grad for t in leaves)), want, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_row_major_falls_back_to_torch_without_the_native_kernels(monkeypatch):
    """With ``NEURALNUM_NATIVE=0`` the same multiply runs through ``torch.bmm`` and
    copies, with the same values and gradients."""
    monkeypatch.setenv("NEURALNUM_NATIVE", "0")
    native._library.cache_clear()
    try:
        assert native_status().startswith("torch")
        x, R, L, gy = _operands(torch.float64, 2, 3, 19, 7, (37,), seed=5)
        got = _values_and_grads(monarch_matmul_reference, x, R, L, gy)
        want = _values_and_grads(_plain, x, R, L, gy)
    finally:
        native._library.cache_clear()
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_input_gradient_comes_out_in_the_inputs_layout(monkeypatch, dtype):
    monkeypatch.setattr(monarch_reference, "CHUNK_ELEMENTS", 1)     # 16-row chunks
    k, p, q, s = 3, 4, 2, 5
    x, R, L, gy = _operands(dtype, k, p, q, s, (37,), seed=3)
    x_fm = x.T.contiguous().T                                         # feature-major
    want = _values_and_grads(_plain, x, R, L, gy)
    for leaf, feature_major in ((x, False), (x_fm, True)):
        got = _values_and_grads(monarch_matmul_reference, leaf, R, L, gy)
        assert got[1].T.is_contiguous() if feature_major else got[1].is_contiguous()
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, **TOL[dtype])


def test_partial_gradients_and_empty_batch():
    x, R, L, gy = _operands(torch.float64, 2, 3, 3, 2, (5,))
    want = _values_and_grads(_plain, x, R, L, gy)
    for wanted in range(3):                       # only one operand requires grad
        leaves = [t.detach().clone().requires_grad_(i == wanted) for i, t in enumerate((x, R, L))]
        (grad,) = torch.autograd.grad(monarch_matmul_reference(*leaves), leaves[wanted], gy)
        torch.testing.assert_close(grad, want[1 + wanted])
    empty = monarch_matmul_reference(x[:0].requires_grad_(), R.requires_grad_(), L)
    assert empty.shape == (0, 6)
    empty.sum().backward()
    assert torch.equal(R.grad, torch.zeros_like(R))


def test_runs_in_operand_dtype_under_autocast():
    x, R, L, _ = _operands(torch.float32, 2, 3, 3, 2, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = monarch_matmul_reference(x, R, L)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, _plain(x, R, L), **TOL[torch.float32])
