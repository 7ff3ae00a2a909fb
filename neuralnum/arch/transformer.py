"""Softmax Transformer baseline: GPT-2-style pre-LayerNorm blocks with torch SDPA.

``tokens: (B, L, d_model)`` → ``in_proj`` to ``width`` channels + learned positional
embedding ``(seq_len, width)`` → ``n_layers`` blocks::

    h = h + Attn(LN(h))        softmax attention, n_heads heads (SDPA; causal by default)
    h = h + MLP(LN(h))         Linear(width, 4·width) → GELU → Linear(4·width, width)

→ final LayerNorm → ``out_proj``; the output is ``tokens + out_proj(...)`` (same residual
convention as every :class:`~neuralnum.arch.base.TokenModel` with projections).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from neuralnum.arch.base import TokenModel, check_positive_int
from neuralnum.arch.linear_attention import Mlp

__all__ = ["SoftmaxBlock", "Transformer"]


class SoftmaxBlock(nn.Module):
    """One pre-LN block: softmax self-attention and an MLP, both residual."""

    def __init__(self, width: int, *, n_heads: int, causal: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        self.ln1 = nn.LayerNorm(width, dtype=dtype)
        self.qkv = nn.Linear(width, 3 * width, dtype=dtype)
        self.proj = nn.Linear(width, width, dtype=dtype)
        self.ln2 = nn.LayerNorm(width, dtype=dtype)
        self.mlp = Mlp(width, dtype=dtype)

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        batch, length, width = h.shape
        q, k, v = self.qkv(h).view(batch, length, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(a.transpose(1, 2).reshape(batch, length, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attention(self.ln1(h))
        return h + self.mlp(self.ln2(h))


class Transformer(TokenModel):
    """GPT-2-style softmax Transformer on token sequences (see module docstring).

    Options: ``width`` (default ``d_model``), ``n_heads`` (default 1; must divide
    ``width``), ``causal`` (default True).
    """

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        *,
        seq_len: int,
        dtype: torch.dtype = torch.float32,
        width: int | None = None,
        n_heads: int = 1,
        causal: bool = True,
    ) -> None:
        super().__init__(d_model, n_layers, seq_len=seq_len, dtype=dtype, width=width)
        check_positive_int(n_heads, "n_heads")
        if self.width % n_heads:
            raise ValueError(f"width={self.width} is not divisible by n_heads={n_heads}")
        self.causal = bool(causal)
        self.pos = nn.Parameter(0.02 * torch.randn(self.seq_len, self.width, dtype=self.dtype))
        self.blocks = nn.ModuleList(
            SoftmaxBlock(self.width, n_heads=n_heads, causal=self.causal, dtype=self.dtype)
            for _ in range(self.n_layers)
        )
        self.ln_f = nn.LayerNorm(self.width, dtype=self.dtype)
        self.projections(always=True)

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.pos[: h.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.ln_f(h)
