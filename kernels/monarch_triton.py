"""Fused Triton Monarch multiply ``y = P L Pᵀ R x`` (layout of :mod:`kernels.monarch_reference`).

One kernel, :func:`_fused_two_stage_kernel`, does both block-diagonal products of a
Monarch in a single launch. Viewing the input as ``X[b, n, e]`` (``b`` the first block,
``n`` the row, ``e`` the offset inside the block) it computes, for a tile of rows and a
tile of stage-2 blocks ``m``::

    T[b, n, m] = Σ_e X[b, n, e] · W1[b, e, m]        (stage 1, batched over b; on chip)
    Z[m, n, a] = Σ_b T[b, n, m] · W2[m, b, a]        (Pᵀ: permute the tile; stage 2)

and stores ``Z`` through strides, so both permutations are index arithmetic. Every
operand is addressed by strides, so the same kernel runs

* the forward pass: ``X = x`` in blocks of ``p``, ``W1[j, c, i] = R[j, i, c]``,
  ``W2[i, j, a] = L[i, a, j]``, ``Z[i, n, a] → y[n, a·q + i]``; ``T = h``;
* the input gradient ``gx = Mᵀ gy``: ``X[i, n, a] = gy[n, a·q + i]``, ``W1 = L``,
  ``W2 = R``, ``Z[j, n, c] → gx[n, j·p + c]``; ``T = gh`` (the gradient of ``h``).

On request the kernel also stores the stage-1 tile ``T`` (``h`` forward, ``gh``
backward). The weight gradients are reductions over the batch,
``gR[j] = ghⱼᵀ xⱼ`` and ``gL[i] = gzᵢᵀ hᵢ``: two batched GEMMs (cuBLAS) on those stored
tiles. So a training step is one fused launch forward and one fused launch plus two
batched GEMMs backward, and ``h`` is stored only when ``L`` needs a gradient.

Dtypes: float32 and float64 accumulate in their own precision with IEEE dots (float64 on
the GPU runs, it is not fast); bfloat16/float16 use tensor-core dots with fp32
accumulation and round ``h`` to the input dtype, as the two-``bmm`` reference does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from kernels._triton_common import (
    INTERPRETED,
    acc_dtype,
    check_device,
    dot_precision,
    next_pow2,
    resolved,
    to_output,
)
from kernels.monarch_reference import check_monarch_args

__all__ = ["MonarchMatmul", "monarch_matmul_triton"]


def _configs() -> list[triton.Config]:
    """Autotune space for H100/H200-class GPUs; a single small config under the interpreter.

    Tiles are 3-D (batched ``tl.dot``, lowered to tensor-core MMA): the stage-1 operands
    are ``(B1, BLOCK_N, BLOCK_E)`` and ``(B1, BLOCK_E, BLOCK_M)`` with ``B1 = 64`` at
    ``n = 4096``, so tiles stay small and warps many. Chosen from ahead-of-time sm_90
    compiles (``cuobjdump -res-usage``): these fit shared memory and use the least stack
    (spill) of those tried, though none is spill-free; configs
    that do not fit a given GPU are pruned by the autotuner.
    """
    if INTERPRETED:
        return [triton.Config({"BLOCK_N": 16, "BLOCK_M": 16, "BLOCK_E": 16, "BLOCK_A": 16},
                              num_warps=1)]
    return [
        triton.Config({"BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_E": be, "BLOCK_A": ba},
                      num_warps=w, num_stages=st)
        for bn, bm, be, ba, w, st in GPU_CONFIGS
    ]


# (BLOCK_N, BLOCK_M, BLOCK_E, BLOCK_A, num_warps, num_stages)
GPU_CONFIGS = ((16, 16, 16, 32, 16, 2), (16, 16, 16, 16, 8, 2), (16, 16, 16, 32, 8, 2),
               (32, 16, 16, 32, 16, 1))


@triton.autotune(configs=_configs(), key=["B1", "K1", "M1", "M2", "STORE_T"])
@triton.jit
def _fused_two_stage_kernel(
    x_ptr, w1_ptr, w2_ptr, z_ptr, t_ptr,
    N, B1, K1, M1, M2,
    sx_n, sx_b, sx_e,
    sw1_b, sw1_e, sw1_m,
    sw2_m, sw2_b, sw2_a,
    sz_n, sz_m, sz_a,
    st_n, st_b, st_m,
    B1_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_A: tl.constexpr,
    STORE_T: tl.constexpr, UPCAST: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rb = tl.arange(0, B1_PAD)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    b3, n3, m3 = rb[:, None, None], rn[None, :, None], rm[None, None, :]
    b_ok = b3 < B1
    n_ok = n3 < N
    m_ok = m3 < M1

    # Stage 1: T[b, n, m] = Σ_e X[b, n, e] W1[b, e, m], batched over the B1 blocks.
    t = tl.zeros((B1_PAD, BLOCK_N, BLOCK_M), dtype=ACC)
    for e0 in range(0, K1, BLOCK_E):
        re = e0 + tl.arange(0, BLOCK_E)
        xe = re[None, None, :]
        we = re[None, :, None]
        xt = tl.load(x_ptr + b3 * sx_b + n3 * sx_n + xe * sx_e,
                     mask=b_ok & n_ok & (xe < K1), other=0.0)
        wt = tl.load(w1_ptr + b3 * sw1_b + we * sw1_e + m3 * sw1_m,
                     mask=b_ok & (we < K1) & m_ok, other=0.0)
        if UPCAST:
            xt = xt.to(tl.float32)
            wt = wt.to(tl.float32)
        t = tl.dot(xt, wt, t, input_precision=PRECISION)
    t = to_output(t, z_ptr.dtype.element_ty, UPCAST)  # the intermediate: input precision
    if STORE_T:
        tl.store(t_ptr + b3 * st_b + n3 * st_n + m3 * st_m, t, mask=b_ok & n_ok & m_ok)

    # Pᵀ as index arithmetic: the tile becomes (m, n, b); then stage 2, batched over m.
    tp = tl.permute(t, (2, 1, 0))
    if UPCAST:
        tp = tp.to(tl.float32)
    m3s = rm[:, None, None]
    n3s = rn[None, :, None]
    b3s = rb[None, :, None]
    for a0 in range(0, M2, BLOCK_A):
        ra = a0 + tl.arange(0, BLOCK_A)
        a3 = ra[None, None, :]
        w2t = tl.load(w2_ptr + m3s * sw2_m + b3s * sw2_b + a3 * sw2_a,
                      mask=(m3s < M1) & (b3s < B1) & (a3 < M2), other=0.0)
        if UPCAST:
            w2t = w2t.to(tl.float32)
        z = tl.dot(tp, w2t, input_precision=PRECISION, out_dtype=ACC)
        z = to_output(z, z_ptr.dtype.element_ty, UPCAST)
        tl.store(z_ptr + m3s * sz_m + n3s * sz_n + a3 * sz_a, z,
                 mask=(m3s < M1) & (n3s < N) & (a3 < M2))


def _launch(x, xs, w1, w1s, w2, w2s, z, zs, dims, t=None, ts=(0, 0, 0)) -> None:
    """Run the fused kernel. ``dims = (N, B1, K1, M1, M2)``; ``*s`` are stride triples."""
    n_rows, b1, k1, m1, m2 = dims
    if n_rows == 0:
        return
    upcast = check_device(x, w1, w2)

    def grid(meta):
        return (triton.cdiv(n_rows, meta["BLOCK_N"]), triton.cdiv(m1, meta["BLOCK_M"]))

    _fused_two_stage_kernel[grid](
        x, w1, w2, z, z if t is None else t,
        n_rows, b1, k1, m1, m2, *xs, *w1s, *w2s, *zs, *ts,
        B1_PAD=next_pow2(b1), STORE_T=t is not None, UPCAST=upcast,
        ACC=acc_dtype(x.dtype), PRECISION=dot_precision(x.dtype),
    )


def _forward(x2: torch.Tensor, R: torch.Tensor, L: torch.Tensor, keep_h: bool):
    """``y (N, s·q)`` and, if ``keep_h``, ``h`` stored as ``(q, N, k)``."""
    k, q, p = R.shape
    s = L.shape[1]
    n_rows = x2.shape[0]
    y = x2.new_empty(n_rows, s * q)
    h = x2.new_empty(q, n_rows, k) if keep_h else None
    sx0, sx1 = x2.stride()
    _launch(x2, (sx0, p * sx1, sx1),
            R, (R.stride(0), R.stride(2), R.stride(1)),       # W1[j, c, i] = R[j, i, c]
            L, (L.stride(0), L.stride(2), L.stride(1)),       # W2[i, j, a] = L[i, a, j]
            y, (y.stride(0), 1, q),                           # Z[i, n, a] → y[n, a·q + i]
            (n_rows, k, p, q, s),
            h, (k, 1, n_rows * k))                            # T[j, n, i] → h[i, n, j]
    return y, h


def _backward_input(gy2: torch.Tensor, R: torch.Tensor, L: torch.Tensor, keep_gh: bool):
    """``gx = Mᵀ gy (N, k·p)`` and, if ``keep_gh``, ``gh`` stored as ``(k, N, q)``."""
    k, q, p = R.shape
    n_rows = gy2.shape[0]
    gx = gy2.new_empty(n_rows, k * p)
    gh = gy2.new_empty(k, n_rows, q) if keep_gh else None
    sg0, sg1 = gy2.stride()
    _launch(gy2, (sg0, sg1, q * sg1),                        # X[i, n, a] = gy[n, a·q + i]
            L, L.stride(),                                   # W1[i, a, j] = L[i, a, j]
            R, R.stride(),                                   # W2[j, i, c] = R[j, i, c]
            gx, (gx.stride(0), p, 1),                        # Z[j, n, c] → gx[n, j·p + c]
            (n_rows, q, L.shape[1], k, p),
            gh, (q, 1, n_rows * q))                          # T[i, n, j] → gh[j, n, i]
    return gx, gh


class MonarchMatmul(torch.autograd.Function):
    """Autograd wrapper: ``(x2: (N, k·p), R, L) → y2: (N, s·q)``."""

    @staticmethod
    def forward(ctx, x2: torch.Tensor, R: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
        y, h = _forward(x2, R, L, keep_h=ctx.needs_input_grad[2])
        ctx.save_for_backward(x2, R, L, h)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy2: torch.Tensor):
        """Gradients of ``y2 = M(R, L) x2``; which parts run where:

        * ``gx`` — Triton: one launch of :func:`_fused_two_stage_kernel` (``Mᵀ gy``), which
          also stores ``gh`` when ``R`` needs a gradient;
        * ``gR[j] = ghⱼᵀ xⱼ`` and ``gL[i] = gzᵢᵀ hᵢ`` — PyTorch (``torch.bmm``, cuBLAS on the
          GPU) on the tiles ``gh`` (from the backward launch) and ``h`` (stored by the
          forward launch).
        """
        gy2 = resolved(gy2)
        x2, R, L, h = ctx.saved_tensors
        need_x, need_r, need_l = ctx.needs_input_grad[:3]
        k, q, p = R.shape
        s = L.shape[1]
        n_rows = x2.shape[0]
        gx = gR = gL = None
        if need_x or need_r:
            gx, gh = _backward_input(gy2, R, L, keep_gh=need_r)
            if need_r:  # gR[j] = ghⱼᵀ xⱼ : (k, q, N) @ (k, N, p)
                gR = torch.bmm(gh.transpose(1, 2), x2.reshape(n_rows, k, p).transpose(0, 1))
        if need_l:      # gL[i] = gzᵢᵀ hᵢ : (q, s, N) @ (q, N, k)
            gL = torch.bmm(gy2.reshape(n_rows, s, q).permute(2, 1, 0), h)
        return (gx if need_x else None), gR, gL


def monarch_matmul_triton(x: torch.Tensor, R: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Fused ``y = P L Pᵀ R x`` for ``x: (..., k·p)``; returns ``(..., s·q)``, dtype of ``x``.

    Differentiable in ``x``, ``R`` and ``L``. Works on CUDA, and on CPU under
    ``TRITON_INTERPRET=1`` (tests). Accuracy: that of the two-``bmm`` reference in the
    same dtype (summation order differs).
    """
    k, p, q, s = check_monarch_args(x, R, L)
    x, R, L = resolved(x), resolved(R), resolved(L)     # the kernel reads raw memory
    batch_shape = x.shape[:-1]
    y2 = MonarchMatmul.apply(x.reshape(-1, k * p), R, L)
    return y2.reshape(*batch_shape, s * q)
