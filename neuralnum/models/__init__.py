"""Models: the token layout, the sequence architectures, their exact GD constructions and
the one registry.

Every token model maps tokens ``(B, L, d_model)`` → ``(B, L, d_model)`` (``L <= seq_len``;
``d_model`` = :class:`~neuralnum.models.tokens.TokenLayout` width) and follows the
project's model convention (:mod:`neuralnum.models.base`)::

    config = BaseConvConfig(d_model=11, n_layers=3, seq_len=20, init="delta_sum")
    model = BaseConv(config, dtype=torch.float64, generator=make_generator(0))
    model = build_model(config, dtype=torch.float64, generator=make_generator(0))  # same
    count_parameters(model)

:func:`arch_config` makes a config from a registered name (:data:`ARCHS`, in
:mod:`neuralnum.models.registry`). The blocks here (e.g. the softmax
:class:`~neuralnum.models.transformer.SoftmaxBlock`) are shared with ``structured``.
"""

from neuralnum.models.axial_baseconv import (
    AxialBaseConv,
    AxialBaseConvConfig,
    AxialGatedConv,
    construct_axial_baseconv_gd,
)
from neuralnum.models.base import (
    Config,
    TokenConfig,
    TokenModel,
    cast_module,
    count_parameters,
    drawing_from,
)
from neuralnum.models.baseconv import BaseConv, BaseConvConfig
from neuralnum.models.construct import (
    SoftmaxProduct,
    apply_gd_model,
    construct_baseconv_gd,
    construct_linear_attention_gd,
    gd_rounding_bound,
)
from neuralnum.models.linear_attention import LinearAttention, LinearAttentionConfig
from neuralnum.models.registry import ARCHS, arch_config, build_model, default_arch, named_arch
from neuralnum.models.tokens import TokenLayout
from neuralnum.models.transformer import SoftmaxBlock, Transformer, TransformerConfig

__all__ = ["ARCHS", "AxialBaseConv", "AxialBaseConvConfig", "AxialGatedConv", "BaseConv",
           "BaseConvConfig", "Config", "LinearAttention", "LinearAttentionConfig",
           "SoftmaxBlock", "SoftmaxProduct", "TokenConfig", "TokenLayout", "TokenModel",
           "Transformer", "TransformerConfig", "apply_gd_model", "arch_config", "build_model",
           "cast_module", "construct_axial_baseconv_gd", "construct_baseconv_gd",
           "construct_linear_attention_gd", "count_parameters", "default_arch",
           "drawing_from", "gd_rounding_bound", "named_arch"]
