"""Monarch-DFT long convolution in Triton (the FFT convolution as block matrix products).

The ``N = 2L``-point DFT is written as an order-2 Monarch product (Cooley–Tukey with
``N = N1·N2``, ``N1 ≥ N2`` powers of two): a signal is the row-major ``(N1, N2)`` tile
``X[n1, n2] = x[N2·n1 + n2]`` and its spectrum the tile ``S[f1, f2] = x̂[f1 + N1·f2]``::

    S = ((F_N1 · X) ⊙ T) · F_N2,   F_m[a, b] = e^{−2πi·ab/m},   T[f1, n2] = e^{−2πi·f1·n2/N}

(one ``N1×N1`` block product, a twiddle, one ``N2×N2`` block product — dense tile dots,
i.e. tensor-core GEMMs). The inverse runs the same way with conjugate factors in reverse
order. One program convolves one ``(batch, channel)`` row entirely on chip:

1. load ``u`` (and multiply by ``pre_gate``); rows ``n1 ≥ N1/2`` are the zero padding, so
   the first product only reads the left half of ``F_N1``;
2. forward DFT, multiply by the filter spectrum ``k̂/N`` of the channel;
3. inverse DFT, keeping only the real part of the first ``N1/2`` rows (= the first ``L``
   outputs), so the last product only uses the top half of ``conj(F_N1)``;
4. multiply by ``post_gate`` and store (optionally also the un-post-gated result).

The filter spectrum (``(H, N1, N2)``, real and imaginary parts) is computed once per call
by :func:`_spectrum_kernel` with the same forward DFT; causal (``L`` taps) and
bidirectional (``2L`` taps) filters differ only there.

Backward (:class:`LongConv`): the adjoint of a convolution is the correlation with the
same filter, i.e. the same kernel with the conjugate spectrum. One launch of
:func:`_conv_kernel` gives ``g_v = corr(post ⊙ gy, k)`` and ``g_u = pre ⊙ g_v``; the
filter gradient ``g_k = irfft(Σ_b conj(v̂_b)·ĝ_b)[:taps]`` (a reduction over the batch) is
the one part computed with ``torch.fft``; ``g_pre = g_v ⊙ u`` and ``g_post = gy ⊙ c`` (``c``
stored by the forward kernel) are elementwise.

Dtypes: float64 computes in float64, everything else in float32 (IEEE dots for float32
inputs, TF32 dots for bfloat16 inputs on the GPU). Supported lengths: ``L`` a power of two
in ``[256, 8192]`` (``N`` from 512 to 16384); one program holds a whole row on chip, and
at ``L = 16384`` that no longer fits an SM (an order-3 decomposition would be needed).
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from kernels._triton_common import acc_dtype, check_device, to_output
from kernels.long_conv_reference import check_long_conv_args

__all__ = ["MAX_LENGTH", "MIN_LENGTH", "LongConv", "long_conv_triton", "supports_length"]

# L = 16384 (N = 32768, a 256×128 complex tile per program) needs ~384 KB of shared
# memory on sm_90 (ahead-of-time compile), more than an H100/H200 SM has: not supported.
MIN_LENGTH, MAX_LENGTH = 256, 8192


def supports_length(length: int) -> bool:
    """Whether the Monarch-DFT kernel handles sequence length ``L``."""
    return MIN_LENGTH <= length <= MAX_LENGTH and length & (length - 1) == 0


def split(n: int) -> tuple[int, int]:
    """``N = N1·N2`` with ``N1 = 2^⌈log2(N)/2⌉ ≥ N2`` (both ≥ 16 for ``N ≥ 512``)."""
    n1 = 1 << ((n.bit_length() - 1 + 1) // 2)
    return n1, n // n1


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


def num_warps(n: int) -> int:
    """Warps per program for an ``N``-point row, from ahead-of-time sm_90 compiles: no
    spills up to ``N = 2048`` with 4 warps; from ``N = 8192`` on, 8 warps spill least
    (4 and 16 spill 1–12 KB per thread). A fixed choice, not autotuned: autotuning would
    multiply the (long, for large ``N``) compile times."""
    return 4 if n <= 2048 else 8


@triton.jit
def _load_complex(re_ptr, im_ptr, offsets):
    return tl.load(re_ptr + offsets), tl.load(im_ptr + offsets)


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
def _rdft(x, f1r_ptr, f1i_ptr, f2r_ptr, f2i_ptr, tr_ptr, ti_ptr,
          N1: tl.constexpr, N2: tl.constexpr, IN_ROWS: tl.constexpr, PRECISION: tl.constexpr):
    """Spectrum ``(re, im)``, each ``(N1, N2)``, of a real ``(IN_ROWS, N2)`` tile ``x``
    (rows ``≥ IN_ROWS`` are zero)."""
    r1 = tl.arange(0, N1)
    r2 = tl.arange(0, N2)
    f1r, f1i = _load_complex(f1r_ptr, f1i_ptr, r1[:, None] * N1 + tl.arange(0, IN_ROWS)[None, :])
    ar = tl.dot(f1r, x, input_precision=PRECISION)
    ai = tl.dot(f1i, x, input_precision=PRECISION)
    tr, ti = _load_complex(tr_ptr, ti_ptr, r1[:, None] * N2 + r2[None, :])
    ar, ai = _cmul(ar, ai, tr, ti, False)
    f2r, f2i = _load_complex(f2r_ptr, f2i_ptr, r2[:, None] * N2 + r2[None, :])
    return _cdot(ar, ai, f2r, f2i, False, PRECISION)


@triton.jit
def _spectrum_kernel(k_ptr, sr_ptr, si_ptr, f1r_ptr, f1i_ptr, f2r_ptr, f2i_ptr, tr_ptr, ti_ptr,
                     TAPS, sk_h, sk_l, scale,
                     N1: tl.constexpr, N2: tl.constexpr,
                     COMPUTE: tl.constexpr, PRECISION: tl.constexpr):
    """Row ``h`` of ``k: (H, TAPS)`` → ``scale · k̂`` as ``(N1, N2)`` real/imag tiles."""
    h = tl.program_id(0)
    r1 = tl.arange(0, N1)
    r2 = tl.arange(0, N2)
    t = r1[:, None] * N2 + r2[None, :]
    x = tl.load(k_ptr + h * sk_h + t * sk_l, mask=t < TAPS, other=0.0).to(COMPUTE)
    br, bi = _rdft(x, f1r_ptr, f1i_ptr, f2r_ptr, f2i_ptr, tr_ptr, ti_ptr, N1, N2, N1, PRECISION)
    out = h * N1 * N2 + t
    tl.store(sr_ptr + out, br * scale)
    tl.store(si_ptr + out, bi * scale)


@triton.jit
def _conv_kernel(u_ptr, sr_ptr, si_ptr, pre_ptr, post_ptr, y_ptr, c_ptr,
                 f1r_ptr, f1i_ptr, f2r_ptr, f2i_ptr, tr_ptr, ti_ptr,
                 H, su_b, su_h, su_l, sa_b, sa_h, sa_l, sp_b, sp_h, sp_l,
                 N1: tl.constexpr, N2: tl.constexpr,
                 HAS_PRE: tl.constexpr, HAS_POST: tl.constexpr, STORE_C: tl.constexpr,
                 COMPUTE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """One ``(b, h)`` row: ``y = post ⊙ Re(IDFT(DFT(pre ⊙ u) · S_h))[:L]``, ``c`` un-post-gated."""
    HALF: tl.constexpr = N1 // 2
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    rh = tl.arange(0, HALF)
    r1 = tl.arange(0, N1)
    r2 = tl.arange(0, N2)
    t = rh[:, None] * N2 + r2[None, :]                      # time index, all < L
    x = tl.load(u_ptr + b * su_b + h * su_h + t * su_l).to(COMPUTE)
    if HAS_PRE:
        x = x * tl.load(pre_ptr + b * sa_b + h * sa_h + t * sa_l).to(COMPUTE)
    br, bi = _rdft(x, f1r_ptr, f1i_ptr, f2r_ptr, f2i_ptr, tr_ptr, ti_ptr,
                   N1, N2, HALF, PRECISION)

    # Pointwise product with the channel's (pre-scaled by 1/N) filter spectrum.
    kr, ki = _load_complex(sr_ptr, si_ptr, h * N1 * N2 + r1[:, None] * N2 + r2[None, :])
    br, bi = _cmul(br, bi, kr, ki, False)

    # Inverse: · conj(F_N2), ⊙ conj(T), then the top half of conj(F_N1), real part only.
    f2r, f2i = _load_complex(f2r_ptr, f2i_ptr, r2[:, None] * N2 + r2[None, :])
    cr, ci = _cdot(br, bi, f2r, f2i, True, PRECISION)
    tr, ti = _load_complex(tr_ptr, ti_ptr, r1[:, None] * N2 + r2[None, :])
    cr, ci = _cmul(cr, ci, tr, ti, True)
    f1 = rh[:, None] * N1 + r1[None, :]
    y = tl.dot(tl.load(f1r_ptr + f1), cr, input_precision=PRECISION)
    y = tl.dot(tl.load(f1i_ptr + f1), ci, y, input_precision=PRECISION)

    out = pid * HALF * N2 + t                               # y and c are contiguous (B, H, L)
    if STORE_C:
        tl.store(c_ptr + out, to_output(y, c_ptr.dtype.element_ty, UPCAST))
    if HAS_POST:
        y = y * tl.load(post_ptr + b * sp_b + h * sp_h + t * sp_l).to(COMPUTE)
    tl.store(y_ptr + out, to_output(y, y_ptr.dtype.element_ty, UPCAST))


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def filter_spectrum(k: torch.Tensor, length: int, dtype: torch.dtype):
    """``k̂/N`` of ``k: (H, L | 2L)`` as two ``(H, N1, N2)`` tensors (real, imaginary)."""
    n = 2 * length
    n1, n2 = split(n)
    factors = dft_factors(n1, n2, dtype, k.device)
    sr = torch.empty(k.shape[0], n1, n2, dtype=dtype, device=k.device)
    si = torch.empty_like(sr)
    _spectrum_kernel[(k.shape[0],)](
        k, sr, si, *factors, k.shape[1], k.stride(0), k.stride(1), 1.0 / n,
        N1=n1, N2=n2, COMPUTE=acc_dtype(dtype), PRECISION=_precision(k.dtype),
        num_warps=num_warps(n), num_stages=1)
    return sr, si


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def _strides(t: torch.Tensor | None) -> tuple[int, int, int]:
    return (0, 0, 0) if t is None else t.stride()


def _conv(u, spectrum, pre, post, store_c: bool):
    """Launch :func:`_conv_kernel`; returns ``(y, c or None)``, contiguous, dtype of ``u``."""
    batch, channels, length = u.shape
    sr, si = spectrum
    n1, n2 = sr.shape[1:]
    y = torch.empty(batch, channels, length, dtype=u.dtype, device=u.device)
    c = torch.empty_like(y) if store_c else None
    if y.numel() == 0:
        return y, c
    upcast = check_device(u, sr, *(g for g in (pre, post) if g is not None))
    _conv_kernel[(batch * channels,)](
        u, sr, si, u if pre is None else pre, u if post is None else post, y,
        y if c is None else c, *dft_factors(n1, n2, sr.dtype, u.device),
        channels, *u.stride(), *_strides(pre), *_strides(post),
        N1=n1, N2=n2, HAS_PRE=pre is not None, HAS_POST=post is not None, STORE_C=store_c,
        COMPUTE=acc_dtype(sr.dtype), PRECISION=_precision(u.dtype), UPCAST=upcast,
        num_warps=num_warps(n1 * n2), num_stages=1)
    return y, c


class LongConv(torch.autograd.Function):
    """Autograd wrapper: ``(u, k, pre_gate | None, post_gate | None) → y``."""

    @staticmethod
    def forward(ctx, u, k, pre, post):
        length = u.shape[-1]
        compute = _compute_dtype(u, k)
        spectrum = filter_spectrum(k, length, compute)
        keep_c = post is not None and ctx.needs_input_grad[3]
        y, c = _conv(u, spectrum, pre, post, store_c=keep_c)
        ctx.save_for_backward(u, k, pre, post, c, *spectrum)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        u, k, pre, post, c, sr, si = ctx.saved_tensors
        need_u, need_k, need_pre, need_post = ctx.needs_input_grad
        gu = gk = gpre = gpost = None
        if need_u or need_pre:  # g_v = corr(post ⊙ gy, k); g_u = pre ⊙ g_v
            gu, gv = _conv(gy, (sr, -si), post, pre, store_c=pre is not None)
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
    be a power of two in ``[256, 8192]`` (``ValueError`` otherwise). Accuracy: a few ulps
    of the compute dtype times ``log N`` relative to ``‖y‖`` (like an FFT).
    """
    _, _, length = check_long_conv_args(u, k, pre_gate, post_gate)
    if not supports_length(length):
        raise ValueError(f"the Monarch-DFT kernel needs L a power of two in "
                         f"[{MIN_LENGTH}, {MAX_LENGTH}], got L = {length}")
    return LongConv.apply(u, k, pre_gate, post_gate)
