"""Monarch-DFT long convolution in Triton (the FFT convolution as block matrix products).

The ``N = 2L``-point DFT is written as an order-2 Monarch product (Cooley–Tukey with
``N = N1·N2``, powers of two): a signal is the row-major ``(N1, N2)`` tile
``X[n1, n2] = x[N2·n1 + n2]`` and its spectrum the tile ``S[f1, f2] = x̂[f1 + N1·f2]``::

    S = ((F_N1 · X) ⊙ T) · F_N2,   F_m[a, b] = e^{−2πi·ab/m},   T[f1, n2] = e^{−2πi·f1·n2/N}

(a column stage: one ``N1×N1`` block product and the twiddle; a row stage: one ``N2×N2``
block product — dense tile dots, i.e. tensor-core GEMMs). The inverse runs the same way
with conjugate factors in reverse order. Rows ``n1 ≥ N1/2`` of the input tile are the zero
padding, so the forward column product only reads the left half of ``F_N1``; only the
real part of the first ``N1/2`` output rows (the first ``L`` outputs) is kept, so the
inverse column product only uses the top half of ``conj(F_N1)``.

Two execution plans (:func:`plan`), same tile layout and same arithmetic:

* **one pass** (``N ≤ ONE_PASS_MAX_N``, half that in float64; balanced ``N1 ≥ N2``): one
  program of :func:`_conv_kernel` convolves one ``(batch, channel)`` row on chip — load
  ``u`` (⊙ ``pre_gate``), column + row stage, ⊙ filter spectrum ``k̂/N``, inverse row +
  column stage, ⊙ ``post_gate``, store (optionally also the un-post-gated result ``c``).
* **three passes** (longer rows, which no longer fit one SM's shared memory — ``L = 16384``
  needs ~384 KB on sm_90): ``N2 = ROW_WIDTH`` (half in float64) and ``N1 = N/N2`` grows
  with ``N``; the column stages become tiled GEMMs with a loop over ``N1`` and the row
  tile lives in a global scratch buffer between launches:
  1. :func:`_columns_forward_kernel`, per ``(row, f1 block, n2 block)``:
     ``A = (F_N1 · (pre ⊙ u)) ⊙ T`` → scratch;
  2. :func:`_rows_kernel`, per ``(row, f1 block)``: ``C = ((A · F_N2) ⊙ k̂/N) · conj(F_N2)
     ⊙ conj(T)``, in place in the scratch;
  3. :func:`_columns_inverse_kernel`, per ``(row, t1 block, n2 block)``:
     ``y = post ⊙ Re(conj(F_N1) · C)`` for the first ``N1/2`` rows.
  The row and twiddle steps are the same ``@triton.jit`` helpers the one-pass kernel uses.

The filter spectrum (``(H, N1, N2)``, real and imaginary parts) is computed once per call
with the same forward stages (:func:`_spectrum_kernel`, or passes 1–2 with the row pass
storing the spectrum); causal (``L`` taps) and bidirectional (``2L`` taps) filters differ
only there.

Backward (:class:`LongConv`): the adjoint of a convolution is the correlation with the
same filter, i.e. the same convolution with the conjugate spectrum. One convolution gives
``g_v = corr(post ⊙ gy, k)`` and ``g_u = pre ⊙ g_v``; the filter gradient
``g_k = irfft(Σ_b conj(v̂_b)·ĝ_b)[:taps]`` (a reduction over the batch) is the one part
computed with ``torch.fft``; ``g_pre = g_v ⊙ u`` and ``g_post = gy ⊙ c`` (``c`` stored by
the forward) are elementwise.

Dtypes: float64 computes in float64, everything else in float32 (IEEE dots for float32
inputs, TF32 dots for bfloat16 inputs on the GPU). Supported lengths: ``L`` a power of two
in ``[MIN_LENGTH, MAX_LENGTH] = [256, 65536]``; accuracy over ``L`` (both plans):
``python -m studies.long_conv_lengths``, shared memory per kernel:
``python -m studies.kernel_compile``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from kernels._triton_common import acc_dtype, check_device, dot_precision, resolved, to_output
from kernels.long_conv_reference import check_long_conv_args

__all__ = ["MAX_LENGTH", "MIN_LENGTH", "LongConv", "Plan", "long_conv_triton", "plan",
           "supports_length"]

# The three-pass plan works for any N = N1·ROW_WIDTH; the cap keeps F_N1 (N1² complex
# entries) and the O(N·N1) column-stage work reasonable.
MIN_LENGTH, MAX_LENGTH = 256, 65536

# Longest row (N = 2L) convolved by one program on chip, for 4-byte (float32) compute.
# N = 32768 (L = 16384) would need ~384 KB of shared memory on sm_90, more than an
# H100/H200 SM has (studies.kernel_compile). Read at call time: tests lower it to run the
# three-pass plan at small N.
ONE_PASS_MAX_N = 16384
# N2 of the three-pass plan for float32 compute (the row-pass tile is BLOCK_R × ROW_WIDTH),
# and its tile sizes: m = column-pass output rows, k = column-pass reduction chunk,
# c = column-pass columns, r = row-pass rows. All powers of two ≥ 16 (tl.dot). Also read
# at call time. float64 compute halves ONE_PASS_MAX_N and ROW_WIDTH (see plan).
ROW_WIDTH = 128
PASS_BLOCKS = {"m": 64, "k": 32, "c": 32, "r": 16}


def supports_length(length: int) -> bool:
    """Whether the Monarch-DFT kernels handle sequence length ``L``."""
    return MIN_LENGTH <= length <= MAX_LENGTH and length & (length - 1) == 0


def split(n: int) -> tuple[int, int]:
    """``N = N1·N2`` with ``N1 = 2^⌈log2(N)/2⌉ ≥ N2`` (both ≥ 16 for ``N ≥ 512``)."""
    n1 = 1 << ((n.bit_length() - 1 + 1) // 2)
    return n1, n // n1


@dataclass(frozen=True)
class Plan:
    """How an ``N = n1·n2``-point row is convolved: on chip (``one_pass``) or in three
    passes with the given tile sizes (see the module docstring)."""

    n1: int
    n2: int
    one_pass: bool
    block_m: int = 0
    block_k: int = 0
    block_c: int = 0
    block_r: int = 0


def plan(length: int, compute: torch.dtype = torch.float32) -> Plan:
    """The plan for sequence length ``L`` (``N = 2L``) and compute dtype (float32 or
    float64), from :data:`ONE_PASS_MAX_N`, :data:`ROW_WIDTH` and :data:`PASS_BLOCKS` as
    they are now. float64 tiles take twice the bytes, so its one-pass limit and row width
    are halved (sm_90 compiles: the one-pass kernel at ``L = 4096`` needs 192 KB of shared
    memory in float64, the row pass 272 KB at ``N2 = 128`` and 72 KB at ``N2 = 64``)."""
    wide = compute == torch.float64
    n = 2 * length
    n1, n2 = split(n)
    if n <= (ONE_PASS_MAX_N // 2 if wide else ONE_PASS_MAX_N):
        return Plan(n1, n2, True)
    n2 = min(max(16, ROW_WIDTH // 2) if wide else ROW_WIDTH, n2)  # ≤ split's N2: N1/2 ≥ 16
    n1 = n // n2
    b = PASS_BLOCKS
    return Plan(n1, n2, False, block_m=min(b["m"], n1 // 2), block_k=min(b["k"], n1 // 2),
                block_c=min(b["c"], n2), block_r=min(b["r"], n1))


@functools.lru_cache(maxsize=32)
def dft_factors(n1: int, n2: int, dtype: torch.dtype, device: torch.device):
    """``(F1r, F1i, F2r, F2i, Tr, Ti)``: the DFT blocks and the twiddle, built in float64
    from exact integer phases ``(a·b mod m)`` and rounded once to ``dtype``."""
    def phases(rows: int, cols: int, m: int) -> torch.Tensor:
        a = torch.arange(rows, dtype=torch.int64)[:, None]
        b = torch.arange(cols, dtype=torch.int64)[None, :]
        return (a * b % m).to(torch.float64) * (-2 * math.pi / m)

    out = []
    for ph in (phases(n1, n1, n1), phases(n2, n2, n2), phases(n1, n2, n1 * n2)):
        out += [torch.cos(ph), torch.sin(ph)]
    return tuple(t.to(dtype=dtype, device=device).contiguous() for t in out)


# Warp counts the compile study (studies.kernel_compile) compares.
GPU_WARPS = (4, 8, 16)
# Warps of the three-pass kernels, from the same study at L = 16384 (sm_90, bf16): the
# column GEMM tiles need no more than 4 warps (no spills); the row pass (a 16×128 tile times
# 128×128 DFT blocks) spills ~1.5 KB per thread with 4 warps and ~0.1 KB with 8.
PASS_WARPS = {"columns": 4, "rows": 8}


def num_warps(n: int) -> int:
    """Warps per one-pass program for an ``N``-point row, from ahead-of-time sm_90
    compiles: no spills up to ``N = 2048`` with 4 warps; from ``N = 8192`` on, 8 warps spill
    least (4 and 16 spill 1–12 KB per thread). A fixed choice, not autotuned: autotuning
    would multiply the (long, for large ``N``) compile times."""
    return 4 if n <= 2048 else 8


# ---------------------------------------------------------------- shared jit pieces


@triton.jit
def _load_complex(re_ptr, im_ptr, offsets):
    return tl.load(re_ptr + offsets), tl.load(im_ptr + offsets)


@triton.jit
def _store_complex(re_ptr, im_ptr, offsets, re, im):
    tl.store(re_ptr + offsets, re)
    tl.store(im_ptr + offsets, im)


@triton.jit
def _cmul(ar, ai, br, bi, CONJ: tl.constexpr):
    """Elementwise ``a · b`` (``a · conj(b)`` if ``CONJ``) on (real, imaginary) pairs."""
    if CONJ:
        bi = -bi
    return ar * br - ai * bi, ar * bi + ai * br


@triton.jit
def _cdot(ar, ai, br, bi, CONJ: tl.constexpr, PRECISION: tl.constexpr):
    """Matrix product ``a @ b`` (``a @ conj(b)`` if ``CONJ``): four real dots."""
    if CONJ:
        bi = -bi
    re = tl.dot(ar, br, input_precision=PRECISION)
    re = tl.dot(-ai, bi, re, input_precision=PRECISION)
    im = tl.dot(ar, bi, input_precision=PRECISION)
    im = tl.dot(ai, br, im, input_precision=PRECISION)
    return re, im


@triton.jit
def _load_gated(x_ptrs, gate_ptrs, mask, HAS_GATE: tl.constexpr, COMPUTE: tl.constexpr):
    """``x`` (⊙ ``gate`` if ``HAS_GATE``) in ``COMPUTE``; zero where ``mask`` is false."""
    x = tl.load(x_ptrs, mask=mask, other=0.0).to(COMPUTE)
    if HAS_GATE:
        x = x * tl.load(gate_ptrs, mask=mask, other=0.0).to(COMPUTE)
    return x


@triton.jit
def _store_gated(y, y_ptrs, c_ptrs, post_ptrs, HAS_POST: tl.constexpr, STORE_C: tl.constexpr,
                 COMPUTE: tl.constexpr, UPCAST: tl.constexpr):
    """Store ``c = y`` (if ``STORE_C``) and ``post ⊙ y`` (``post`` if ``HAS_POST``)."""
    if STORE_C:
        tl.store(c_ptrs, to_output(y, c_ptrs.dtype.element_ty, UPCAST))
    if HAS_POST:
        y = y * tl.load(post_ptrs).to(COMPUTE)
    tl.store(y_ptrs, to_output(y, y_ptrs.dtype.element_ty, UPCAST))


@triton.jit
def _twiddle(ar, ai, tr_ptr, ti_ptr, offsets, CONJ: tl.constexpr):
    """``a ⊙ T`` (``⊙ conj(T)`` if ``CONJ``) with ``T`` read at ``offsets``."""
    tr, ti = _load_complex(tr_ptr, ti_ptr, offsets)
    return _cmul(ar, ai, tr, ti, CONJ)


@triton.jit
def _row_dft(ar, ai, f2r_ptr, f2i_ptr, N2: tl.constexpr, CONJ: tl.constexpr,
             PRECISION: tl.constexpr):
    """Row stage ``a · F_N2`` (``a · conj(F_N2)`` if ``CONJ``) of an ``(R, N2)`` tile."""
    r2 = tl.arange(0, N2)
    f2r, f2i = _load_complex(f2r_ptr, f2i_ptr, r2[:, None] * N2 + r2[None, :])
    return _cdot(ar, ai, f2r, f2i, CONJ, PRECISION)


@triton.jit
def _filter_and_invert_rows(br, bi, sr_ptr, si_ptr, spectrum_offsets, f2r_ptr, f2i_ptr,
                            tr_ptr, ti_ptr, twiddle_offsets, N2: tl.constexpr,
                            PRECISION: tl.constexpr):
    """``((B ⊙ k̂/N) · conj(F_N2)) ⊙ conj(T)`` for an ``(R, N2)`` tile of spectrum rows."""
    kr, ki = _load_complex(sr_ptr, si_ptr, spectrum_offsets)
    br, bi = _cmul(br, bi, kr, ki, False)
    cr, ci = _row_dft(br, bi, f2r_ptr, f2i_ptr, N2, True, PRECISION)
    return _twiddle(cr, ci, tr_ptr, ti_ptr, twiddle_offsets, True)


# ---------------------------------------------------------------- one pass (N ≤ ONE_PASS_MAX_N)


@triton.jit
def _rdft(x, f1r_ptr, f1i_ptr, f2r_ptr, f2i_ptr, tr_ptr, ti_ptr,
          N1: tl.constexpr, N2: tl.constexpr, IN_ROWS: tl.constexpr, PRECISION: tl.constexpr):
    """Spectrum ``(re, im)``, each ``(N1, N2)``, of a real ``(IN_ROWS, N2)`` tile ``x``
    (rows ``≥ IN_ROWS`` are zero)."""
    r1 = tl.arange(0, N1)
    f1r, f1i = _load_complex(f1r_ptr, f1i_ptr, r1[:, None] * N1 + tl.arange(0, IN_ROWS)[None, :])
    ar = tl.dot(f1r, x, input_precision=PRECISION)
    ai = tl.dot(f1i, x, input_precision=PRECISION)
    ar, ai = _twiddle(ar, ai, tr_ptr, ti_ptr, r1[:, None] * N2 + tl.arange(0, N2)[None, :],
                      False)
    return _row_dft(ar, ai, f2r_ptr, f2i_ptr, N2, False, PRECISION)


@triton.jit
def _spectrum_kernel(k_ptr, sr_ptr, si_ptr, f1r_ptr, f1i_ptr, f2r_ptr, f2i_ptr, tr_ptr, ti_ptr,
                     TAPS, sk_h, sk_l, scale,
                     N1: tl.constexpr, N2: tl.constexpr,
                     COMPUTE: tl.constexpr, PRECISION: tl.constexpr):
    """Row ``h`` of ``k: (H, TAPS)`` → ``scale · k̂`` as ``(N1, N2)`` real/imag tiles."""
    h = tl.program_id(0)
    t = tl.arange(0, N1)[:, None] * N2 + tl.arange(0, N2)[None, :]
    x = _load_gated(k_ptr + h * sk_h + t * sk_l, k_ptr, t < TAPS, False, COMPUTE)
    br, bi = _rdft(x, f1r_ptr, f1i_ptr, f2r_ptr, f2i_ptr, tr_ptr, ti_ptr, N1, N2, N1, PRECISION)
    _store_complex(sr_ptr, si_ptr, h * N1 * N2 + t, br * scale, bi * scale)


@triton.jit
def _conv_kernel(u_ptr, sr_ptr, si_ptr, pre_ptr, post_ptr, y_ptr, c_ptr,
                 f1r_ptr, f1i_ptr, f2r_ptr, f2i_ptr, tr_ptr, ti_ptr,
                 H, su_b, su_h, su_l, sa_b, sa_h, sa_l, sp_b, sp_h, sp_l,
                 N1: tl.constexpr, N2: tl.constexpr,
                 HAS_PRE: tl.constexpr, HAS_POST: tl.constexpr, STORE_C: tl.constexpr,
                 COMPUTE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """One ``(b, h)`` row: ``y = post ⊙ Re(IDFT(DFT(pre ⊙ u) · S_h))[:L]``, ``c`` un-post-gated."""
    HALF: tl.constexpr = N1 // 2
    pid = tl.program_id(0).to(tl.int64)                     # pid·L may pass 2^31
    b = pid // H
    h = pid % H
    rh = tl.arange(0, HALF)
    r1 = tl.arange(0, N1)
    r2 = tl.arange(0, N2)
    t = rh[:, None] * N2 + r2[None, :]                      # time index, all < L
    x = _load_gated(u_ptr + b * su_b + h * su_h + t * su_l,
                    pre_ptr + b * sa_b + h * sa_h + t * sa_l, t >= 0, HAS_PRE, COMPUTE)
    br, bi = _rdft(x, f1r_ptr, f1i_ptr, f2r_ptr, f2i_ptr, tr_ptr, ti_ptr,
                   N1, N2, HALF, PRECISION)
    tile = r1[:, None] * N2 + r2[None, :]
    cr, ci = _filter_and_invert_rows(br, bi, sr_ptr, si_ptr, h * N1 * N2 + tile,
                                     f2r_ptr, f2i_ptr, tr_ptr, ti_ptr, tile, N2, PRECISION)
    # Inverse column stage: top half of conj(F_N1), real part only.
    f1 = rh[:, None] * N1 + r1[None, :]
    y = tl.dot(tl.load(f1r_ptr + f1), cr, input_precision=PRECISION)
    y = tl.dot(tl.load(f1i_ptr + f1), ci, y, input_precision=PRECISION)
    out = pid * HALF * N2 + t                               # y and c are contiguous (B, H, L)
    _store_gated(y, y_ptr + out, c_ptr + out, post_ptr + b * sp_b + h * sp_h + t * sp_l,
                 HAS_POST, STORE_C, COMPUTE, UPCAST)


# ---------------------------------------------------------------- three passes (long rows)


@triton.jit
def _column_tile(H, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program ``(row, i, j)`` of a column pass: ``row = b·H + h``, tile rows ``rm`` (block
    ``i`` of ``BLOCK_M``) and columns ``rc`` (block ``j`` of ``BLOCK_C``)."""
    row = tl.program_id(0).to(tl.int64)                     # row·N may pass 2^31
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rc = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    return row, row // H, row % H, rm, rc


@triton.jit
def _columns_forward_kernel(x_ptr, gate_ptr, ar_ptr, ai_ptr, f1r_ptr, f1i_ptr, tr_ptr, ti_ptr,
                            H, TAPS, sx_b, sx_h, sx_l, sg_b, sg_h, sg_l,
                            N1: tl.constexpr, N2: tl.constexpr, IN_ROWS: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                            BLOCK_C: tl.constexpr, HAS_GATE: tl.constexpr,
                            COMPUTE: tl.constexpr, PRECISION: tl.constexpr):
    """Pass 1, tile ``(f1 block, n2 block)`` of row ``(b, h)``: ``((F_N1 · X) ⊙ T)`` with
    ``X[n1, n2] = (gate ⊙ x)[N2·n1 + n2]`` (zero for ``n1 ≥ IN_ROWS`` or ``t ≥ TAPS``)."""
    row, b, h, rm, rc = _column_tile(H, BLOCK_M, BLOCK_C)
    acc_r = tl.zeros((BLOCK_M, BLOCK_C), dtype=COMPUTE)
    acc_i = tl.zeros((BLOCK_M, BLOCK_C), dtype=COMPUTE)
    for k0 in range(0, IN_ROWS, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        t = rk[:, None] * N2 + rc[None, :]
        x = _load_gated(x_ptr + b * sx_b + h * sx_h + t * sx_l,
                        gate_ptr + b * sg_b + h * sg_h + t * sg_l, t < TAPS, HAS_GATE, COMPUTE)
        fr, fi = _load_complex(f1r_ptr, f1i_ptr, rm[:, None] * N1 + rk[None, :])
        acc_r = tl.dot(fr, x, acc_r, input_precision=PRECISION)
        acc_i = tl.dot(fi, x, acc_i, input_precision=PRECISION)
    tile = rm[:, None] * N2 + rc[None, :]
    acc_r, acc_i = _twiddle(acc_r, acc_i, tr_ptr, ti_ptr, tile, False)
    _store_complex(ar_ptr, ai_ptr, row * N1 * N2 + tile, acc_r, acc_i)


@triton.jit
def _rows_kernel(ar_ptr, ai_ptr, sr_ptr, si_ptr, f2r_ptr, f2i_ptr, tr_ptr, ti_ptr, H, scale,
                 N1: tl.constexpr, N2: tl.constexpr, BLOCK_R: tl.constexpr,
                 SPECTRUM: tl.constexpr, PRECISION: tl.constexpr):
    """Pass 2, rows ``f1 block`` of row ``(b, h)``, in place: ``scale · (A · F_N2)`` if
    ``SPECTRUM`` (a filter's spectrum), else ``((A · F_N2) ⊙ S_h) · conj(F_N2) ⊙ conj(T)``."""
    row = tl.program_id(0).to(tl.int64)                     # row·N may pass 2^31
    tile = ((tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R))[:, None] * N2
            + tl.arange(0, N2)[None, :])
    ar, ai = _load_complex(ar_ptr, ai_ptr, row * N1 * N2 + tile)
    br, bi = _row_dft(ar, ai, f2r_ptr, f2i_ptr, N2, False, PRECISION)
    if SPECTRUM:
        br, bi = br * scale, bi * scale
    else:
        br, bi = _filter_and_invert_rows(br, bi, sr_ptr, si_ptr, (row % H) * N1 * N2 + tile,
                                         f2r_ptr, f2i_ptr, tr_ptr, ti_ptr, tile, N2, PRECISION)
    _store_complex(ar_ptr, ai_ptr, row * N1 * N2 + tile, br, bi)


@triton.jit
def _columns_inverse_kernel(cr_ptr, ci_ptr, post_ptr, y_ptr, c_ptr, f1r_ptr, f1i_ptr,
                            H, sp_b, sp_h, sp_l,
                            N1: tl.constexpr, N2: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
                            HAS_POST: tl.constexpr, STORE_C: tl.constexpr,
                            COMPUTE: tl.constexpr, PRECISION: tl.constexpr,
                            UPCAST: tl.constexpr):
    """Pass 3, tile ``(t1 block, n2 block)`` of row ``(b, h)``, ``t1 < N1/2``:
    ``y = post ⊙ Re(conj(F_N1) · C)`` (and ``c`` without ``post``) at ``t = N2·t1 + n2``."""
    row, b, h, rm, rc = _column_tile(H, BLOCK_M, BLOCK_C)
    y = tl.zeros((BLOCK_M, BLOCK_C), dtype=COMPUTE)
    for k0 in range(0, N1, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        cr, ci = _load_complex(cr_ptr, ci_ptr, row * N1 * N2 + rk[:, None] * N2 + rc[None, :])
        fr, fi = _load_complex(f1r_ptr, f1i_ptr, rm[:, None] * N1 + rk[None, :])
        y = tl.dot(fr, cr, y, input_precision=PRECISION)
        y = tl.dot(fi, ci, y, input_precision=PRECISION)
    t = rm[:, None] * N2 + rc[None, :]
    out = row * (N1 // 2) * N2 + t                          # y and c are contiguous (B, H, L)
    _store_gated(y, y_ptr + out, c_ptr + out, post_ptr + b * sp_b + h * sp_h + t * sp_l,
                 HAS_POST, STORE_C, COMPUTE, UPCAST)


# ---------------------------------------------------------------- host side


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _strides(t: torch.Tensor | None) -> tuple[int, int, int]:
    return (0, 0, 0) if t is None else t.stride()


def _columns_forward(x, strides, gate, gate_strides, rows: int, channels: int, taps: int,
                     in_rows: int, p: Plan, factors, precision: str):
    """Pass 1 on ``rows`` signals (``rows = B·H``, or ``H`` filters with batch stride 0);
    returns the scratch ``(A_re, A_im)``, each ``(rows, N1, N2)`` in the factors' dtype."""
    f1r, f1i, _, _, tr, ti = factors
    ar = torch.empty(rows, p.n1, p.n2, dtype=f1r.dtype, device=x.device)
    ai = torch.empty_like(ar)
    _columns_forward_kernel[(rows, p.n1 // p.block_m, p.n2 // p.block_c)](
        x, x if gate is None else gate, ar, ai, f1r, f1i, tr, ti, channels, taps,
        *strides, *gate_strides, N1=p.n1, N2=p.n2, IN_ROWS=in_rows, BLOCK_M=p.block_m,
        BLOCK_K=p.block_k, BLOCK_C=p.block_c, HAS_GATE=gate is not None,
        COMPUTE=acc_dtype(f1r.dtype), PRECISION=precision, num_warps=PASS_WARPS["columns"],
        num_stages=1)
    return ar, ai


def _rows(scratch, spectrum, channels: int, scale: float, p: Plan, factors, precision: str):
    """Pass 2 in place on ``scratch``; ``spectrum=None`` → store the scaled spectrum."""
    ar, ai = scratch
    sr, si = (ar, ai) if spectrum is None else spectrum
    _rows_kernel[(ar.shape[0], p.n1 // p.block_r)](
        ar, ai, sr, si, *factors[2:], channels, scale, N1=p.n1, N2=p.n2, BLOCK_R=p.block_r,
        SPECTRUM=spectrum is None, PRECISION=precision, num_warps=PASS_WARPS["rows"], num_stages=1)


def filter_spectrum(k: torch.Tensor, length: int, dtype: torch.dtype, p: Plan):
    """``k̂/N`` of ``k: (H, L | 2L)`` as two ``(H, N1, N2)`` tensors (real, imaginary)."""
    n = 2 * length
    factors = dft_factors(p.n1, p.n2, dtype, k.device)
    channels, taps = k.shape
    precision = dot_precision(k.dtype)
    if not p.one_pass:
        strides = (0, *k.stride())
        spectrum = _columns_forward(k, strides, None, (0, 0, 0), channels, channels, taps,
                                    p.n1, p, factors, precision)
        _rows(spectrum, None, channels, 1.0 / n, p, factors, precision)
        return spectrum
    sr = torch.empty(channels, p.n1, p.n2, dtype=dtype, device=k.device)
    si = torch.empty_like(sr)
    _spectrum_kernel[(channels,)](
        k, sr, si, *factors, taps, k.stride(0), k.stride(1), 1.0 / n,
        N1=p.n1, N2=p.n2, COMPUTE=acc_dtype(dtype), PRECISION=precision,
        num_warps=num_warps(n), num_stages=1)
    return sr, si


def _conv(u, spectrum, pre, post, store_c: bool, p: Plan):
    """Convolve ``u`` with the filter spectrum by plan ``p``; returns ``(y, c or None)``,
    contiguous, dtype of ``u``."""
    batch, channels, length = u.shape
    sr, si = spectrum
    y = torch.empty(batch, channels, length, dtype=u.dtype, device=u.device)
    c = torch.empty_like(y) if store_c else None
    if y.numel() == 0:
        return y, c
    upcast = check_device(u, sr, *(g for g in (pre, post) if g is not None))
    factors = dft_factors(p.n1, p.n2, sr.dtype, u.device)
    precision, compute = dot_precision(u.dtype), acc_dtype(sr.dtype)
    gated = dict(HAS_POST=post is not None, STORE_C=store_c, COMPUTE=compute,
                 PRECISION=precision, UPCAST=upcast, num_stages=1)
    post_arg, c_arg = u if post is None else post, y if c is None else c
    if p.one_pass:
        _conv_kernel[(batch * channels,)](
            u, sr, si, u if pre is None else pre, post_arg, y, c_arg, *factors,
            channels, *u.stride(), *_strides(pre), *_strides(post),
            N1=p.n1, N2=p.n2, HAS_PRE=pre is not None, num_warps=num_warps(2 * length),
            **gated)
        return y, c
    rows = batch * channels
    scratch = _columns_forward(u, u.stride(), pre, _strides(pre), rows, channels, length,
                               p.n1 // 2, p, factors, precision)
    _rows(scratch, spectrum, channels, 1.0, p, factors, precision)
    _columns_inverse_kernel[(rows, p.n1 // 2 // p.block_m, p.n2 // p.block_c)](
        *scratch, post_arg, y, c_arg, *factors[:2], channels, *_strides(post),
        N1=p.n1, N2=p.n2, BLOCK_M=p.block_m, BLOCK_K=p.block_k, BLOCK_C=p.block_c,
        num_warps=PASS_WARPS["columns"], **gated)
    return y, c


class LongConv(torch.autograd.Function):
    """Autograd wrapper: ``(u, k, pre_gate | None, post_gate | None) → y``."""

    @staticmethod
    def forward(ctx, u, k, pre, post):
        length, compute = u.shape[-1], _compute_dtype(u, k)
        ctx.plan = p = plan(length, compute)
        spectrum = filter_spectrum(k, length, compute, p)
        keep_c = post is not None and ctx.needs_input_grad[3]
        y, c = _conv(u, spectrum, pre, post, store_c=keep_c, p=p)
        ctx.save_for_backward(u, k, pre, post, c, *spectrum)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        """Gradients of ``y = post ⊙ conv(pre ⊙ u, k)``; which parts run where:

        * ``g_u`` (and ``g_v``, from which ``g_pre`` follows) — Triton: one convolution with
          the conjugate filter spectrum (:func:`_conv_kernel`, or the three passes), the
          spectrum reused from the forward;
        * ``g_pre = g_v ⊙ u`` and ``g_post = gy ⊙ c`` — PyTorch, elementwise (``c`` stored by
          the forward kernel);
        * ``g_k`` — PyTorch: ``torch.fft`` cross-correlation summed over the batch.
        """
        gy = resolved(gy)
        u, k, pre, post, c, sr, si = ctx.saved_tensors
        need_u, need_k, need_pre, need_post = ctx.needs_input_grad
        gu = gk = gpre = gpost = None
        if need_u or need_pre:  # g_v = corr(post ⊙ gy, k); g_u = pre ⊙ g_v
            gu, gv = _conv(gy, (sr, -si), post, pre, store_c=pre is not None, p=ctx.plan)
            if need_pre:
                gpre = gv * u
        if need_post:
            gpost = gy * c
        if need_k:
            length = u.shape[-1]
            v = u if pre is None else pre * u
            g = gy if post is None else post * gy
            n = 2 * length
            cross = (torch.fft.rfft(v.to(sr.dtype), n=n).conj()
                     * torch.fft.rfft(g.to(sr.dtype), n=n)).sum(0)
            gk = torch.fft.irfft(cross, n=n)[:, :k.shape[1]].to(k.dtype)
        return (gu if need_u else None), gk, gpre, gpost


def long_conv_triton(u: torch.Tensor, k: torch.Tensor, pre_gate: torch.Tensor | None = None,
                     post_gate: torch.Tensor | None = None) -> torch.Tensor:
    """Monarch-DFT ``post_gate ⊙ conv(pre_gate ⊙ u, k)``; ``u: (B, H, L)``, ``k: (H, L|2L)``.

    Returns ``(B, H, L)`` in ``u``'s dtype; differentiable in all four inputs. ``L`` must
    be a power of two in ``[256, 65536]`` (``ValueError`` otherwise); rows with
    ``2L > ONE_PASS_MAX_N`` run the three-pass plan. Accuracy: a few ulps of the compute
    dtype times ``log N`` relative to ``‖y‖`` (like an FFT).
    """
    _, _, length = check_long_conv_args(u, k, pre_gate, post_gate)
    if not supports_length(length):
        raise ValueError(f"the Monarch-DFT kernel needs L a power of two in "
                         f"[{MIN_LENGTH}, {MAX_LENGTH}], got L = {length}")
    # the kernels read raw memory: apply lazy negative / conjugate bits first
    return LongConv.apply(resolved(u), resolved(k), resolved(pre_gate), resolved(post_gate))
