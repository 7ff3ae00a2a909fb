"""The training loop's hooks that the high-precision recipe switches on
(:func:`neuralnum.training.assembly.make_training` builds them from a
:class:`~neuralnum.training.recipe.Recipe`).

* :class:`PlateauDecay` — scale the LR down after a plateau of the loss;
* :class:`AdaptiveLR` — the signal-vs-noise LR rule: the cosine similarity of the
  gradients of two independent half-batches; ×``adaptive_factor`` when the signal falls
  below the noise;
* :class:`BatchSchedule` — grow the global batch as the loss falls;
* :class:`AverageRestart` — restart the weight average (EMA) at a given step;
* :class:`GradientFilter` — the EMA-of-gradients filter ``g + c·EMA_β(g)``.

Every stateful hook has ``state_dict()`` / ``load_state_dict()``, so a resumed run
continues bit-for-bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from neuralnum.training.plugins import Hook, Schedule
from neuralnum.training.recipe import Recipe

__all__ = ["AdaptiveLR", "AverageRestart", "BatchSchedule", "GradientFilter", "PlateauDecay",
           "cosine_similarity"]


def cosine_similarity(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Cosine similarity of two gradients given as lists of same-shaped tensors."""
    dot = sum(float((x * y).sum()) for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(float(x.pow(2).sum()) for x in a))
    nb = math.sqrt(sum(float(y.pow(2).sum()) for y in b))
    return dot / (na * nb) if na > 0 and nb > 0 else 0.0


class PlateauDecay(Hook):
    """Scale the LR by ``plateau_factor`` after ``plateau_patience`` steps without a new
    best loss (then the count starts again from the current loss)."""

    def __init__(self, recipe: Recipe, schedule: Schedule):
        self.recipe, self.schedule = recipe, schedule
        self.factor, self.best, self.since_best = 1.0, math.inf, 0

    def observe(self, loss: float) -> None:
        if loss < self.best:
            self.best, self.since_best = loss, 0
            return
        self.since_best += 1
        if self.since_best >= self.recipe.plateau_patience:
            self.factor *= self.recipe.plateau_factor
            self.best, self.since_best = loss, 0
        self.schedule.scales["plateau"] = self.factor

    def after_step(self, step: int, loss: float) -> None:
        self.observe(loss)

    def state_dict(self) -> dict[str, float]:
        return {"factor": self.factor, "best": self.best, "since_best": self.since_best}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.factor, self.best = float(state["factor"]), float(state["best"])
        self.since_best = int(state["since_best"])


class AdaptiveLR(Hook):
    """Every ``adaptive_every`` steps after the warm-up, compute the gradient as the mean of
    two half-batch gradients (no extra cost) and compare them: a cosine below
    ``adaptive_threshold`` (noise dominates) scales the LR by ``adaptive_factor``, one
    above it recovers towards the scheduled LR."""

    def __init__(self, recipe: Recipe, schedule: Schedule, params: list[nn.Parameter]):
        self.recipe, self.schedule, self.params = recipe, schedule, params
        self.factor = 1.0
        self.cosine: float | None = None

    def due(self, step: int) -> bool:
        every = self.recipe.adaptive_every
        return every > 0 and step >= self.recipe.warmup and step % every == 0

    def backward(self, step: int, batch: tuple[Any, ...],
                 backward: Callable[[tuple[Any, ...]], float]) -> float | None:
        if not self.due(step):
            return None
        half = batch[0].shape[0] // 2
        if half < 1:
            raise ValueError("the adaptive LR needs at least 2 problems per process")
        halves, losses = [], []
        for part in (slice(0, half), slice(half, 2 * half)):
            losses.append(backward(tuple(t[part] for t in batch)))
            halves.append([p.grad.clone() for p in self.params])
            for p in self.params:
                p.grad = None
        for p, g1, g2 in zip(self.params, *halves, strict=True):
            p.grad = (g1 + g2) / 2
        self.cosine = cosine_similarity(*halves)
        return sum(losses) / 2

    def observe(self, cosine: float) -> None:
        r = self.recipe
        if cosine < r.adaptive_threshold:
            self.factor *= r.adaptive_factor
        else:
            self.factor = min(1.0, self.factor / r.adaptive_factor)
        self.schedule.scales["adaptive"] = self.factor

    def after_step(self, step: int, loss: float) -> None:
        if self.cosine is not None:
            self.observe(self.cosine)
            self.cosine = None

    def state_dict(self) -> dict[str, float]:
        return {"factor": self.factor}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.factor = float(state["factor"])


class BatchSchedule(Hook):
    """Global batch size that grows ×``batch_growth`` each time the loss falls 10×.

    The loss is smoothed with an EMA (β = 0.9) so one lucky batch does not trigger it.
    Sizes stay multiples of ``multiple`` (the world size) and ≤ ``max_batch_size``.
    """

    def __init__(self, recipe: Recipe, multiple: int = 1):
        if recipe.batch_size % multiple or recipe.max_batch_size % multiple:
            raise ValueError(f"batch_size {recipe.batch_size} and max_batch_size "
                             f"{recipe.max_batch_size} must be divisible by the world size "
                             f"{multiple}")
        self.recipe = recipe
        self.multiple = multiple
        self.size = recipe.batch_size
        self.smoothed = math.nan
        self.reference = math.nan

    def batch_size(self, size: int) -> int:
        return self.size

    def observe(self, loss: float) -> None:
        r = self.recipe
        self.smoothed = loss if math.isnan(self.smoothed) else 0.9 * self.smoothed + 0.1 * loss
        if math.isnan(self.reference):
            self.reference = self.smoothed
        if r.batch_growth > 1 and self.smoothed < self.reference / 10:
            grown = int(self.size * r.batch_growth) // self.multiple * self.multiple
            self.size = min(max(grown, self.size), r.max_batch_size)
            self.reference = self.smoothed

    def after_step(self, step: int, loss: float) -> None:
        self.observe(loss)

    def state_dict(self) -> dict[str, float]:
        return {"size": self.size, "smoothed": self.smoothed, "reference": self.reference}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.size = int(state["size"])
        self.smoothed = float(state["smoothed"])
        self.reference = float(state["reference"])


class AverageRestart(Hook):
    """Restart the weight average ``average`` from the current weights at step ``start``.

    An EMA begun at the random init keeps ``decay^steps`` of it (0.999 over 6,000 steps:
    0.25 %, far above the precision a learner reaches); begun once the model is near its
    floor it only averages out the late steps' noise. Stateless: it acts on the step number
    alone, so resume is exact.
    """

    def __init__(self, average: AveragedModel, start: int):
        self.average = average
        self.start = start

    def after_step(self, step: int, loss: float) -> None:
        if step + 1 == self.start:  # the next update of the average copies the weights
            self.average.n_averaged.zero_()


class GradientFilter(Hook):
    """Replace each gradient by ``g + coef·EMA_β(g)`` in place (off when ``β = 0``)."""

    def __init__(self, params: list[nn.Parameter], beta: float, coef: float):
        self.params = params
        self.beta = beta
        self.coef = coef
        self.ema = [torch.zeros_like(p) for p in params] if beta > 0 else []

    def apply(self) -> None:
        for p, m in zip(self.params, self.ema, strict=False):
            if p.grad is None:
                continue
            m.mul_(self.beta).add_(p.grad, alpha=1 - self.beta)
            p.grad.add_(m, alpha=self.coef)

    def on_gradients(self, model: nn.Module) -> None:
        self.apply()

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        return {"ema": [m.clone() for m in self.ema]}

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        if len(state["ema"]) != len(self.ema):
            raise ValueError("gradient-filter state does not match the parameters")
        for tensor, value in zip(self.ema, state["ema"], strict=True):
            tensor.copy_(value)
