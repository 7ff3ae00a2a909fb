"""A token model wrapped to map problems to predictions: the module the loop trains.

* :class:`Predictor` — ``(A, b, x) → (B, d)``: token layout, token model, read-out by
  the objective; the module the training loop trains (and DDP wraps).
* :func:`one_step_metrics` — MSE / relative MSE / digits of predictions.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call

from neuralnum.core.validation import Precision
from neuralnum.models.base import cast_module
from neuralnum.models.tokens import TokenLayout
from neuralnum.problems.reference import digits, mse, relative_error
from neuralnum.training.objectives import Objective

__all__ = ["Predictor", "one_step_metrics"]


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
