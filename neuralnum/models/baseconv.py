"""BaseConv: gated long convolutions, a degree-2 polynomial of the input per layer.

One layer on ``u: (B, L, width)``::

    z = W₂u                                (optionally z ← short_conv(z), depthwise causal)
    y = (W₁u + c₁) ⊙ (k ∗ z + c₂)
    out = u + y

``k: (width, seq_len)`` is a learnable causal filter per channel, ``(k ∗ z)[t] =
Σ_{s≤t} k[t−s] z[s]`` (a sequence of length ``L < seq_len`` uses the first ``L`` taps).
Short sequences (``L <= fft_threshold``) are convolved directly through the Toeplitz
matrix of ``k`` — every product a single rounding, zeros multiplied exactly — and long
ones by FFT through :func:`kernels.long_conv` (normwise error ~ ``u log L``). There is no
non-linearity: ``depth`` layers compute a polynomial of degree ``2^depth`` in the tokens.

Initialisation (``init``): ``"random"`` — ``nn.Linear`` defaults for ``W₁, c₁, W₂`` and
filters ``randn/√seq_len``; ``"delta_sum"`` — every layer starts *linear* (``W₁ = 0``, so
the gate is its bias ``c₁``), the filters of all layers but the last are a delta
(``k[0] = 1``: a position-wise layer) and the last layer's filter is the causal mean
(``k[t] = 1/seq_len``: a sum over positions), each plus ``0.01·randn/√seq_len``; ``c₁``
and ``W₂`` keep their random defaults. This is the shape of a computation "form
products at each position, then sum them" (the GD gradient ``Σᵢ aᵢ(aᵢᵀx − bᵢ)``), with
no channel routing given, so learning the GD step from scratch starts near it; how much
it helps is what ``studies/recipe.py`` measures (docs/results.md, "recipe").
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from kernels import causal_conv_direct, long_conv
from neuralnum.core.validation import check_choice, check_nonnegative_int, check_positive_int
from neuralnum.models.base import TokenConfig, TokenModel

__all__ = ["BaseConv", "BaseConvConfig", "BaseConvLayer"]

CONV_MODES = ("auto", "direct", "fft")
INITS = ("random", "delta_sum")
_FILTER_NOISE = 0.01  # the scale of the random part of a "delta_sum" filter


@dataclasses.dataclass(frozen=True, kw_only=True)
class BaseConvConfig(TokenConfig):
    """:class:`BaseConv`: ``short_conv`` (kernel size of a depthwise causal short conv
    before the long conv; 0 = none), ``conv_mode`` (``"auto"`` = direct for
    ``L <= fft_threshold``, else FFT; or ``"direct"`` / ``"fft"``), ``init``
    (``"random"`` or ``"delta_sum"``, see the module docstring)."""

    name = "baseconv"
    short_conv: int = 0
    conv_mode: str = "auto"
    fft_threshold: int = 128
    init: str = "random"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_nonnegative_int(self.short_conv, "short_conv")
        check_choice(self.conv_mode, "conv_mode", CONV_MODES)
        check_positive_int(self.fft_threshold, "fft_threshold")
        check_choice(self.init, "init", INITS)


class BaseConvLayer(nn.Module):
    """``u + (W₁u + c₁) ⊙ (k ∗ (W₂u) + c₂)`` on ``(B, L, width)``; see module docstring."""

    def __init__(
        self,
        width: int,
        seq_len: int,
        *,
        dtype: torch.dtype,
        short_conv: int = 0,
        conv_mode: str = "auto",
        fft_threshold: int = 128,
    ) -> None:
        super().__init__()
        self.conv_mode, self.fft_threshold = conv_mode, fft_threshold
        self.gate = nn.Linear(width, width, dtype=dtype)  # W₁, c₁
        self.proj = nn.Linear(width, width, bias=False, dtype=dtype)  # W₂
        self.filter = nn.Parameter(torch.randn(width, seq_len, dtype=dtype) / math.sqrt(seq_len))
        self.conv_bias = nn.Parameter(torch.zeros(width, dtype=dtype))  # c₂
        self.short = (
            nn.Conv1d(width, width, short_conv, groups=width, padding=short_conv - 1,
                      dtype=dtype)
            if short_conv else None
        )

    def long_conv(self, z: torch.Tensor) -> torch.Tensor:
        """Causal long convolution of ``z: (B, L, width)`` with the layer's filter."""
        length = z.shape[1]
        k = self.filter[:, :length]
        fft = self.conv_mode == "fft" or (
            self.conv_mode == "auto" and length > self.fft_threshold)
        conv = long_conv if fft else causal_conv_direct
        return conv(z.transpose(1, 2), k).transpose(1, 2)

    def factors(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The gate ``W₁u + c₁`` and the convolution ``k ∗ (W₂u) + c₂``, each ``(B, L,
        width)``."""
        z = self.proj(u)
        if self.short is not None:
            z = self.short(z.transpose(1, 2))[..., : u.shape[1]].transpose(1, 2)
        return self.gate(u), self.long_conv(z) + self.conv_bias

    def increment(self, u: torch.Tensor) -> torch.Tensor:
        """What the layer adds to ``u``: ``(W₁u + c₁) ⊙ (k ∗ (W₂u) + c₂)``."""
        gate, conv = self.factors(u)
        return gate * conv

    @torch.no_grad()
    def zero_factor(self, channel: int, factor: str) -> None:
        """Set one channel's ``"gate"`` (its row of ``W₁`` and ``c₁``) or ``"conv"`` (its
        row of ``W₂``, its filter and ``c₂``: zero whatever the short conv does) to exact
        zeros, so that its increment is exactly zero."""
        check_choice(factor, "factor", ("gate", "conv"))
        params = ((self.gate.weight, self.gate.bias) if factor == "gate"
                  else (self.proj.weight, self.filter, self.conv_bias))
        for param in params:
            param[channel] = 0

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u + self.increment(u)


class BaseConv(TokenModel):
    """A stack of ``n_layers`` :class:`BaseConvLayer` (no MLP, no normalisation).

    ``tokens: (B, L, d_model)`` → ``(B, L, d_model)``, ``L <= seq_len``, causal; options
    in :class:`BaseConvConfig` (the learner's default init for BaseConv is
    ``"delta_sum"``).
    """

    config: BaseConvConfig

    def build(self, config: BaseConvConfig) -> None:
        self.layers = nn.ModuleList(
            BaseConvLayer(self.width, self.seq_len, dtype=self.dtype,
                          short_conv=config.short_conv, conv_mode=config.conv_mode,
                          fft_threshold=config.fft_threshold)
            for _ in range(self.n_layers)
        )
        self.projections()
        if config.init == "delta_sum":
            self._init_delta_sum()

    @torch.no_grad()
    def snap_dead_channels(self, tokens: torch.Tensor, rtol: float = 1e-4,
                           ) -> list[tuple[int, int, str]]:
        """Zero, exactly, the smaller factor of every channel whose increment is negligible;
        returns ``(layer, channel, "gate" | "conv")`` per channel zeroed.

        ``tokens: (B, L, d_model)`` in the model's dtype. A channel's increment ``(W₁u +
        c₁) ⊙ (k ∗ W₂u + c₂)`` counts as negligible when its RMS over ``tokens`` is below
        ``rtol`` × the largest of its layer. Training drives both factors of such a
        channel towards zero together (the exact GD construction has 16 of 21 channels per
        layer at exactly zero in both). There the zero-loss weights are two branches, gate
        ≡ 0 or convolution ≡ 0, which cross where both vanish: the residual is quadratic
        in the weights at the crossing and Gauss–Newton converges only linearly. Zeroing
        the smaller factor puts the channel on one branch, where the other factor is
        non-zero and the problem regular (:func:`neuralnum.training.finisher.finish_lm` does this
        before its first iteration, on its training problems). Later layers see the
        snapped stream.
        """
        if not 0 < rtol < 1:
            raise ValueError(f"rtol must be in (0, 1), got {rtol}")
        h = self.check_input(tokens)
        if self.projected:
            h = self.in_proj(h)
        snapped = []
        for index, layer in enumerate(self.layers):
            gate, conv = layer.factors(h)
            rms = [t.pow(2).mean(dim=(0, 1)).sqrt() for t in (gate * conv, gate, conv)]
            increment, gate_rms, conv_rms = rms
            for channel in torch.nonzero(increment < rtol * increment.max()).flatten().tolist():
                factor = "gate" if gate_rms[channel] <= conv_rms[channel] else "conv"
                layer.zero_factor(channel, factor)
                snapped.append((index, channel, factor))
            h = layer(h)
        return snapped

    @torch.no_grad()
    def _init_delta_sum(self) -> None:
        """Linear layers (``W₁ = 0``), delta filters, a causal-mean filter in the last layer;
        every filter plus ``0.01·randn/√seq_len`` (its random draw, scaled)."""
        for i, layer in enumerate(self.layers):
            layer.gate.weight.zero_()
            layer.filter.mul_(_FILTER_NOISE)
            if i < self.n_layers - 1:
                layer.filter[:, 0] += 1
            else:
                layer.filter += 1 / self.seq_len
