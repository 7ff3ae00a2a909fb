"""PyTorch reference for the Monarch multiply ``y = P L Pᵀ R x`` (two batched matmuls).

Layout (shared by the Triton kernel and ``structured.monarch``):

* ``x: (..., k·p)`` viewed as ``k`` blocks of ``p`` inputs.
* ``R: (k, q, p)`` — block-diagonal, ``k`` blocks of ``q × p``: ``h[..., j, :] = R[j] x_j``.
* ``Pᵀ``: transpose ``h`` from ``(k, q)`` to ``(q, k)`` (index arithmetic, no copy in
  the kernel).
* ``L: (q, s, k)`` — block-diagonal, ``q`` blocks of ``s × k``: ``z[..., i, :] = L[i] hᵀ_i``.
* ``P``: transpose ``z`` from ``(q, s)`` to ``(s, q)``; ``y: (..., s·q)``.

Entry-wise, ``M[a·q + i, j·p + c] = L[i, a, j] · R[j, i, c]``: for each ``(i, j)`` the
``s × p`` slice is rank one, which is what the optimal projection exploits. The square
Monarch of Dao et al. (``n = m²``) is ``k = p = q = s = m``.

**How the permutations are folded away** (CPU path, :class:`_MonarchFunction`). The rows
of ``x`` are processed in chunks of ``c`` rows (about 2¹⁸ activations per chunk, so that a
chunk's intermediates stay in cache). Both batched matmuls write *contiguous* outputs,
which is what lets torch hand them to MKL's batched GEMM (a strided output makes torch
loop over the blocks, one GEMM call each: measured 1.4–1.8× slower); both permutations
are strides of their operands:

1. ``h: (k, q, c)`` — ``R (k, q, p) @ xᵀ (k, p, c)``; ``xᵀ`` is a view of ``x`` whether
   ``x`` is row-major or feature-major (below): no copy either way.
2. ``z`` — ``L`` times ``h`` read as ``(q, k, c)`` (a view: this is ``Pᵀ``), then placed
   by ``P``, in the layout asked for:

   * **row-major** ``y: (N, s·q)`` (the default): ``z: (q, c, s)``, and ``y[chunk]``
     viewed as ``(c·s, q)`` ``= zᵀ`` viewed as ``(q, c·s)``, one 2-D transpose per chunk
     by :func:`kernels.native_transpose.transpose_into` (AVX tiles, 3–5× faster than
     torch's element-wise strided copy, which it falls back to where no C compiler is
     available). This copy cannot be avoided: ``P`` puts the block index ``i``
     innermost in ``y``, so no GEMM can write ``y`` (the output of block ``i`` has stride
     ``q`` along both of its axes).
   * **feature-major** ``y`` (``feature_major=True``): ``y`` is the ``.T`` of a contiguous
     ``(s·q, N)`` tensor ``yᵀ``, in which the output of block ``i`` has unit stride along
     the rows: ``z: (q, s, c)`` is copied into ``yᵀ`` viewed as ``(q, s, N)`` in rows of
     ``c`` values with unit stride on both sides (memcpy speed), and *no transposing copy*
     is made. :meth:`structured.layers.MonarchLinear.forward_features_first` uses it.

The backward pass needs ``gyᵀ`` with unit last stride: free when ``gy`` is
feature-major, otherwise one transpose per chunk (``transpose_into`` again). The input
gradient comes out in ``x``'s layout (feature-major for a feature-major ``x``, so that a
features-first network stays in one layout backwards too); every other operand is a
strided view (four batched matmuls, weight gradients accumulated over chunks with
``baddbmm``). Autocast is switched off inside: the multiply runs in the operands' dtype
(:class:`structured.layers.MonarchLinear` casts to the autocast dtype itself).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from kernels.native_transpose import transpose_into

__all__ = ["check_monarch_args", "chunk_rows", "monarch_matmul_reference"]

#: Activations per chunk (rows × features): 2¹⁸ float32 values = 1 MiB.
CHUNK_ELEMENTS = 1 << 18


def check_monarch_args(x: torch.Tensor, R: torch.Tensor, L: torch.Tensor) -> tuple[int, ...]:
    """Validate shapes/dtypes; return ``(k, p, q, s)``. Raises ``ValueError``/``TypeError``."""
    if R.ndim != 3 or L.ndim != 3:
        raise ValueError(f"R and L must be 3-D block stacks, got R {tuple(R.shape)}, "
                         f"L {tuple(L.shape)}")
    k, q, p = R.shape
    if L.shape[0] != q or L.shape[2] != k:
        raise ValueError(f"L must have shape ({q}, s, {k}) to follow R {tuple(R.shape)}, "
                         f"got {tuple(L.shape)}")
    if x.shape[-1] != k * p:
        raise ValueError(f"x's last dimension must be k·p = {k * p}, got {x.shape[-1]}")
    if not (x.dtype == R.dtype == L.dtype):
        raise TypeError(f"x, R, L must share a dtype, got {x.dtype}, {R.dtype}, {L.dtype}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    return k, p, q, L.shape[1]


def chunk_rows(features: int) -> int:
    """Rows per chunk for ``features`` activations per row (at least 16)."""
    return max(16, CHUNK_ELEMENTS // max(1, features))


def monarch_matmul_reference(x: torch.Tensor, R: torch.Tensor, L: torch.Tensor, *,
                             feature_major: bool = False) -> torch.Tensor:
    """``y = P L Pᵀ R x`` for ``x: (..., k·p)``; returns ``(..., s·q)``, dtype of ``x``;
    differentiable in ``x``, ``R`` and ``L``.

    ``y`` is contiguous, or with ``feature_major`` the ``.T`` of a contiguous
    ``(s·q, N)`` tensor (``N`` = rows of ``x``), which costs no transposing copy (see the
    module docstring). Any strides of ``x`` are accepted: row-major and feature-major
    ``x`` are read in place, others copied once.
    """
    k, p, q, s = check_monarch_args(x, R, L)
    batch_shape = x.shape[:-1]
    x2 = x.reshape(-1, k * p)
    if x2.shape[0] and not _gemm_readable(x2):
        x2 = x2.contiguous()
    if not torch.is_grad_enabled():      # nothing will be recorded: keep no hᵀ for backward
        x2, R, L = x2.detach(), R.detach(), L.detach()
    y = _MonarchFunction.apply(x2, R, L, feature_major)
    return y.reshape(*batch_shape, s * q)


def _gemm_readable(x: torch.Tensor) -> bool:
    """Whether ``x: (N, F)`` is row-major or feature-major (one unit stride, the other
    spanning it), so that its column blocks are GEMM operands as they are."""
    (rows, features), (row_stride, feature_stride) = x.shape, x.stride()
    return ((feature_stride == 1 and row_stride >= features)
            or (row_stride == 1 and feature_stride >= rows))


def _chunks(n: int, features: int) -> list[slice]:
    step = chunk_rows(features)
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _widest(chunks: list[slice]) -> int:
    """Rows in the largest chunk (0 for none): what a per-chunk workspace must hold."""
    return max((rows.stop - rows.start for rows in chunks), default=0)


class _MonarchFunction(torch.autograd.Function):
    """``x: (N, k·p)``, row- or feature-major → ``(N, s·q)``, row-major or (with
    ``feature_major``) feature-major; see the module docstring."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, R: torch.Tensor, L: torch.Tensor,
                feature_major: bool) -> torch.Tensor:
        (k, q, p), s, n = R.shape, L.shape[1], x.shape[0]
        keep = ctx.needs_input_grad[2]                # h is needed for L's gradient
        chunks = _chunks(n, max(k * p, s * q))
        widest = _widest(chunks)
        if feature_major:
            y_t = x.new_empty(s * q, n)                              # yᵀ: y is its .T
            y_blocks = y_t.view(s, q, n).transpose(0, 1)             # (q, s, n) view: P
        else:
            y = x.new_empty(n, s * q)
        with torch.autocast(x.device.type, enabled=False):
            R_c, L_c = R.contiguous(), L.contiguous()
            # h of every chunk, chunk after chunk, each a contiguous (k, q, c) block
            h_all = x.new_empty(n * k * q) if keep else x.new_empty(widest * k * q)
            z_buf = x.new_empty(widest * q * s)
            for rows in chunks:
                c = rows.stop - rows.start
                x_t = x[rows].T.unflatten(0, (k, p))                # (k, p, c) view
                h = (h_all[rows.start * k * q:rows.stop * k * q] if keep
                     else h_all[:c * k * q]).view(k, q, c)
                torch.bmm(R_c, x_t, out=h)
                if feature_major:
                    z = torch.bmm(L_c, h.transpose(0, 1),            # (q, s, k) @ (q, k, c)
                                  out=z_buf[:q * s * c].view(q, s, c))
                    y_blocks[:, :, rows].copy_(z)                    # rows of c, unit stride
                else:
                    z = torch.bmm(h.permute(1, 2, 0), L_c.transpose(1, 2),  # (q,c,k)@(q,k,s)
                                  out=z_buf[:q * c * s].view(q, c, s))
                    transpose_into(z.view(q, c * s), y[rows].view(c * s, q))
        ctx.save_for_backward(x, R_c, L_c, h_all if keep else None)
        return y_t.T if feature_major else y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, R, L, h_all = ctx.saved_tensors
        (k, q, p), s, n = R.shape, L.shape[1], x.shape[0]
        need_x, need_R, need_L, _ = ctx.needs_input_grad
        gx = torch.empty_like(x) if need_x else None     # x's layout (dense x: its strides)
        gx_feature_major = gx is not None and gx.stride(-1) != 1
        gR = torch.zeros_like(R) if need_R else None
        gL = torch.zeros_like(L) if need_L else None
        chunks = _chunks(n, max(k * p, s * q))
        gy_buf = None if gy.stride(0) == 1 else gy.new_empty(_widest(chunks) * s * q)
        with torch.autocast(x.device.type, enabled=False):
            for rows in chunks:
                c = rows.stop - rows.start
                gy_t = gy[rows].T                                    # (s·q, c)
                if gy_buf is not None:                               # one transposing copy
                    gy_t = transpose_into(gy[rows], gy_buf[:s * q * c].view(s * q, c))
                gy_i = gy_t.view(s, q, c).transpose(0, 1)            # (q, s, c) view
                if need_L:
                    h = h_all[rows.start * k * q:rows.stop * k * q].view(k, q, c)
                    gL.baddbmm_(gy_i, h.permute(1, 2, 0))                # (q, s, k)
                if not (need_x or need_R):
                    continue
                gh_t = torch.bmm(L.transpose(1, 2), gy_i)            # (q, k, c)
                if need_R:
                    gR.baddbmm_(gh_t.transpose(0, 1),                # (k, q, c) view
                                x[rows].unflatten(1, (k, p)).transpose(0, 1))  # (k, c, p)
                if gx_feature_major:
                    g = torch.bmm(R.transpose(1, 2), gh_t.transpose(0, 1))  # (k, p, c)
                    gx.T.view(k, p, n)[:, :, rows].copy_(g)          # rows of c, unit stride
                elif need_x:
                    torch.bmm(gh_t.permute(1, 2, 0), R,              # (k, c, q) @ (k, q, p)
                              out=gx[rows].unflatten(1, (k, p)).transpose(0, 1))
        return gx, gR, gL, None
