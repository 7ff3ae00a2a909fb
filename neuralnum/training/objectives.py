"""What a learner is supervised on, and how its output becomes the next iterate.

* :class:`UpdateObjective` — the learned *update rule* (Liu et al. 2025): the model sees
  ``(A, b, x)`` and predicts the scaled gradient ``Aᵀ(Ax − b)/n``, read in residual form
  as ``model(A, b, x) = x − out_x = −Δx`` (``out_x``: what the model wrote into the last
  token's ``x`` slot; a residual model then writes ``x − ∇/n``, i.e. one GD step with
  ``η = 1/n``, exactly what :mod:`neuralnum.models.construct` builds). The read-out takes the
  model's *increment* ``Δx = out_x − x``, computed without adding ``x``
  (``model(tokens, increment=True)``): forming ``x + Δx`` first and subtracting ``x``
  again would round ``Δx`` at ``x``'s scale, an absolute error ``u·|x|`` that near a
  solution is most of ``Δx`` (and, not of the form ``Aᵀδr``, is amplified by ``κ²``).
  The iterate is
  ``x⁺ = x − η(A)·n·model(A, b, x)`` with ``η`` from a :mod:`neuralnum.problems.targets` step rule,
  so an exact model reproduces :class:`~neuralnum.problems.targets.GDStep` and is applied
  iteratively as a solver. ``n`` is the training length (the scale baked into the weights).
* :class:`SolutionObjective` — the end-to-end baseline: the model sees ``(A, b, 0)`` and
  writes ``x*`` into the ``x`` slot directly, once (its increment, as ``x = 0``).

Shapes: ``A: (B, n, d)``, ``b: (B, n)``, ``x, x_star, output: (B, d)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from neuralnum.problems.targets import (
    FixedStep,
    GDStep,
    InverseLipschitzStep,
    OptimalStep,
    gradient,
)

__all__ = [
    "Objective",
    "SolutionObjective",
    "UpdateObjective",
    "as_objective",
    "loss_fn",
    "objective_from_dict",
]


class Objective(Protocol):
    iterative: bool

    def sample_iterate(self, x_star: torch.Tensor, gen: torch.Generator) -> torch.Tensor: ...

    def read(self, x: torch.Tensor, increment: torch.Tensor) -> torch.Tensor: ...

    def label(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor,
              x_star: torch.Tensor) -> torch.Tensor: ...

    def next_iterate(self, A: torch.Tensor, x: torch.Tensor, output: torch.Tensor,
                     n_train: int) -> torch.Tensor: ...

    def to_dict(self) -> dict[str, Any]: ...


def _rule_to_dict(rule: object) -> dict[str, Any]:
    if isinstance(rule, OptimalStep):
        return {"rule": "optimal"}
    if isinstance(rule, InverseLipschitzStep):
        return {"rule": "inverse_lipschitz"}
    if isinstance(rule, FixedStep):
        return {"rule": "fixed", "eta": rule.eta}
    if isinstance(rule, int | float):
        return {"rule": "fixed", "eta": float(rule)}
    raise ValueError(f"cannot serialise step rule {rule!r}")


def _rule_from_dict(data: dict[str, Any]) -> object:
    rules = {"optimal": OptimalStep, "inverse_lipschitz": InverseLipschitzStep}
    if data["rule"] == "fixed":
        return FixedStep(float(data["eta"]))
    if data["rule"] not in rules:
        raise ValueError(f"unknown step rule {data['rule']!r}")
    return rules[data["rule"]]()


@dataclass(frozen=True)
class UpdateObjective:
    """Learn the GD update ``Aᵀ(Ax − b)/n`` at iterates ``x = x* + s·z``, ``z ~ N(0, I)``.

    The scale is ``s = 10^(−u)``, ``u ~ U[0, spread]``: ``spread = 0`` gives ``s = 1``;
    a positive spread also trains near the solution, where an iterative solver spends
    its late iterations.
    """

    step: GDStep = GDStep()  # noqa: RUF009 (frozen, immutable default)
    spread: float = 0.0
    iterative: bool = True

    def __post_init__(self) -> None:
        if self.spread < 0:
            raise ValueError(f"spread must be >= 0, got {self.spread}")

    def sample_iterate(self, x_star: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        z = torch.randn(x_star.shape, generator=gen, dtype=x_star.dtype)
        u = torch.rand(x_star.shape[0], 1, generator=gen, dtype=x_star.dtype)
        return x_star + z * torch.pow(10.0, -self.spread * u)

    def read(self, x: torch.Tensor, increment: torch.Tensor) -> torch.Tensor:
        """The model's gradient prediction: what it subtracted from ``x`` (``increment``:
        the change ``Δx`` it made to the ``x`` slot)."""
        return -increment

    def label(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor,
              x_star: torch.Tensor) -> torch.Tensor:
        return gradient(A, b, x) / A.shape[1]

    def next_iterate(self, A: torch.Tensor, x: torch.Tensor, output: torch.Tensor,
                     n_train: int) -> torch.Tensor:
        return x - (self.step.eta(A) * n_train).unsqueeze(1) * output

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "update", "spread": self.spread, **_rule_to_dict(self.step.step)}


@dataclass(frozen=True)
class SolutionObjective:
    """End-to-end in-context regression: predict ``x*`` from ``(A, b)`` with ``x = 0``."""

    iterative: bool = False

    def sample_iterate(self, x_star: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return torch.zeros_like(x_star)

    def read(self, x: torch.Tensor, increment: torch.Tensor) -> torch.Tensor:
        return x + increment

    def label(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor,
              x_star: torch.Tensor) -> torch.Tensor:
        return x_star

    def next_iterate(self, A: torch.Tensor, x: torch.Tensor, output: torch.Tensor,
                     n_train: int) -> torch.Tensor:
        return output

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "solution"}


def as_objective(target: object) -> Objective:
    """Accept an objective, a :class:`GDStep` (→ :class:`UpdateObjective`) or ``"solution"``."""
    if isinstance(target, UpdateObjective | SolutionObjective):
        return target
    if isinstance(target, GDStep):
        return UpdateObjective(step=target)
    if target == "solution":
        return SolutionObjective()
    if target == "gd":
        return UpdateObjective()
    raise TypeError(f"target must be a GDStep, an objective, 'gd' or 'solution'; "
                    f"got {target!r}")


def objective_from_dict(data: dict[str, Any]) -> Objective:
    """Inverse of ``Objective.to_dict``."""
    if data.get("kind") == "solution":
        return SolutionObjective()
    if data.get("kind") == "update":
        return UpdateObjective(step=GDStep(_rule_from_dict(data)), spread=float(data["spread"]))
    raise ValueError(f"unknown objective {data!r}")


def loss_fn(pred: torch.Tensor, target: torch.Tensor, *, relative: bool) -> torch.Tensor:
    """Mean over the batch of ``‖pred − target‖²/d`` (absolute) or ``/‖target‖²`` (relative).

    ``pred, target: (B, d)``, same dtype; returns a scalar of that dtype. The relative
    form weighs every problem equally whatever its scale.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape "
                         f"{tuple(target.shape)}")
    sq = (pred - target).pow(2).sum(dim=1)
    if relative:
        tiny = torch.finfo(target.dtype).tiny
        return (sq / target.pow(2).sum(dim=1).clamp_min(tiny)).mean()
    return sq.mean() / target.shape[1]
