"""Sequence models on least-squares token sequences, and exact GD constructions.

Every model maps tokens ``(B, L, d_model)`` → ``(B, L, d_model)`` (``L <= seq_len``;
``d_model`` = :class:`neuralnum.tokens.TokenLayout` width) and follows the project's
model convention (:mod:`neuralnum.arch.base`)::

    config = BaseConvConfig(d_model=11, n_layers=3, seq_len=20, init="delta_sum")
    model = BaseConv(config, dtype=torch.float64, generator=make_generator(0))
    model = build_model(config, dtype=torch.float64, generator=make_generator(0))  # same
    count_parameters(model)

:func:`arch_config` makes a config from an architecture name (``"baseconv"``,
``"linear_attention"``, ``"transformer"``). The blocks here (e.g. the softmax
:class:`~neuralnum.arch.transformer.SoftmaxBlock`) are shared with ``structured``.
"""

from __future__ import annotations

from typing import Any

import torch

from neuralnum.arch.base import Config, TokenConfig, TokenModel, count_parameters, drawing_from
from neuralnum.arch.baseconv import BaseConv, BaseConvConfig
from neuralnum.arch.linear_attention import LinearAttention, LinearAttentionConfig
from neuralnum.arch.transformer import SoftmaxBlock, Transformer, TransformerConfig

__all__ = ["CONFIGS", "MODELS", "BaseConv", "BaseConvConfig", "Config", "LinearAttention",
           "LinearAttentionConfig", "SoftmaxBlock", "TokenConfig", "TokenModel",
           "Transformer", "TransformerConfig", "arch_config", "build_model",
           "count_parameters", "drawing_from"]

#: Architecture name → (config class, model class).
_ARCHS: dict[str, tuple[type[TokenConfig], type[TokenModel]]] = {
    "baseconv": (BaseConvConfig, BaseConv),
    "linear_attention": (LinearAttentionConfig, LinearAttention),
    "transformer": (TransformerConfig, Transformer),
}
CONFIGS: dict[str, type[TokenConfig]] = {name: c for name, (c, _) in _ARCHS.items()}
MODELS: dict[str, type[TokenModel]] = {name: m for name, (_, m) in _ARCHS.items()}


def arch_config(name: str, **fields: Any) -> TokenConfig:
    """The config of architecture ``name`` with ``fields`` (``d_model``, ``n_layers``,
    ``seq_len`` and options such as ``width``, ``n_heads``); ``ValueError`` for an
    unknown name, ``TypeError`` for a field the architecture does not have."""
    if name not in CONFIGS:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(CONFIGS)}")
    return CONFIGS[name](**fields)


def build_model(
    config: TokenConfig,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    generator: torch.Generator | None = None,
) -> TokenModel:
    """The model ``config`` describes: ``MODELS[config.name](config, dtype=..., ...)``."""
    if not isinstance(config, TokenConfig) or config.name not in MODELS:
        raise TypeError(f"config must be one of {[c.__name__ for c in CONFIGS.values()]}, "
                        f"got {type(config).__name__}")
    return MODELS[config.name](config, dtype=dtype, device=device, generator=generator)
