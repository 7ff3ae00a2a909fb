"""Linear attention with the identity feature map: a pure polynomial sequence mixer.

One layer on ``u: (B, L, width)`` with ``n_heads`` heads of ``head_dim`` channels::

    Q = W_q u + b_q,  K = W_k u + b_k,  V = W_v u + b_v        (each (B, L, n_heads·head_dim))
    causal:      A_t = Σ_{s≤t} (Q_t · K_s) V_s                  (masked (QKᵀ)V, O(L²))
    non-causal:  A   = Q (Kᵀ V)                                 (O(L·head_dim²))
    out = u + W_o A + b_o            [ + MLP(out) with a GELU hidden layer if mlp=True ]

``W_o`` starts at N(0, 0.02²) and ``b_o`` at 0, so the unnormalised products start small.

No softmax and no normaliser: without the optional MLP every layer is a degree-3
polynomial of its input, so products of token entries are represented exactly.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from neuralnum.core.validation import check_positive_int
from neuralnum.models.base import TokenConfig, TokenModel

__all__ = ["LinearAttention", "LinearAttentionConfig", "LinearAttentionLayer", "Mlp",
           "check_heads"]


def check_heads(width: int, n_heads: object, head_dim: object = None) -> int:
    """Validate ``n_heads`` (and ``head_dim``; ``None``: ``width // n_heads``, which must
    then divide evenly); return the head dimension."""
    check_positive_int(n_heads, "n_heads")
    if head_dim is None:
        if width % n_heads:
            raise ValueError(f"width={width} is not divisible by n_heads={n_heads}")
        return width // n_heads
    return check_positive_int(head_dim, "head_dim")


class Mlp(nn.Module):
    """``Linear(width, hidden) → GELU → Linear(hidden, width)`` (``hidden``: 4·width)."""

    def __init__(self, width: int, hidden: int | None = None, *,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        hidden = 4 * width if hidden is None else hidden
        self.fc = nn.Linear(width, hidden, dtype=dtype)
        self.proj = nn.Linear(hidden, width, dtype=dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(nn.functional.gelu(self.fc(h)))


class LinearAttentionLayer(nn.Module):
    """Residual identity-feature-map linear attention (+ optional residual MLP)."""

    def __init__(
        self, width: int, *, n_heads: int, head_dim: int, causal: bool, mlp: bool,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.causal = n_heads, head_dim, causal
        inner = n_heads * head_dim
        self.q = nn.Linear(width, inner, dtype=dtype)
        self.k = nn.Linear(width, inner, dtype=dtype)
        self.v = nn.Linear(width, inner, dtype=dtype)
        self.out = nn.Linear(inner, width, dtype=dtype)
        with torch.no_grad():  # small residual branch at init: no softmax/normaliser
            self.out.weight.normal_(0.0, 0.02)
            self.out.bias.zero_()
        self.mlp = Mlp(width, dtype=dtype) if mlp else None

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        batch, length, _ = t.shape
        return t.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)

    def attend(self, u: torch.Tensor) -> torch.Tensor:
        """The attention sum ``(B, L, n_heads·head_dim)`` before ``W_o``."""
        q, k, v = self._heads(self.q(u)), self._heads(self.k(u)), self._heads(self.v(u))
        if self.causal:
            scores = q @ k.transpose(-1, -2)  # (B, h, L, L)
            scores = scores * torch.ones_like(scores[0, 0]).tril()
            a = scores @ v
        else:
            a = q @ (k.transpose(-1, -2) @ v)
        return a.transpose(1, 2).reshape(u.shape[0], u.shape[1], -1)

    def increment(self, u: torch.Tensor) -> torch.Tensor:
        """What the layer adds to ``u``: ``W_o A + b_o`` [``+ MLP(u + W_o A + b_o)``]."""
        a = self.out(self.attend(u))
        return a if self.mlp is None else a + self.mlp(u + a)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u + self.increment(u)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinearAttentionConfig(TokenConfig):
    """:class:`LinearAttention`: ``n_heads`` (default 1), ``head_dim`` (default
    ``width // n_heads``), ``causal`` (default True), ``mlp`` (default False: a pure
    polynomial)."""

    name = "linear_attention"
    n_heads: int = 1
    head_dim: int | None = None
    causal: bool = True
    mlp: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_heads(self.inner_width, self.n_heads, self.head_dim)


class LinearAttention(TokenModel):
    """A stack of ``n_layers`` :class:`LinearAttentionLayer`.

    ``tokens: (B, L, d_model)`` → ``(B, L, d_model)``, ``L <= seq_len``; options in
    :class:`LinearAttentionConfig`.
    """

    config: LinearAttentionConfig

    def build(self, config: LinearAttentionConfig) -> None:
        head_dim = check_heads(self.width, config.n_heads, config.head_dim)
        self.causal = bool(config.causal)
        self.layers = nn.ModuleList(
            LinearAttentionLayer(self.width, n_heads=config.n_heads, head_dim=head_dim,
                                 causal=self.causal, mlp=config.mlp, dtype=self.dtype)
            for _ in range(self.n_layers)
        )
        self.projections()
