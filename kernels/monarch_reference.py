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
chunk's intermediates stay in cache). Both permutations are strides of operands, and the
block products run in small C kernels (:mod:`kernels.native`) that take those strides as
they are: BLAS packs every operand of every small block product (and ``torch.bmm`` loops
over the blocks, one GEMM call each, for a strided output). The two layouts of the
output take different routes:

* **row-major** ``y: (N, s·q)`` (the default). ``P`` puts the block index ``i`` innermost
  in ``y``: the output of block ``i`` has stride ``q`` along both of its axes, so no GEMM
  can write it. So ``i`` is made innermost everywhere in the second factor:

  1. ``h: (k, c, q)`` — ``x (k, c, p) @ Rᵀ (k, p, q)`` by :func:`kernels.native.block_bmm`
     (``x`` read in place as a view, row-major or feature-major; ``Rᵀ`` is one 2-D
     transpose of the small ``R``);
  2. ``y[chunk]`` viewed as ``(q, c, s)`` (a view: this is ``P``) ``= h`` viewed as
     ``(q, c, k)`` (a view: ``Pᵀ``) ``@ Lᵀ (q, k, s)``: a batched matmul whose batch
     index is the innermost one of all three operands, which
     :func:`kernels.native.interleaved_bmm` computes with SIMD along the batch (``L`` is
     re-laid out once per call, block index innermost: one 2-D transpose of ``L``).

  Both run chunk after chunk in one native call (:func:`kernels.native.monarch_rows`),
  so that a chunk's ``h`` is still in cache when the second product reads it. No copy of
  the activations is made, forward or backward. Where the C kernels cannot be built the
  same loop runs here, and the products fall back to ``torch.bmm``.
* **feature-major** ``y`` (``feature_major=True``): ``y`` is the ``.T`` of a contiguous
  ``(s·q, N)`` tensor ``yᵀ``, in which the output of block ``i`` has unit stride along the
  rows, so both factors are plain block products (:func:`kernels.native.block_bmm`):
  ``h: (k, q, c) = R (k, q, p) @ xᵀ (k, p, c)``, then ``L (q, s, k) @ h`` read as
  ``(q, k, c)``, written in place into ``yᵀ`` viewed as ``(q, s, N)``.
  :meth:`structured.layers.MonarchLinear.forward_features_first` uses it.

The backward pass follows the forward's route: row-major, the gradients through ``L``
(``gh`` and ``gL``) are interleaved products of ``gy`` read in place; feature-major, it
needs ``gyᵀ`` with unit last stride, free when ``gy`` is feature-major, otherwise one
transpose per chunk (:func:`kernels.native.transpose_into`). The input gradient comes
out in ``x``'s layout (feature-major for a feature-major ``x``, so that a features-first
network stays in one layout backwards too); weight gradients are accumulated over chunks.
Autocast is switched off inside: the multiply runs in the operands' dtype
(:class:`structured.layers.MonarchLinear` casts to the autocast dtype itself).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from kernels.native import block_bmm, interleaved_bmm, monarch_rows, transpose_into

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
        with torch.autocast(x.device.type, enabled=False):
            R_c = R.contiguous()
            L_c = L.contiguous() if feature_major else _block_innermost(L)
            # h of every chunk, chunk after chunk, each a contiguous block: (k, q, c)
            # feature-major, (k, c, q) row-major
            h_all = x.new_empty((n if keep else _widest(chunks)) * k * q)
            forward = _forward_feature_major if feature_major else _forward_row_major
            y = forward(x, R_c, L_c, h_all, chunks, keep)
        ctx.feature_major = feature_major
        ctx.save_for_backward(x, R_c, L_c, h_all if keep else None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, R, L, h_all = ctx.saved_tensors
        (k, q, p), s, n = R.shape, L.shape[1], x.shape[0]
        need_x, need_R, need_L, _ = ctx.needs_input_grad
        gx = torch.empty_like(x) if need_x else None     # x's layout (dense x: its strides)
        gx_feature_major = gx is not None and gx.stride(-1) != 1
        gR = torch.zeros_like(R) if need_R else None
        gL = torch.zeros_like(L) if need_L else None     # L's layout (block innermost too)
        chunks = _chunks(n, max(k * p, s * q))
        if not ctx.feature_major and gy.stride(1) != 1:
            gy = gy.contiguous()                         # e.g. the expanded gy of a .sum()
        gy_buf = (gy.new_empty(_widest(chunks) * s * q)
                  if ctx.feature_major and gy.stride(0) != 1 else None)
        gh_buf = (None if ctx.feature_major or not (need_x or need_R)
                  else gy.new_empty(_widest(chunks) * k * q))
        with torch.autocast(x.device.type, enabled=False):
            for rows in chunks:
                c = rows.stop - rows.start
                h = _chunk_h(h_all, rows, k * q, keep=True) if need_L else None
                if ctx.feature_major:
                    gy_t = gy[rows].T                                # (s·q, c)
                    if gy_buf is not None:                           # one transposing copy
                        gy_t = transpose_into(gy[rows], gy_buf[:s * q * c].view(s * q, c))
                    gy_i = gy_t.view(s, q, c).transpose(0, 1)        # (q, s, c) view
                    if need_L:
                        gL.baddbmm_(gy_i, h.view(k, q, c).permute(1, 2, 0))    # (q, s, k)
                    if not (need_x or need_R):
                        continue
                    gh = torch.bmm(L.transpose(1, 2), gy_i).permute(1, 2, 0)  # (k, c, q) view
                else:
                    gy_i = gy[rows].unflatten(1, (s, q)).permute(2, 0, 1)     # (q, c, s) view
                    if need_L:
                        interleaved_bmm(gy_i.transpose(1, 2),        # (q, s, c) @ (q, c, k)
                                        h.view(k, c, q).permute(2, 1, 0), out=gL,
                                        accumulate=True)
                    if not (need_x or need_R):
                        continue
                    gh = gh_buf[:k * c * q].view(k, c, q)
                    interleaved_bmm(gy_i, L, out=gh.permute(2, 1, 0))  # (q,c,s) @ (q,s,k)
                if need_R:
                    block_bmm(gh.transpose(1, 2),                    # (k, q, c) view
                              x[rows].unflatten(1, (k, p)).transpose(0, 1),  # (k, c, p)
                              out=gR, accumulate=True)
                if gx_feature_major:
                    block_bmm(R.transpose(1, 2), gh.transpose(1, 2),  # (k,p,q) @ (k,q,c)
                              out=gx.T.view(k, p, n)[:, :, rows])
                elif need_x:
                    block_bmm(gh, R,                                 # (k, c, q) @ (k, q, p)
                              out=gx[rows].unflatten(1, (k, p)).transpose(0, 1))
        return gx, gR, gL if gL is None or ctx.feature_major else _block_outermost(gL), None


def _forward_row_major(x: torch.Tensor, R: torch.Tensor, L: torch.Tensor, h_all: torch.Tensor,
                       chunks: list[slice], keep: bool) -> torch.Tensor:
    """Row-major ``y: (N, s·q)``, chunk by chunk: ``h = x Rᵀ`` (:func:`block_bmm`), then
    ``L`` (block index innermost) applied by :func:`interleaved_bmm`, in one native call
    (:func:`kernels.native.monarch_rows`) where the library is built, else product by
    product from here. With ``keep`` every chunk's ``h`` stays in ``h_all``."""
    (k, q, p), s, n = R.shape, L.shape[1], x.shape[0]
    y = x.new_empty(n, s * q)
    R_t = _transposed(R.view(k * q, p)).view(p, k, q).transpose(0, 1)     # Rᵀ: (k, p, q)
    if monarch_rows(x, R_t, L.transpose(1, 2), y, h_all, _widest(chunks), keep=keep):
        return y
    for rows in chunks:
        c = rows.stop - rows.start
        h = _chunk_h(h_all, rows, k * q, keep)
        block_bmm(x[rows].unflatten(1, (k, p)).transpose(0, 1), R_t,      # (k, c, p) @ Rᵀ
                  out=h.view(k, c, q))
        interleaved_bmm(h.view(k, c, q).permute(2, 1, 0), L.transpose(1, 2),  # (q,c,k)@(q,k,s)
                        out=y[rows].unflatten(1, (s, q)).permute(2, 0, 1))
    return y


def _forward_feature_major(x: torch.Tensor, R: torch.Tensor, L: torch.Tensor,
                           h_all: torch.Tensor, chunks: list[slice], keep: bool) -> torch.Tensor:
    """Feature-major ``y`` (the ``.T`` of a contiguous ``(s·q, N)`` tensor), chunk by chunk:
    both factors plain block products (:func:`block_bmm`), the second written in place
    into ``yᵀ``. With ``keep`` every chunk's ``h`` stays in ``h_all``."""
    (k, q, p), s, n = R.shape, L.shape[1], x.shape[0]
    y_t = x.new_empty(s * q, n)                                      # yᵀ: y is its .T
    y_blocks = y_t.view(s, q, n).transpose(0, 1)                     # (q, s, n) view: P
    for rows in chunks:
        c = rows.stop - rows.start
        h = _chunk_h(h_all, rows, k * q, keep)
        block_bmm(R, x[rows].T.unflatten(0, (k, p)), out=h.view(k, q, c))  # (k,q,p) @ (k,p,c)
        block_bmm(L, h.view(k, q, c).transpose(0, 1),                # (q, s, k) @ (q, k, c)
                  out=y_blocks[:, :, rows])                          # (q, s, c) view: P
    return y_t.T


def _chunk_h(h_all: torch.Tensor, rows: slice, per_row: int, keep: bool) -> torch.Tensor:
    """A chunk's ``h`` (flat, ``per_row`` = ``k·q`` values per row): its own stretch of
    ``h_all`` when every chunk's is kept, else the start of the one-chunk workspace."""
    if keep:
        return h_all[rows.start * per_row:rows.stop * per_row]
    return h_all[:(rows.stop - rows.start) * per_row]


def _transposed(matrix: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``matrix.T`` for a 2-D ``matrix`` (the native transpose)."""
    return transpose_into(matrix, matrix.new_empty(matrix.shape[::-1]))


def _block_innermost(L: torch.Tensor) -> torch.Tensor:
    """``L: (q, s, k)`` as a copy with the block index ``i < q`` innermost in memory (the
    same shape and values; strides ``(1, k·q, q)``), the layout :func:`interleaved_bmm`
    vectorises along."""
    q, s, k = L.shape
    return _transposed(L.reshape(q, s * k)).view(s, k, q).permute(2, 0, 1)


def _block_outermost(L: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_block_innermost`: a contiguous copy of ``L: (q, s, k)``
    whose strides are ``(1, k·q, q)``."""
    q, s, k = L.shape
    return _transposed(L.permute(1, 2, 0).reshape(s * k, q)).view(q, s, k)
