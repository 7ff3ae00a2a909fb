"""PyTorch reference for the FFT long convolution used by Monarch Mixer.

``u: (B, H, L)`` (channels first), filter ``k: (H, L)`` or ``(H, 2L)``::

    y = irfft(rfft(u, 2L) · rfft(k, 2L), 2L)[..., :L]

With an ``L``-tap filter this is the causal convolution ``y[t] = Σ_{s≤t} k[t−s] u[s]``
(zero padding to ``2L`` removes the wrap-around). With a ``2L``-tap filter it is a
bidirectional convolution: taps ``k[L+1:]`` reach into the future
(``y[t] += Σ_{s>t} k[2L − (s − t)] u[s]``). Output dtype equals ``u``'s; the FFT runs in
float32 for half-precision inputs and in the input's precision otherwise.
"""

from __future__ import annotations

import torch

__all__ = ["check_long_conv_args", "long_conv_reference"]


def check_long_conv_args(u: torch.Tensor, k: torch.Tensor) -> tuple[int, int, int]:
    """Validate ``u: (B, H, L)`` and ``k: (H, L | 2L)``; return ``(B, H, L)``."""
    if u.ndim != 3:
        raise ValueError(f"u must be (batch, channels, length), got shape {tuple(u.shape)}")
    batch, channels, length = u.shape
    if k.ndim != 2 or k.shape[0] != channels or k.shape[1] not in (length, 2 * length):
        raise ValueError(f"k must be ({channels}, {length}) (causal) or ({channels}, "
                         f"{2 * length}) (bidirectional), got {tuple(k.shape)}")
    if not u.is_floating_point() or not k.is_floating_point():
        raise TypeError(f"u and k must be floating point, got {u.dtype}, {k.dtype}")
    return batch, channels, length


def long_conv_reference(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """FFT convolution of ``u: (B, H, L)`` with ``k: (H, L | 2L)``; returns ``(B, H, L)``."""
    _, _, length = check_long_conv_args(u, k)
    fft_dtype = torch.promote_types(torch.promote_types(u.dtype, k.dtype), torch.float32)
    n = 2 * length
    u_f = torch.fft.rfft(u.to(fft_dtype), n=n)
    k_f = torch.fft.rfft(k.to(fft_dtype), n=n)
    y = torch.fft.irfft(u_f * k_f, n=n)[..., :length]
    return y.to(u.dtype)
