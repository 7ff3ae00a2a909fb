"""Hand-set weights: polynomial models that compute a GD step exactly, and a softmax
attention that can only approximate a product.

Both GD constructions read the tokens of :class:`neuralnum.models.tokens.TokenLayout` for
problems ``A: (B, n, d)``, ``b: (B, n)`` with iterate ``x: (B, d)`` and write

    x⁺ = x − η Aᵀ(Ax − b)

into the ``x`` slot of the last token (``layout.read_iterate``). ``η`` is a fixed float
baked into the weights, so the model equals ``GDStep(FixedStep(η))`` (a per-problem rule
such as ``OptimalStep`` is not a fixed weight). The returned models carry their layout
(:meth:`~neuralnum.models.base.TokenModel.require_layout`): tokens of another ``n``,
width, with non-zero scratch channels, a non-broadcast ``x`` or non-finite values are
rejected with a ``ValueError``.

Rounding: every product is formed once and every sum runs over at most ``n`` (positions)
or ``d + 1`` (channels) terms; the other weights are exact zeros and ones. So each output
entry obeys the classical dot-product bound
``|x⁺_model − x⁺| ≤ γ_{n+d+3} · (|x| + η |A|ᵀ(|A||x| + |b|))`` with ``γ_k = k u/(1 − k u)``
and ``u`` the unit roundoff of the dtype (``tests/neuralnum/models/test_construct.py`` checks it).

:class:`SoftmaxProduct` shows the contrast: softmax attention only reaches a
product through ``exp``'s small-argument expansion, with a truncation error ``O(ε²)``
against a rounding error ``O(u/ε)``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from neuralnum.core.validation import (
    check_dtype,
    check_positive_float,
    check_positive_int,
    check_problem,
)
from neuralnum.models.base import TokenModel
from neuralnum.models.baseconv import BaseConv, BaseConvConfig
from neuralnum.models.linear_attention import LinearAttention, LinearAttentionConfig
from neuralnum.models.tokens import TokenLayout

__all__ = [
    "SoftmaxProduct",
    "apply_gd_model",
    "construct_baseconv_gd",
    "construct_linear_attention_gd",
    "gd_rounding_bound",
]


def _zero_(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False).zero_()


def construct_baseconv_gd(
    n: int, d: int, eta: float, *, dtype: torch.dtype = torch.float32
) -> BaseConv:
    """A 3-layer :class:`BaseConv` of width ``4d + 1`` computing one GD step.

    Layout: ``TokenLayout(n, d, width=4d+1)``; channels ``a (d) | b | x (d) | P (d) |
    G (d)`` with scratch ``P`` and ``G`` zero on input. Every filter is a delta unless
    stated; all weights not named are zero. Layer ``l`` adds
    ``y = (W₁u + c₁) ⊙ (k ∗ W₂u + c₂)`` to the residual stream:

    1. ``P ← a ⊙ x``: gate ``W₁: a → P``, projection ``W₂: x → P``.
    2. ``G ← a · (aᵀx − b)``: gate ``W₁: a → G`` (per channel), projection ``W₂`` sums
       ``Σ_j P_j − b`` into every ``G`` channel — the residual ``r_i = a_iᵀx − b_i``.
    3. ``x ← x − η Σ_{s≤t} G_s``: gate constant ``c₁ = −η`` on ``x``, projection
       ``W₂: G → x``, all-ones causal filter — at the last token the sum is
       ``Aᵀ(Ax − b)``.

    The long convolutions run directly (``conv_mode="direct"``) so the position sum in
    layer 3 is an exact-zero-padded dot product. Returns a model with
    ``layout = TokenLayout(n, d, 4d+1)`` required; parameters are frozen.
    """
    n, d = check_positive_int(n, "n"), check_positive_int(d, "d")
    eta, dtype = check_positive_float(eta, "eta"), check_dtype(dtype)
    layout = TokenLayout(n, d, width=4 * d + 1)
    a = torch.arange(d)
    x = a + d + 1
    p = a + 2 * d + 1
    g = a + 3 * d + 1
    config = BaseConvConfig(d_model=layout.width, n_layers=3, seq_len=n, conv_mode="direct")
    model = BaseConv(config, dtype=dtype)
    _zero_(model)
    first, second, third = model.layers
    with torch.no_grad():
        first.gate.weight[p, a] = 1
        first.proj.weight[p, x] = 1
        first.filter[p, 0] = 1
        second.gate.weight[g, a] = 1
        second.proj.weight[g.unsqueeze(1), p.unsqueeze(0)] = 1
        second.proj.weight[g, d] = -1
        second.filter[g, 0] = 1
        third.gate.bias[x] = -eta
        third.proj.weight[x, g] = 1
        third.filter[x] = 1
    return model.require_layout(layout)


def construct_linear_attention_gd(
    n: int,
    d: int,
    eta: float,
    *,
    steps: int = 1,
    causal: bool = True,
    dtype: torch.dtype = torch.float32,
) -> LinearAttention:
    """A linear-attention model of width ``2d + 1``: one layer per GD step.

    Layout ``TokenLayout(n, d)`` (no scratch). In each layer (one head, ``head_dim = d+1``)
    ``q = [x, −1]`` (``b_q`` supplies the −1), ``k_s = [a_s, b_s]``, ``v_s = [a_s, 0]``,
    so ``Σ_s (q·k_s) v_s = Σ_s (a_sᵀx − b_s) a_s = Aᵀ(Ax − b)``, and ``W_o`` writes
    ``−η`` times it into the ``x`` slot. Causal: the last token sums all ``n`` positions
    (the other tokens see prefixes), so only ``steps=1`` is exact. Non-causal: every token
    gets the full gradient, the layout stays valid, and ``steps`` layers compute ``steps``
    GD steps. Parameters are frozen.
    """
    n, d = check_positive_int(n, "n"), check_positive_int(d, "d")
    steps = check_positive_int(steps, "steps")
    eta, dtype = check_positive_float(eta, "eta"), check_dtype(dtype)
    if causal and steps > 1:
        raise ValueError("steps > 1 needs causal=False: a causal layer leaves partial sums "
                         "in the x slots of all but the last token")
    layout = TokenLayout(n, d)
    a = torch.arange(d)
    x = a + d + 1
    config = LinearAttentionConfig(d_model=layout.width, n_layers=steps, seq_len=n,
                                   head_dim=d + 1, causal=causal)
    model = LinearAttention(config, dtype=dtype)
    _zero_(model)
    with torch.no_grad():
        for layer in model.layers:
            layer.q.weight[a, x] = 1
            layer.q.bias[d] = -1
            layer.k.weight[a, a] = 1
            layer.k.weight[d, d] = 1
            layer.v.weight[a, a] = 1
            layer.out.weight[x, a] = -eta
    return model.require_layout(layout)


def apply_gd_model(
    model: TokenModel, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """Run a constructed model on ``(A, b, x)``: encode with its layout, read ``x⁺: (B, d)``."""
    if model.layout is None:
        raise ValueError("model has no required layout; build it with construct_*_gd")
    return model.layout.read_iterate(model(model.layout.encode(A, b, x)))


def gd_rounding_bound(
    A: torch.Tensor, b: torch.Tensor, x: torch.Tensor, eta: float
) -> torch.Tensor:
    """Componentwise bound ``γ_{n+d+3}(|x| + η|A|ᵀ(|A||x| + |b|))`` on ``|x⁺_model − x⁺|``.

    Shapes as in :func:`apply_gd_model`; returns ``(B, d)`` in ``A``'s dtype.
    """
    _, n, d = check_problem(A, b, x)
    k = (n + d + 3) * torch.finfo(A.dtype).eps / 2
    scale = torch.einsum("bnd,bd->bn", A.abs(), x.abs()) + b.abs()
    return k / (1 - k) * (x.abs() + eta * torch.einsum("bnd,bn->bd", A.abs(), scale))


class SoftmaxProduct(nn.Module):
    """Softmax attention that approximates ``y = u[..., :m] ⊙ u[..., m:]``.

    For every channel pair ``(p, q)`` one query ``p`` attends, with score scale ``ε``, to
    two keys: ``q`` (the token's own entry) and ``0`` (a sink), with values ``±2/ε``::

        y = (2/ε)(σ(εpq) − σ(−εpq)) = (2/ε) tanh(εpq/2) = pq − ε²(pq)³/12 + O(ε⁴)

    The truncation error falls like ``ε²`` while the rounding error of the difference of
    the two attention weights, amplified by ``2/ε``, grows like ``u/ε``: the best error is
    ``O(u^{2/3})``, never ``O(u)``. ``u: (B, L, 2m)`` → ``(B, L, m)``.
    """

    def __init__(self, m: int, eps: float, *, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.m = check_positive_int(m, "m")
        self.eps = check_positive_float(eps, "eps")
        self.dtype = check_dtype(dtype)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if u.ndim != 3 or u.shape[-1] != 2 * self.m or u.dtype != self.dtype:
            raise ValueError(f"u must be (B, L, {2 * self.m}) {self.dtype}, got "
                             f"{tuple(u.shape)} {u.dtype}")
        p, q = u[..., : self.m], u[..., self.m:]
        query = p.reshape(-1, 1, 1, 1)
        keys = torch.stack([q, torch.zeros_like(q)], dim=-1).reshape(-1, 1, 2, 1)
        values = query.new_tensor([2.0, -2.0]).div(self.eps).expand(query.shape[0], 1, 2)
        y = F.scaled_dot_product_attention(query, keys, values.unsqueeze(-1), scale=self.eps)
        return y.reshape(p.shape)

