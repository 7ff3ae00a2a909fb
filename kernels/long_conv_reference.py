"""PyTorch reference for the (optionally gated) FFT long convolution of Monarch Mixer.

``u: (B, H, L)`` (channels first), filter ``k: (H, L)`` or ``(H, 2L)``, optional gates
``pre_gate, post_gate: (B, H, L)``::

    y = post_gate ⊙ irfft(rfft(pre_gate ⊙ u, 2L) · rfft(k, 2L), 2L)[..., :L]

With an ``L``-tap filter this is the causal convolution ``y[t] = Σ_{s≤t} k[t−s] u[s]``
(zero padding to ``2L`` removes the wrap-around). With a ``2L``-tap filter it is a
bidirectional convolution: taps ``k[L+1:]`` reach into the future
(``y[t] += Σ_{s>t} k[2L − (s − t)] u[s]``). A missing gate is all ones. Output dtype
equals ``u``'s; the FFT runs in float32 for half-precision inputs and in the input's
precision otherwise.
"""

from __future__ import annotations

import torch

__all__ = ["check_long_conv_args", "long_conv_reference"]


def check_long_conv_args(u: torch.Tensor, k: torch.Tensor,
                         pre_gate: torch.Tensor | None = None,
                         post_gate: torch.Tensor | None = None) -> tuple[int, int, int]:
    """Validate ``u: (B, H, L)``, ``k: (H, L | 2L)`` and the gates; return ``(B, H, L)``.

    Gates, when given, must have exactly ``u``'s shape and dtype (nothing is broadcast).
    """
    if u.ndim != 3:
        raise ValueError(f"u must be (batch, channels, length), got shape {tuple(u.shape)}")
    batch, channels, length = u.shape
    if k.ndim != 2 or k.shape[0] != channels or k.shape[1] not in (length, 2 * length):
        raise ValueError(f"k must be ({channels}, {length}) (causal) or ({channels}, "
                         f"{2 * length}) (bidirectional), got {tuple(k.shape)}")
    if not u.is_floating_point() or not k.is_floating_point():
        raise TypeError(f"u and k must be floating point, got {u.dtype}, {k.dtype}")
    for name, gate in (("pre_gate", pre_gate), ("post_gate", post_gate)):
        if gate is None:
            continue
        if gate.shape != u.shape:
            raise ValueError(f"{name} must have u's shape {tuple(u.shape)}, "
                             f"got {tuple(gate.shape)}")
        if gate.dtype != u.dtype:
            raise TypeError(f"{name} must have u's dtype {u.dtype}, got {gate.dtype}")
    return batch, channels, length


def long_conv_reference(u: torch.Tensor, k: torch.Tensor,
                        pre_gate: torch.Tensor | None = None,
                        post_gate: torch.Tensor | None = None) -> torch.Tensor:
    """Gated FFT convolution of ``u: (B, H, L)`` with ``k: (H, L | 2L)``; returns ``(B, H, L)``."""
    _, _, length = check_long_conv_args(u, k, pre_gate, post_gate)
    if pre_gate is not None:
        u = pre_gate * u
    fft_dtype = torch.promote_types(torch.promote_types(u.dtype, k.dtype), torch.float32)
    n = 2 * length
    u_f = torch.fft.rfft(u.to(fft_dtype), n=n)
    k_f = torch.fft.rfft(k.to(fft_dtype), n=n)
    y = torch.fft.irfft(u_f * k_f, n=n)[..., :length].to(u.dtype)
    return y if post_gate is None else post_gate * y
