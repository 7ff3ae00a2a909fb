"""Softmax Transformer baseline: GPT-2-style pre-LayerNorm blocks with torch SDPA.

``tokens: (B, L, d_model)`` → ``in_proj`` to ``width`` channels + learned positional
embedding ``(seq_len, width)`` → ``n_layers`` blocks::

    h = h + Attn(LN(h))        softmax attention, n_heads heads (SDPA; causal by default)
    h = h + MLP(LN(h))         Linear(width, 4·width) → GELU → Linear(4·width, width)

→ final LayerNorm → ``out_proj``; the output is ``tokens + out_proj(...)`` (same residual
convention as every :class:`~neuralnum.models.base.TokenModel` with projections).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn import functional as F

from neuralnum.models.base import TokenConfig, TokenModel
from neuralnum.models.linear_attention import Mlp, check_heads

__all__ = ["SoftmaxBlock", "Transformer", "TransformerConfig"]


class SoftmaxBlock(nn.Module):
    """One pre-LN block on ``(B, L, width)``: softmax self-attention (``n_heads`` heads,
    torch SDPA) and an MLP (``hidden`` channels, default ``4·width``), both residual.

    The one softmax attention block of the project: the Transformer baselines of
    :mod:`structured.models` use it too.
    """

    def __init__(self, width: int, *, n_heads: int, causal: bool, hidden: int | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check_heads(width, n_heads)
        self.n_heads, self.causal = n_heads, causal
        self.ln1 = nn.LayerNorm(width, dtype=dtype)
        self.qkv = nn.Linear(width, 3 * width, dtype=dtype)
        self.proj = nn.Linear(width, width, dtype=dtype)
        self.ln2 = nn.LayerNorm(width, dtype=dtype)
        self.mlp = Mlp(width, hidden, dtype=dtype)

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention ``(B, L, width)`` → ``(B, L, width)``."""
        batch, length, width = h.shape
        q, k, v = self.qkv(h).view(batch, length, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(a.transpose(1, 2).reshape(batch, length, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attention(self.ln1(h))
        return h + self.mlp(self.ln2(h))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig(TokenConfig):
    """:class:`Transformer`: ``n_heads`` (default 1; must divide the width), ``causal``
    (default True)."""

    name = "transformer"
    n_heads: int = 1
    causal: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_heads(self.inner_width, self.n_heads)


class Transformer(TokenModel):
    """GPT-2-style softmax Transformer on token sequences (see module docstring); options
    in :class:`TransformerConfig`."""

    config: TransformerConfig

    def build(self, config: TransformerConfig) -> None:
        self.causal = bool(config.causal)
        self.pos = nn.Parameter(0.02 * torch.randn(self.seq_len, self.width, dtype=self.dtype))
        self.blocks = nn.ModuleList(
            SoftmaxBlock(self.width, n_heads=config.n_heads, causal=self.causal,
                         dtype=self.dtype)
            for _ in range(self.n_layers)
        )
        self.ln_f = nn.LayerNorm(self.width, dtype=self.dtype)
        self.projections(always=True)

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.pos[: h.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.ln_f(h)
