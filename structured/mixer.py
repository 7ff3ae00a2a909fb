"""Monarch Mixer (M2) layers: the gated long-convolution sequence mixer and the GLU
dimension mixer.

Sequence mixer (Fu et al. 2023, public M2-BERT layer), for ``u: (batch, seq, d_model)``::

    x1, x2, v = shortconv(in_proj(u))          # d → 3d, depthwise causal conv, k = 3
    y = long_conv(v · x1, k) + D · (v · x1)     # implicit filter k, skip term D
    out = out_proj(y · x2)

The filter ``k`` is implicit: positional features of ``t`` go through a small MLP with
sine activations and are modulated by an exponential decay (:class:`ImplicitFilter`).
The bidirectional variant concatenates a forward filter with a flipped reverse filter into
a ``2L``-tap filter and makes one :func:`kernels.long_conv` call. The causal variant uses
an ``L``-tap filter through :func:`kernels.causal_long_conv`, which is causal *in
floating point*, not only in exact arithmetic (a single zero-padded FFT would let every
input leak rounding noise into every output).

Dimension mixer: ``GLU(u) = down(gelu(gate(u)) · up(u))`` with Monarch, block-diagonal or
dense projections (:func:`make_linear`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from structured.layers import BlockdiagLinear, MonarchLinear

__all__ = [
    "LINEAR_KINDS",
    "GLUMixer",
    "ImplicitFilter",
    "SequenceMixer",
    "cached_filters",
    "features_first",
    "make_linear",
]

LinearKind = Literal["dense", "monarch", "blockdiag"]
LINEAR_KINDS: tuple[str, ...] = LinearKind.__args__


def make_linear(kind: str, in_features: int, out_features: int, *, nblocks: int = 4,
                bias: bool = True) -> nn.Module:
    """A drop-in ``nn.Linear``: ``"dense"``, ``"monarch"`` or ``"blockdiag"`` (``nblocks``)."""
    if kind == "dense":
        return nn.Linear(in_features, out_features, bias=bias)
    if kind == "monarch":
        return MonarchLinear(in_features, out_features, nblocks, bias=bias)
    if kind == "blockdiag":
        return BlockdiagLinear(in_features, out_features, nblocks, bias=bias)
    raise ValueError(f"linear kind must be one of {LINEAR_KINDS}, got {kind!r}")


def features_first(layer: nn.Module, x_t: torch.Tensor) -> torch.Tensor:
    """A :func:`make_linear` layer applied features first: ``x_t: (in, N)`` → ``(out, N)``.

    Equals ``layer(x_t.T).T``. Every kind reads ``x_t`` where it lies and writes a
    contiguous result, so channel ranges of the output (a GLU's gate and value, the
    mixer's ``x1, x2, v``) are contiguous and no transposing copy is made: dense and
    block-diagonal layers as one matmul, a Monarch layer through its feature-major
    multiply (:meth:`~structured.layers.MonarchLinear.forward_features_first`).
    """
    if isinstance(layer, BlockdiagLinear | MonarchLinear):
        return layer.forward_features_first(x_t)
    if isinstance(layer, nn.Linear):
        if layer.bias is None:
            return torch.mm(layer.weight, x_t)
        return torch.addmm(layer.bias[:, None], layer.weight, x_t)
    return layer(x_t.T).T


class Sine(nn.Module):
    """``sin(w · x)`` with a learnable frequency per feature (Hyena/M2 filter activation)."""

    def __init__(self, features: int, freq: float = 1.0):
        super().__init__()
        self.freq = nn.Parameter(torch.full((features,), float(freq)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class ImplicitFilter(nn.Module):
    """Implicit long-convolution filter ``k: (channels, length)``.

    ``z(t) = [t/L, cos(2π f t/L), sin(2π f t/L)]`` for ``f = 1 … bands`` → Linear → Sine →
    Linear → Sine → Linear(channels) → · ``exp(−α_c t/L)``, with decay rates ``α_c`` spread
    between ``−log(target)/slow`` and ``−log(target)/fast`` across channels (the filter has
    decayed to ``target`` at ``fast``/``slow`` fractions of the sequence).
    """

    def __init__(self, channels: int, *, order: int = 32, bands: int = 4,
                 fast_decay: float = 0.3, slow_decay: float = 1.5, target: float = 1e-2):
        super().__init__()
        self.bands = bands
        self.mlp = nn.Sequential(
            nn.Linear(1 + 2 * bands, order), Sine(order),
            nn.Linear(order, order), Sine(order),
            nn.Linear(order, channels, bias=False),
        )
        rates = torch.linspace(math.log(target) / slow_decay, math.log(target) / fast_decay,
                               channels).abs()
        self.register_buffer("decay_rates", rates, persistent=False)

    def forward(self, length: int) -> torch.Tensor:
        """The filter taps for a sequence of ``length``: ``(channels, length)``."""
        dtype = self.mlp[0].weight.dtype
        device = self.mlp[0].weight.device
        t = torch.arange(length, dtype=dtype, device=device) / length            # (L,)
        freqs = torch.arange(1, self.bands + 1, dtype=dtype, device=device)      # (F,)
        angle = 2 * math.pi * t[:, None] * freqs[None, :]                         # (L, F)
        z = torch.cat([t[:, None], torch.cos(angle), torch.sin(angle)], dim=-1)   # (L, 1+2F)
        k = self.mlp(z)                                                           # (L, C)
        decay = torch.exp(-self.decay_rates.to(dtype)[None, :] * t[:, None])      # (L, C)
        return (k * decay).transpose(0, 1)


class SequenceMixer(nn.Module):
    """M2 gated long-convolution sequence mixer: ``(B, L, d) → (B, L, d)``.

    ``causal=True``: output ``t`` depends only on inputs ``0 … t`` (GPT-style).
    ``causal=False``: forward + flipped reverse filter, a ``2L``-tap filter (BERT-style).
    """

    def __init__(self, d_model: int, *, causal: bool, filter_order: int = 32,
                 short_kernel: int = 3):
        super().__init__()
        self.d_model = d_model
        self.causal = causal
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.short_conv = nn.Conv1d(3 * d_model, 3 * d_model, short_kernel,
                                    groups=3 * d_model, padding=short_kernel - 1)
        self.filter = ImplicitFilter(d_model, order=filter_order)
        self.filter_rev = None if causal else ImplicitFilter(d_model, order=filter_order)
        self.skip = nn.Parameter(torch.randn(d_model) * 0.02)
        self.out_proj = nn.Linear(d_model, d_model)
        self._filter_cache: dict[tuple, torch.Tensor] | None = None  # see cached_filters

    def long_filter(self, length: int) -> torch.Tensor:
        """Taps ``(d, L)`` (causal) or ``(d, 2L)``: forward taps then flipped reverse taps.

        In the ``2L`` layout tap ``L + j`` multiplies input ``s = t + L − j``, so the
        reverse filter's tap ``m`` (at index ``2L − 1 − m``) reaches ``m + 1`` steps ahead.

        Inside :func:`cached_filters` and without autograd, the taps of the previous call
        are returned again while the length, dtype, device, autocast state and parameter
        versions are the same (a shared tensor: do not modify it in place); otherwise,
        and always outside the block, they are computed afresh.
        """
        if self._filter_cache is None or torch.is_grad_enabled():
            return self._compute_long_filter(length)
        params = self._filter_parameters()
        device = params[0].device.type
        autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        key = (length, autocast, params[0].dtype, params[0].device,
               tuple(p._version for p in params))
        if key not in self._filter_cache:
            self._filter_cache.clear()  # one entry: stale versions are never asked again
            self._filter_cache[key] = self._compute_long_filter(length)
        return self._filter_cache[key]

    def _filter_parameters(self) -> list[torch.Tensor]:
        filters = [self.filter] if self.filter_rev is None else [self.filter, self.filter_rev]
        return [p for f in filters for p in f.parameters()]

    def _compute_long_filter(self, length: int) -> torch.Tensor:
        k = self.filter(length)
        if self.filter_rev is None:
            return k
        return torch.cat([k, self.filter_rev(length).flip(-1)], dim=-1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if u.ndim != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"u must be (batch, seq, {self.d_model}), got {tuple(u.shape)}")
        batch, length, _ = u.shape
        z = features_first(self.in_proj, u.reshape(-1, self.d_model).T)     # (3d, B·L)
        z = z.view(-1, batch, length).transpose(0, 1).contiguous()       # (B, 3d, L)
        z = self.short_conv(z)[..., :length]                      # causal depthwise conv
        x1, x2, v = z.split(self.d_model, dim=1)                  # (B, d, L) each
        v = v * x1
        k = self.long_filter(length).to(v.dtype)
        conv = kernels.causal_long_conv(v, k) if self.causal else kernels.long_conv(v, k)
        y = torch.addcmul(conv, self.skip.to(v.dtype)[:, None], v) * x2
        return self.out_proj(y.transpose(1, 2))


@contextlib.contextmanager
def cached_filters(model: nn.Module) -> Iterator[nn.Module]:
    """Inference block: every :class:`SequenceMixer` in ``model`` reuses its filter taps.

    The implicit filter is a function of its parameters and the length alone, so at
    inference (no autograd) computing it once per length is exact; ``studies.m2_lm``
    prints the forward speed-up this gives. The cache is keyed on the parameters'
    version counters, so in-place updates (optimizer steps, ``load_state_dict``) inside
    the block invalidate it; a write through ``.data`` bypasses the counters and is not
    seen. The cache is dropped on exit.
    """
    mixers = [m for m in model.modules() if isinstance(m, SequenceMixer)]
    for mixer in mixers:
        mixer._filter_cache = {}
    try:
        yield model
    finally:
        for mixer in mixers:
            mixer._filter_cache = None


class GLUMixer(nn.Module):
    """Dimension mixer ``(…, d) → (…, d)``: ``down(gelu(gate(u)) · up(u))``.

    ``linear`` picks Monarch, block-diagonal or dense projections (:func:`make_linear`).
    Tokens go through in chunks of ``chunk_rows``, features first (:func:`features_first`):
    the gate and value halves are then contiguous, and the ``2·hidden``-wide intermediate
    of one chunk stays in cache instead of streaming a ``(tokens, 2·hidden)`` buffer
    through memory.
    """

    def __init__(self, d_model: int, hidden: int, *, linear: str = "monarch",
                 nblocks: int = 4, chunk_rows: int = 512):
        super().__init__()
        self.hidden = hidden
        self.chunk_rows = chunk_rows
        self.up = make_linear(linear, d_model, 2 * hidden, nblocks=nblocks)
        self.down = make_linear(linear, hidden, d_model, nblocks=nblocks)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``u: (..., d)`` → ``(..., d)``, same dtype."""
        rows = u.reshape(-1, u.shape[-1])
        chunks = [self._features_first(rows[start: start + self.chunk_rows].T).T
                  for start in range(0, rows.shape[0], self.chunk_rows)]
        return torch.cat(chunks).reshape(u.shape)

    def _features_first(self, x_t: torch.Tensor) -> torch.Tensor:
        """``x_t: (d, N)`` → ``(d, N)``."""
        gate, value = features_first(self.up, x_t).split(self.hidden)       # (hidden, N)
        return features_first(self.down, F.gelu(gate) * value)
