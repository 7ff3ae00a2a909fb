"""The interface every sequence model of :mod:`neuralnum.arch` shares.

A :class:`TokenModel` maps tokens ``u: (B, L, d_model)`` to outputs ``(B, L, d_model)``
of the same dtype, with ``1 <= L <= seq_len``; ``d_model`` is the token width of
:class:`neuralnum.tokens.TokenLayout`, so the next iterate is read with
``layout.read_iterate(model(tokens))``. Internally a model works at ``width`` channels:
when ``width == d_model`` the layers act on the tokens directly (their residual stream
*is* the output); otherwise a linear ``in_proj`` lifts the tokens to ``width`` channels
and the output is ``u + out_proj(h)``.

Every forward validates its input up front (tensor, dtype equal to the model's, shape,
finite values) and raises ``TypeError``/``ValueError`` naming ``tokens``. A model built
by :mod:`neuralnum.arch.construct` additionally carries the exact
:class:`~neuralnum.tokens.TokenLayout` it was built for (:meth:`TokenModel.require_layout`)
and rejects any other ``n``, width or a malformed encoding.
"""

from __future__ import annotations

import torch
from torch import nn

from neuralnum.tokens import TokenLayout
from neuralnum.validation import check_dtype, check_finite, check_tensor

__all__ = ["TokenModel", "check_positive_int"]


def check_positive_int(value: object, name: str) -> int:
    """``value`` as an ``int`` >= 1, else ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


class TokenModel(nn.Module):
    """Base class: configuration, input checks, optional width projections.

    Subclasses build ``self.layers`` (an ``nn.ModuleList``) after ``super().__init__``,
    call :meth:`projections`, and override :meth:`mix` if they need more than the layers.
    """

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        *,
        seq_len: int,
        dtype: torch.dtype = torch.float32,
        width: int | None = None,
    ) -> None:
        super().__init__()
        self.d_model = check_positive_int(d_model, "d_model")
        self.n_layers = check_positive_int(n_layers, "n_layers")
        self.seq_len = check_positive_int(seq_len, "seq_len")
        self.dtype = check_dtype(dtype)
        self.width = self.d_model if width is None else check_positive_int(width, "width")
        self.layout: TokenLayout | None = None

    def projections(self, always: bool = False) -> None:
        """Create ``in_proj``/``out_proj`` if ``width != d_model`` (or ``always``)."""
        self.projected = always or self.width != self.d_model
        if self.projected:
            self.in_proj = nn.Linear(self.d_model, self.width, dtype=self.dtype)
            self.out_proj = nn.Linear(self.width, self.d_model, dtype=self.dtype)

    def num_parameters(self) -> int:
        """Number of trainable scalars."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def require_layout(self, layout: TokenLayout) -> TokenModel:
        """Accept only tokens encoded by ``layout`` (exact ``n`` and width, zero scratch
        channels, the same ``x`` at every token). Returns ``self``."""
        if layout.width != self.d_model:
            raise ValueError(f"layout width {layout.width} != model d_model {self.d_model}")
        if layout.n > self.seq_len:
            raise ValueError(f"layout n={layout.n} exceeds model seq_len={self.seq_len}")
        self.layout = layout
        return self

    def check_input(self, tokens: object) -> torch.Tensor:
        """Validate ``tokens`` against the model (and its layout, if one is required)."""
        check_tensor(tokens, "tokens", 3)
        if tokens.dtype != self.dtype:
            raise TypeError(f"tokens.dtype {tokens.dtype} differs from the model's {self.dtype}")
        if self.layout is not None:
            return self._check_layout(tokens)
        if tokens.shape[2] != self.d_model:
            raise ValueError(f"tokens must have d_model={self.d_model} channels, got shape "
                             f"{tuple(tokens.shape)}")
        if tokens.shape[1] > self.seq_len:
            raise ValueError(f"tokens have length {tokens.shape[1]} > seq_len={self.seq_len}")
        return check_finite(tokens, "tokens")

    def _check_layout(self, tokens: torch.Tensor) -> torch.Tensor:
        layout = self.layout
        layout.check_tokens(tokens)
        if (tokens[..., layout.scratch_slice] != 0).any():
            raise ValueError("tokens have non-zero scratch channels; encode them with "
                             f"TokenLayout(n={layout.n}, d={layout.d}, width={layout.width})")
        x = tokens[..., layout.x_slice]
        if (x != x[:, :1]).any():
            raise ValueError("tokens carry different iterates x at different positions; "
                             "the layout broadcasts one x to every token")
        return tokens

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        """``(B, L, width)`` → ``(B, L, width)``: by default the residual layers in
        ``self.layers`` applied in order."""
        for layer in self.layers:
            h = layer(h)
        return h

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens: (B, L, d_model)`` → ``(B, L, d_model)``, same dtype."""
        u = self.check_input(tokens)
        if not self.projected:
            return self.mix(u)
        return u + self.out_proj(self.mix(self.in_proj(u)))
