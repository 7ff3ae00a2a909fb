"""Exactly causal convolutions: ``y[t] = Σ_{s≤t} k[t−s] u[s]`` computed from ``s ≤ t`` only.

A zero-padded FFT convolution (:func:`kernels.long_conv`) is causal in exact arithmetic,
but in floating point every input leaks rounding noise into every output. The two
functions here never let a later input touch an earlier output, bit for bit:

* :func:`causal_conv_direct` — the product with the lower-triangular Toeplitz matrix of
  ``k`` (``O(H L²)``; every product a single rounding, zeros above the diagonal exact);
* :func:`causal_long_conv` — blocks of ``block`` samples convolved directly, the
  contribution of earlier blocks added by FFT calls that never see a later input
  (``O(H L log² L)``).

Both take ``u: (B, H, L)`` channels first and ``k: (H, L)`` and return ``(B, H, L)`` in
``u``'s dtype; both are differentiable. The FFT reference they are checked against is
:func:`kernels.long_conv_reference`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.ops import long_conv

__all__ = ["causal_conv_direct", "causal_long_conv"]


def _check(u: torch.Tensor, k: torch.Tensor) -> None:
    if u.ndim != 3 or k.ndim != 2 or k.shape != (u.shape[1], u.shape[2]):
        raise ValueError(f"need u: (B, H, L) and k: (H, L), got {tuple(u.shape)}, "
                         f"{tuple(k.shape)}")


def _toeplitz(k: torch.Tensor) -> torch.Tensor:
    """``T[h, t, s] = k[h, t − s]`` for ``s ≤ t``, exact zeros above: ``(H, L, L)``,
    gathered from ``k`` with one zero padded in front (index 0).

    A gather rather than an ``unfold`` window view: ``unfold``'s backward has no
    ``vmap`` batching rule, and the Levenberg–Marquardt finisher differentiates this
    under ``vmap(jacrev)`` (the fallback loops over the batch).
    """
    steps = torch.arange(k.shape[-1], device=k.device)
    lag = (steps[:, None] - steps[None, :]).clamp(min=-1) + 1        # 0: above the diagonal
    return F.pad(k, (1, 0))[..., lag]


def causal_conv_direct(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal convolution of ``u: (B, H, L)`` with ``k: (H, L)`` through the Toeplitz matrix.

    One batched matmul over channels, ``(H, L, L) @ (H, L, B)``. Returns ``(B, H, L)``.
    """
    _check(u, k)
    return (_toeplitz(k.to(u.dtype)) @ u.permute(1, 2, 0)).permute(2, 0, 1)


def causal_long_conv(u: torch.Tensor, k: torch.Tensor, *, block: int = 64) -> torch.Tensor:
    """Causal long convolution ``y[t] = Σ_{s≤t} k[t−s] u[s]``, exactly causal in floating point.

    ``u: (B, H, L)``, ``k: (H, L)``; returns ``(B, H, L)`` in ``u``'s dtype. Blocks of
    ``block`` samples are convolved directly (:func:`causal_conv_direct`); then for
    ``n = block, 2·block, …`` every block ``2j+1`` of size ``n`` receives the
    contribution of block ``2j`` with one batched :func:`kernels.long_conv` call whose
    ``2n``-tap filter ``[k[n:2n], k[0:n]]`` maps offsets ``−(n−1) … n−1`` to taps
    ``k[1] … k[2n−1]``. Output ``t`` is computed only from inputs ``s ≤ t``;
    ``L`` is zero-padded at the end to ``block · 2^j``. Cost O(L log² L) per channel.
    """
    _check(u, k)
    batch, channels, length = u.shape
    block = min(block, length)
    padded = block
    while padded < length:
        padded *= 2
    u_p = F.pad(u, (0, padded - length)) if padded > length else u
    k_p = F.pad(k, (0, padded - length)) if padded > length else k
    k_p = k_p.to(u.dtype)
    # within-block part: the blocks as a batch of (H, block) rows under one Toeplitz matrix
    rows = u_p.view(batch, channels, -1, block).transpose(1, 2).reshape(-1, channels, block)
    y = causal_conv_direct(rows, k_p[:, :block]).view(batch, -1, channels, block)
    y = y.transpose(1, 2).reshape(batch, channels, padded)
    n = block
    while n < padded:
        pairs = u_p.view(batch, channels, padded // (2 * n), 2, n)
        early = pairs[..., 0, :].permute(0, 2, 1, 3).reshape(-1, channels, n)
        taps = torch.cat([k_p[:, n: 2 * n], k_p[:, :n]], dim=-1)
        cross = long_conv(early, taps).view(batch, -1, channels, n).permute(0, 2, 1, 3)
        y.view(batch, channels, -1, 2, n)[..., 1, :] += cross
        n *= 2
    return y[..., :length]
