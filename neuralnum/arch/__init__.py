"""Sequence models on least-squares token sequences, and exact GD constructions.

Every model maps tokens ``(B, L, d_model)`` → ``(B, L, d_model)`` (``L <= seq_len``;
``d_model`` = :class:`neuralnum.tokens.TokenLayout` width), has the constructor
``(d_model, n_layers, *, seq_len, dtype=torch.float32, ...)`` and ``num_parameters()``.
:func:`build_model` picks one by name.
"""

from __future__ import annotations

from typing import Any

import torch

from neuralnum.arch.base import TokenModel
from neuralnum.arch.baseconv import BaseConv
from neuralnum.arch.linear_attention import LinearAttention
from neuralnum.arch.transformer import Transformer

__all__ = ["MODELS", "BaseConv", "LinearAttention", "TokenModel", "Transformer",
           "build_model"]

MODELS: dict[str, type[TokenModel]] = {
    "baseconv": BaseConv,
    "linear_attention": LinearAttention,
    "transformer": Transformer,
}


def build_model(
    name: str,
    d_model: int,
    n_layers: int,
    seq_len: int,
    dtype: torch.dtype = torch.float32,
    **options: Any,
) -> TokenModel:
    """Build architecture ``name`` (``"baseconv"``, ``"linear_attention"``,
    ``"transformer"``); ``options`` go to its constructor (e.g. ``width``, ``n_heads``)."""
    if name not in MODELS:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](d_model, n_layers, seq_len=seq_len, dtype=dtype, **options)
