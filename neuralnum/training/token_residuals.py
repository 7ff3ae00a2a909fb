"""A token learner's one-step residuals as a least-squares problem of its flat weights:
what the Levenberg–Marquardt finisher minimises for a :class:`~neuralnum.training.fit.ProblemTask`.

* :func:`learner_problem` — the residuals ``model(A, b, x) − label`` of a set of problems
  as a :class:`~neuralnum.training.lm_problems.PerSampleProblem` of the float64 vector of
  trainable weights (Jacobian through a float64 copy of the model, one problem at a time);
* :func:`snap_dead_channels` — put a BaseConv's idle channels exactly on one branch before
  LM (kept only if the training loss does not rise).

Shapes: problems ``A: (B, n, d)``, ``b: (B, n)``, ``x: (B, d)``, labels ``(B, d)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch.func import functional_call

from neuralnum.models.base import cast_module
from neuralnum.training.lm_problems import PerSampleProblem

__all__ = ["FlatParameters", "learner_problem", "snap_dead_channels"]

Data = tuple[torch.Tensor, ...]


def _cast_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of ``model`` in ``dtype`` with its data-dependent input checks off (they
    branch on values, which ``vmap`` cannot trace)."""
    net = cast_module(copy.deepcopy(model), dtype)
    net.check_input = lambda t: t
    return net


class FlatParameters:
    """The trainable parameters of ``model`` as one flat float64 vector ``θ: (p,)``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = dict(model.named_parameters())
        self.names = [n for n, p in self.params.items() if p.requires_grad]
        self.shapes = [self.params[n].shape for n in self.names]
        self.sizes = [self.params[n].numel() for n in self.names]
        self.buffers = dict(model.named_buffers())

    def vector(self) -> torch.Tensor:
        return torch.cat([self.params[n].detach().reshape(-1).to(torch.float64)
                          for n in self.names])

    def unflatten(self, theta: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        parts = theta.to(dtype).split(self.sizes)
        out = {n: t.view(s) for n, t, s in zip(self.names, parts, self.shapes, strict=True)}
        out.update({k: v.to(dtype) if v.is_floating_point() else v
                    for k, v in self.buffers.items()})
        return out

    @torch.no_grad()
    def write_back(self, theta: torch.Tensor) -> None:
        for n, t in zip(self.names, theta.split(self.sizes), strict=True):
            self.params[n].copy_(t.view(self.params[n].shape))


def learner_problem(learner: Any, data: Data, chunk: int = 128,
                    dtype: torch.dtype | None = None,
                    ) -> tuple[PerSampleProblem, torch.Tensor, Callable[[torch.Tensor], None]]:
    """The learner's residuals on ``data = (A, b, x, label)`` as a
    :class:`~neuralnum.training.lm_problems.PerSampleProblem` of flat float64 ``θ``.

    ``problem.residuals`` evaluates the model in ``dtype`` (default: the learner's compute
    dtype, i.e. the residuals of the model as deployed); the Jacobian is always float64.
    Returns ``(problem, θ₀: (p,) float64, write_back(θ))`` — ``write_back`` copies ``θ``
    into the learner's parameters (in their dtype).
    """
    flat = FlatParameters(learner.model)
    compute = dtype or learner.precision.compute_dtype
    lin = _cast_copy(learner.model, torch.float64)
    evaluator = lin if compute == torch.float64 else _cast_copy(learner.model, compute)
    layout, objective = learner.layout, learner.objective
    A, b, x, label = data

    def forward(net: torch.nn.Module, theta: torch.Tensor, dtype: torch.dtype,
                tok: torch.Tensor, xs: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        delta = functional_call(net, flat.unflatten(theta, dtype), (tok.to(dtype),),
                                {"increment": True})
        pred = objective.read(xs.to(dtype), delta[:, -1, layout.x_slice])
        return pred.to(torch.float64) - lab.to(torch.float64)

    def residual(theta: torch.Tensor, tok: torch.Tensor, xs: torch.Tensor,
                 lab: torch.Tensor) -> torch.Tensor:
        return forward(lin, theta, torch.float64, tok[None], xs[None], lab[None])[0]

    @torch.no_grad()
    def evaluate(theta: torch.Tensor, tok: torch.Tensor, xs: torch.Tensor,
                 lab: torch.Tensor) -> torch.Tensor:
        return torch.cat([forward(evaluator, theta, compute, tok[i:i + 1024], xs[i:i + 1024],
                                  lab[i:i + 1024]) for i in range(0, tok.shape[0], 1024)])

    problem = PerSampleProblem(residual, evaluate, (layout.encode(A, b, x), x, label),
                               chunk=chunk)
    return problem, flat.vector(), flat.write_back


def snap_dead_channels(learner: Any, train: Data, rtol: float, chunk: int,
                       dtype: torch.dtype | None) -> list[tuple[int, int, str]]:
    """``learner.model.snap_dead_channels`` on the training problems' tokens (where the
    model has it and ``rtol > 0``), undone if the training loss rose; returns the
    channels zeroed. A channel with both factors near zero sits where two zero-loss
    branches cross and the residual is quadratic in its weights, so Gauss–Newton there
    converges only linearly; on one branch the problem is regular."""
    model = learner.model
    if not rtol or not hasattr(model, "snap_dead_channels"):
        return []
    problem, before, write_back = learner_problem(learner, train, chunk, dtype)
    A, b, x, _ = train
    snapped = model.snap_dead_channels(learner.layout.encode(A, b, x), rtol)
    if snapped:
        after = FlatParameters(model).vector()
        if problem.residuals(after).pow(2).sum() > problem.residuals(before).pow(2).sum():
            write_back(before)
            return []
    return snapped
