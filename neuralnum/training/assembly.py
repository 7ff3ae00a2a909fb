"""A recipe turned into the objects one run of the training loop trains with.

:func:`make_training` builds, for a model's trainable parameters, the recipe's optimizer
(:func:`make_optimizer`: Adam), LR schedule (:func:`make_schedule` in ``LambdaLR``), the
hooks it switches on (:mod:`neuralnum.training.hooks`), the weight average and the
finishers (L-BFGS, or Levenberg–Marquardt: :class:`~neuralnum.training.finisher.LMFinisher`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel

from neuralnum.training.finisher import LMFinisher
from neuralnum.training.hooks import (
    AdaptiveLR,
    AverageRestart,
    BatchSchedule,
    GradientFilter,
    PlateauDecay,
)
from neuralnum.training.plugins import (
    Finisher,
    Hook,
    LBFGSFinisher,
    Schedule,
    ema_average,
    make_scheduler,
)
from neuralnum.training.recipe import Recipe

__all__ = ["Training", "make_optimizer", "make_schedule", "make_training"]


def make_optimizer(params: Iterable[torch.nn.Parameter], recipe: Recipe) -> torch.optim.Adam:
    """Adam with the recipe's ``lr``, ``betas`` and ``eps`` (foreach off: deterministic)."""
    return torch.optim.Adam(params, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps,
                            foreach=False)


def make_schedule(recipe: Recipe, horizon: int | None = None) -> Schedule:
    """The recipe's LR multiplier; the cosine spans ``recipe.total_steps``, or
    ``horizon`` (the run's steps) when that is 0."""
    return Schedule(warmup=recipe.warmup, decay=recipe.lr_decay,
                    horizon=recipe.total_steps or horizon or 0,
                    min_factor=recipe.min_lr_factor, step_every=recipe.step_every,
                    step_factor=recipe.step_factor)


@dataclass
class Training:
    """What :func:`make_training` builds from a recipe for one run."""

    optimizer: torch.optim.Adam
    scheduler: LambdaLR
    hooks: list[Hook]
    average: AveragedModel | None
    finishers: list[Finisher]


def make_training(recipe: Recipe, model: nn.Module, *, horizon: int | None,
                  world_size: int = 1) -> Training:
    """The recipe's optimizer, LR schedule, hooks (only those switched on), weight average
    and finishers for ``model``'s trainable parameters; ``horizon``: the run's steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, recipe)
    schedule = make_schedule(recipe, horizon)
    hooks: list[Hook] = [BatchSchedule(recipe, world_size)]
    if recipe.adaptive_every:
        hooks.append(AdaptiveLR(recipe, schedule, params))
    if recipe.plateau_patience:
        hooks.append(PlateauDecay(recipe, schedule))
    if recipe.grad_ema:
        hooks.append(GradientFilter(params, recipe.grad_ema, recipe.grad_ema_coef))
    average = ema_average(model, recipe.weight_ema)
    if average is not None and recipe.ema_start:
        hooks.append(AverageRestart(average, recipe.ema_start))
    finishers: list[Finisher] = []
    if recipe.finisher_steps and recipe.finisher == "lm":
        finishers.append(LMFinisher(recipe.lm, recipe.finisher_steps))
    elif recipe.finisher_steps:
        finishers.append(LBFGSFinisher(recipe.finisher_steps, recipe.max_batch_size))
    return Training(optimizer, make_scheduler(optimizer, schedule), hooks, average, finishers)
