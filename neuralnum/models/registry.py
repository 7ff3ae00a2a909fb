"""The one registry of the token architectures: name → config, model, default shape and
exact GD construction.

* :data:`ARCHS` — every registered name; :func:`arch_config` / :func:`build_model` — a
  config from a name and the model a config describes;
* :func:`default_arch` — the default ``(d_model, n_layers, options)`` of a name for ``d``
  unknowns; :func:`named_arch` — the one place a named architecture is built for ``n × d``
  problems (seeded), with the JSON-able config that rebuilds it;
* :func:`load_construction` — set such a model to its exact GD construction (plus noise);
  :func:`check_weights` — do two state dicts have the same names and shapes.

A new token architecture is one :class:`ArchSpec` entry here (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from neuralnum.core.runtime import make_generator
from neuralnum.models.base import TokenConfig, TokenModel
from neuralnum.models.baseconv import BaseConv, BaseConvConfig
from neuralnum.models.construct import construct_baseconv_gd, construct_linear_attention_gd
from neuralnum.models.linear_attention import LinearAttention, LinearAttentionConfig
from neuralnum.models.transformer import Transformer, TransformerConfig

__all__ = ["ARCHS", "ArchSpec", "arch_config", "build_model", "check_weights",
           "default_arch", "load_construction", "named_arch"]


@dataclass(frozen=True)
class ArchSpec:
    """A registered architecture: its config and model classes, its default shape for
    ``d`` unknowns (``d -> (d_model, n_layers, options)``) and, for the polynomial models,
    the exact GD construction ``(n, d, eta, dtype=...) -> model``."""

    config: type[TokenConfig]
    model: type[TokenModel]
    default: Callable[[int], tuple[int, int, dict[str, Any]]]
    construction: Callable[..., TokenModel] | None = None


#: Architecture name → spec. The polynomial models default to the shapes of their exact
#: GD constructions (:mod:`neuralnum.models.construct`): BaseConv 3 layers of width
#: ``4d + 1`` with the ``"delta_sum"`` init (learns from scratch far faster than
#: ``"random"``); linear attention 1 layer of width ``2d + 1``, head dimension ``d + 1``.
#: The end-to-end softmax Transformer: 4 layers of width 64, 4 heads, on ``2d + 1``-wide
#: tokens.
REGISTRY: dict[str, ArchSpec] = {
    "baseconv": ArchSpec(BaseConvConfig, BaseConv,
                         lambda d: (4 * d + 1, 3, {"init": "delta_sum"}),
                         construct_baseconv_gd),
    "linear_attention": ArchSpec(LinearAttentionConfig, LinearAttention,
                                 lambda d: (2 * d + 1, 1, {"head_dim": d + 1}),
                                 construct_linear_attention_gd),
    "transformer": ArchSpec(TransformerConfig, Transformer,
                            lambda d: (2 * d + 1, 4, {"width": 64, "n_heads": 4})),
}
ARCHS: tuple[str, ...] = tuple(REGISTRY)


def _spec(name: str) -> ArchSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; choose one of {list(ARCHS)}")
    return REGISTRY[name]


def arch_config(name: str, **fields: Any) -> TokenConfig:
    """The config of architecture ``name`` with ``fields`` (``d_model``, ``n_layers``,
    ``seq_len`` and options such as ``width``, ``n_heads``); ``ValueError`` for an
    unknown name, ``TypeError`` for a field the architecture does not have."""
    return _spec(name).config(**fields)


def build_model(
    config: TokenConfig,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    generator: torch.Generator | None = None,
) -> TokenModel:
    """The model ``config`` describes, ``Model(config, dtype=..., device=..., generator=...)``."""
    spec = REGISTRY.get(getattr(config, "name", ""))
    if not isinstance(config, TokenConfig) or spec is None:
        raise TypeError(f"config must be one of {[s.config.__name__ for s in REGISTRY.values()]}"
                        f", got {type(config).__name__}")
    return spec.model(config, dtype=dtype, device=device, generator=generator)


def default_arch(name: str, d: int) -> tuple[int, int, dict[str, Any]]:
    """Default ``(d_model, n_layers, options)`` of architecture ``name`` for ``d`` unknowns
    (:data:`REGISTRY`)."""
    return _spec(name).default(d)


def named_arch(name: str, n: int, d: int, dtype: torch.dtype, *, d_model: int | None = None,
               n_layers: int | None = None, options: dict[str, Any] | None = None,
               seed: int = 0) -> tuple[TokenModel, dict[str, Any]]:
    """Architecture ``name`` for ``n × d`` problems (unset shape from :func:`default_arch`;
    weights drawn from a generator seeded by ``seed``) and the JSON-able config that
    rebuilds it."""
    default_width, default_layers, default_options = default_arch(name, d)
    config = {"name": name, "d_model": d_model or default_width,
              "n_layers": n_layers or default_layers, "seed": seed,
              "options": default_options if options is None else dict(options)}
    model_config = arch_config(name, d_model=config["d_model"], n_layers=config["n_layers"],
                               seq_len=n, **config["options"])
    return build_model(model_config, dtype=dtype, generator=make_generator(seed)), config


def check_weights(weights: dict[str, torch.Tensor], current: dict[str, torch.Tensor],
                  what: object, error: type[Exception]) -> None:
    """Raise ``error`` unless ``weights`` has ``current``'s names and shapes."""
    if set(weights) != set(current) or any(weights[k].shape != current[k].shape
                                           for k in current):
        raise error(f"{what} is incompatible: its weights do not match this model's "
                    f"parameter names/shapes")


@torch.no_grad()
def load_construction(model: nn.Module, name: str | None, n: int, d: int, *,
                      noise: float = 0.0, seed: int = 0) -> None:
    """Set ``model`` (a default-shape architecture ``name`` with an exact construction)
    to the exact GD construction with ``η = 1/n`` (it computes ``x − Aᵀ(Ax − b)/n``),
    plus ``noise``·N(0, 1) on every parameter (generator ``seed``)."""
    construction = REGISTRY[name].construction if name in REGISTRY else None
    if construction is None:
        raise ValueError("init_construction needs a baseconv or linear_attention learner "
                         "with the update objective")
    dtype = next(model.parameters()).dtype
    exact = construction(n, d, 1.0 / n, dtype=dtype).state_dict()
    check_weights(exact, model.state_dict(), f"the construction of {name}", ValueError)
    model.load_state_dict(exact)
    gen = make_generator(seed)
    for p in model.parameters():
        p.add_(noise * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))
