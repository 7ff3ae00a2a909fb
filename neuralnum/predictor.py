"""The learner's network: a named token model, wrapped to map problems to predictions.

* :func:`default_arch` / :func:`build_arch` / :func:`named_arch` — the default shape of
  each architecture name and the one place a named architecture is built (seeded);
  :func:`load_construction` — the exact GD weights (plus noise) for such a model.
* :class:`Predictor` — ``(A, b, x) → (B, d)``: token layout, token model, read-out by
  the objective; the module the training loop trains (and DDP wraps).
* :func:`one_step_metrics` — MSE / relative MSE / digits of predictions.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from neuralnum.objectives import Objective
from neuralnum.reference import digits, mse, relative_error
from neuralnum.runtime import make_generator
from neuralnum.tokens import TokenLayout
from neuralnum.validation import Precision

__all__ = ["ARCHS", "Predictor", "build_arch", "cast_module", "check_weights",
           "default_arch", "load_construction", "named_arch", "one_step_metrics"]

ARCHS = ("baseconv", "linear_attention", "transformer")


def default_arch(name: str, d: int) -> tuple[int, int, dict[str, Any]]:
    """Default ``(d_model, n_layers, options)`` of architecture ``name`` for ``d`` unknowns.

    The polynomial models default to the shapes of the exact GD constructions
    (:mod:`neuralnum.arch.construct`): BaseConv 3 layers of width ``4d + 1`` with the
    ``"delta_sum"`` init (learns from scratch far faster than ``"random"``); linear
    attention 1 layer of width ``2d + 1`` with head dimension ``d + 1``. The end-to-end
    softmax Transformer: 4 layers of width 64, 4 heads, on ``2d + 1``-wide tokens.
    """
    if name == "baseconv":
        return 4 * d + 1, 3, {"init": "delta_sum"}
    if name == "linear_attention":
        return 2 * d + 1, 1, {"head_dim": d + 1}
    if name == "transformer":
        return 2 * d + 1, 4, {"width": 64, "n_heads": 4}
    raise ValueError(f"unknown arch {name!r}; choose from {list(ARCHS)}")


def build_arch(name: str, d_model: int, n_layers: int, n: int, dtype: torch.dtype,
               seed: int, options: dict[str, Any]) -> nn.Module:
    """The one place a named architecture is built (weights drawn from a generator seeded
    by ``seed``)."""
    from neuralnum.arch import arch_config, build_model

    config = arch_config(name, d_model=d_model, n_layers=n_layers, seq_len=n, **options)
    return build_model(config, dtype=dtype, generator=make_generator(seed))


def named_arch(name: str, n: int, d: int, dtype: torch.dtype, *, d_model: int | None = None,
               n_layers: int | None = None, options: dict[str, Any] | None = None,
               seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """Architecture ``name`` for ``n × d`` problems (unset shape from :func:`default_arch`)
    and the JSON-able config that rebuilds it."""
    default_width, default_layers, default_options = default_arch(name, d)
    config = {"name": name, "d_model": d_model or default_width,
              "n_layers": n_layers or default_layers, "seed": seed,
              "options": default_options if options is None else dict(options)}
    model = build_arch(name, config["d_model"], config["n_layers"], n, dtype, seed,
                       config["options"])
    return model, config


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
    """Set ``model`` (a default-shape ``"baseconv"`` / ``"linear_attention"`` named
    ``name``) to the exact GD construction with ``η = 1/n`` (it computes
    ``x − Aᵀ(Ax − b)/n``), plus ``noise``·N(0, 1) on every parameter (generator ``seed``)."""
    from neuralnum.arch import construct

    builders = {"baseconv": construct.construct_baseconv_gd,
                "linear_attention": construct.construct_linear_attention_gd}
    if name not in builders:
        raise ValueError("init_construction needs a baseconv or linear_attention learner "
                         "with the update objective")
    dtype = next(model.parameters()).dtype
    exact = builders[name](n, d, 1.0 / n, dtype=dtype).state_dict()
    check_weights(exact, model.state_dict(), f"the construction of {name}", ValueError)
    model.load_state_dict(exact)
    gen = make_generator(seed)
    for p in model.parameters():
        p.add_(noise * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))


def cast_module(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model.to(dtype)``, also updating a ``dtype`` attribute the model validates with."""
    model = model.to(dtype)
    if isinstance(getattr(model, "dtype", None), torch.dtype):
        model.dtype = dtype
    return model


def one_step_metrics(pred: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
    """Mean ``mse``, mean squared relative error ``rel_mse`` and median correct ``digits``
    of predictions ``pred: (B, d)`` against ``label: (B, d)``."""
    return {"mse": float(mse(pred, label).mean()),
            "rel_mse": float(relative_error(pred, label).pow(2).mean()),
            "digits": float(digits(pred, label).median())}


class Predictor(nn.Module):
    """``(A: (B, n, d), b: (B, n), x: (B, d)) → (B, d)``: encode the tokens, run the token
    model for its increment (``model(tokens, increment=True)``: outputs − tokens, formed
    without adding the tokens), read the last token's ``x`` slot of it through the
    objective (master dtype).

    Under the ``"mixed"`` precision the token model runs in float32 on float32 copies of
    the float64 master weights (gradients flow back to the masters).
    """

    def __init__(self, model: nn.Module, layout: TokenLayout, objective: Objective,
                 precision: Precision):
        super().__init__()
        self.model = model
        self.layout = layout
        self.objective = objective
        self.precision = precision
        # a tuple keeps the float32 copy out of parameters() and state_dict()
        self.compute = ((cast_module(copy.deepcopy(model), precision.compute_dtype),)
                        if precision.mixed else ())

    def forward(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        layout = self.layout
        if A.shape[1] != layout.n:
            layout = TokenLayout(A.shape[1], layout.d, width=layout.width)
        tokens = layout.encode(A, b, x)
        if self.compute:
            dtype = self.precision.compute_dtype
            weights = {k: v.to(dtype) if v.is_floating_point() else v
                       for k, v in [*self.model.named_parameters(),
                                    *self.model.named_buffers()]}
            delta = functional_call(self.compute[0], weights, (tokens.to(dtype),),
                                    {"increment": True})
        else:
            delta = self.model(tokens, increment=True)
        if delta.shape != tokens.shape:
            raise ValueError(f"model output shape {tuple(delta.shape)} != token shape "
                             f"{tuple(tokens.shape)}")
        return self.objective.read(x, delta[:, -1, layout.x_slice].to(self.precision.param_dtype))
