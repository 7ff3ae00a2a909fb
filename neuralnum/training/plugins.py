"""The plug-ins of the one training loop (:mod:`neuralnum.training.loop`).

* :class:`Task` — what a batch is and what the loss is (``sample``, ``shard``, ``loss``,
  ``evaluate``); :func:`shard_batch` — this rank's rows of a global batch.
* :class:`Schedule` — the one LR schedule (linear warm-up, then cosine / step / no decay
  to a floor, times the scales hooks set); a ``lr_lambda`` for
  ``torch.optim.lr_scheduler.LambdaLR`` (:func:`make_scheduler`), whose ``state_dict``
  carries it, scales included.
* :func:`ema_average` — ``torch.optim.swa_utils.AveragedModel`` keeping an EMA of the
  weights from their initial values.
* :class:`Hook` — a plug-in with no-op defaults: choose the batch size, take over the
  gradient computation, edit gradients, observe each step; ``state_dict`` for resume.
  :class:`GradClip` — clip the gradient norm (the one hook most runs take).
* :class:`Finisher` — an optimizer phase after the loop (:class:`FinisherProblem` is what
  it gets): :class:`LBFGSFinisher` here, the Levenberg–Marquardt one in
  :mod:`neuralnum.training.finisher`. First-order optimizers are any
  ``torch.optim.Optimizer`` the caller builds (Adam, AdamW); second-order and line-search
  methods are finishers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from neuralnum.core.runtime import Distributed
from neuralnum.core.validation import (
    check_choice,
    check_nonnegative_int,
    check_positive_int,
    check_range,
)

__all__ = ["DECAYS", "Batch", "Finisher", "FinisherProblem", "GradClip", "Hook",
           "LBFGSFinisher", "Schedule", "Task", "ema_average", "make_scheduler", "shard_batch"]

Decay = Literal["none", "cosine", "step"]
DECAYS: tuple[str, ...] = Decay.__args__
Batch = tuple[Any, ...]


# --------------------------------------------------------------------------- schedule
class Schedule:
    """LR multiplier at each step; the ``lr_lambda`` of ``LambdaLR``.

    ``(step + 1) / warmup`` during the warm-up; then, over the remaining
    ``horizon − warmup`` steps, ``"cosine"`` decays from 1 to ``min_factor``, ``"step"``
    multiplies by ``step_factor`` every ``step_every`` steps and ``"none"`` keeps 1;
    after the warm-up the value times every entry of :attr:`scales` (set by hooks: the
    plateau and adaptive rules) is floored at ``min_factor``. A callable object, so
    ``LambdaLR.state_dict()`` saves its attributes, the scales included.
    """

    def __init__(self, *, warmup: int = 0, decay: str = "cosine", horizon: int = 0,
                 min_factor: float = 0.0, step_every: int = 1000, step_factor: float = 1.0):
        check_choice(decay, "lr_decay", DECAYS)
        if decay == "cosine" and horizon < 1:
            raise ValueError("cosine LR decay needs a horizon: total_steps >= 1 or a run "
                             "with steps")
        check_range(warmup, "warmup", 0)
        check_positive_int(step_every, "step_every")
        check_range(min_factor, "min_factor", 0, 1)
        self.warmup, self.decay, self.horizon = warmup, decay, horizon
        self.min_factor, self.step_every, self.step_factor = min_factor, step_every, step_factor
        self.scales: dict[str, float] = {}

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        since = step - self.warmup
        factor = 1.0
        if self.decay == "cosine":
            t = min(since / max(1, self.horizon - self.warmup), 1.0)
            factor = self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t))
        elif self.decay == "step":
            factor = self.step_factor ** (since // self.step_every)
        for scale in self.scales.values():
            factor *= scale
        return max(factor, self.min_factor)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule, *,
                   start: int = 0) -> LambdaLR:
    """``LambdaLR(optimizer, schedule)``: every group's LR is its initial LR × schedule.

    ``start``: the step the schedule begins at, for an optimizer created in the middle of
    a run (e.g. after its model changed shape): its groups' current LRs are the initial
    ones and the first LR set is ``initial × schedule(start)``.
    """
    check_nonnegative_int(start, "start")
    if start:
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
    return LambdaLR(optimizer, schedule, last_epoch=start - 1)


def ema_average(model: nn.Module, decay: float) -> AveragedModel | None:
    """An EMA (``decay`` per step) of ``model``'s parameters, starting from their current
    values; ``None`` when ``decay`` is 0."""
    if decay == 0:
        return None
    average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    average.update_parameters(model)  # the first update copies: the EMA starts at init
    return average


# --------------------------------------------------------------------------- plug-ins
class Task:
    """What a batch is and what the loss is; subclass and override.

    * ``sample(size, gen)`` — the *global* batch (a tuple), drawn from ``gen`` only, so
      every rank draws the same one;
    * ``shard(batch, dist)`` — this rank's part (default :func:`shard_batch`), moved to the
      training device;
    * ``loss(model, batch)`` — scalar loss of this rank's part, normalised so that DDP's
      mean over ranks equals the loss of the global batch;
    * ``evaluate(model)`` — held-out metrics (a dict of floats) of the unwrapped module;
    """

    def sample(self, size: int, gen: torch.Generator) -> Batch:
        raise NotImplementedError

    def shard(self, batch: Batch, dist: Distributed) -> Batch:
        return shard_batch(batch, dist)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {}


def shard_batch(batch: Batch, dist: Distributed) -> Batch:
    """Rows ``[rank·k, (rank+1)·k)`` of every tensor of ``batch`` (``k`` = batch / world),
    moved to ``dist.device``."""
    local = dist.shard(batch[0].shape[0])
    rows = slice(dist.rank * local, (dist.rank + 1) * local)
    return tuple(t[rows].to(dist.device) for t in batch)


class Hook:
    """A plug-in of the loop; every method is a no-op by default.

    ``batch_size(size)`` returns the global batch size of the next step;
    ``backward(step, batch, backward)`` may compute the gradients itself (calling
    ``backward(part) -> loss`` on parts of ``batch``) and return the loss, or return
    ``None`` to leave it to the loop; ``on_gradients(model)`` edits ``.grad`` before the
    optimizer step; ``after_step(step, loss)`` observes the finished step. The last two
    return metrics (a dict, or ``None``) for the step's record.
    """

    def batch_size(self, size: int) -> int:
        return size

    def backward(self, step: int, batch: Batch,
                 backward: Callable[[Batch], float]) -> float | None:
        return None

    def on_gradients(self, model: nn.Module) -> dict[str, float] | None:
        return None

    def after_step(self, step: int, loss: float) -> dict[str, float] | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class GradClip(Hook):
    """Clip the global gradient norm to ``max_norm``; logs the norm before clipping."""

    def __init__(self, max_norm: float):
        self.max_norm = max_norm

    def on_gradients(self, model: nn.Module) -> dict[str, float]:
        return {"grad_norm": float(torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                                  self.max_norm))}


@dataclass
class FinisherProblem:
    """What a :class:`Finisher` works on.

    ``model``: the (possibly DDP-wrapped) training module; ``params``: its trainable
    parameters by name; ``task``: the run's :class:`Task` (to draw problems:
    ``task.sample(size, generator)``); ``generator``: the finishers' own stream (seeded
    by the run's seed, so a finisher draws the same problems however long the first-order
    phase ran); ``log(**metrics)``: write a record at the current step; ``closure()``
    (finishers with a ``batch_size``: one fixed batch of that many problems, this rank's
    part): zero the grads, forward, backward (DDP averages), return the global mean loss.
    """

    model: nn.Module
    params: dict[str, torch.nn.Parameter]
    task: Task
    generator: torch.Generator
    log: Callable[..., dict[str, Any]]
    closure: Callable[[], torch.Tensor] | None = None

    @torch.no_grad()
    def load(self, values: Mapping[str, torch.Tensor]) -> None:
        """Copy ``values`` (name → tensor) into the parameters."""
        for name, p in self.params.items():
            p.copy_(values[name])


class Finisher:
    """An optimizer phase after the main loop, ``run`` once on ``batch_size`` problems
    drawn from the training generator (0: the finisher draws its own data)."""

    batch_size: int

    def run(self, problem: FinisherProblem) -> dict[str, float]:
        raise NotImplementedError


@dataclass
class LBFGSFinisher(Finisher):
    """``steps`` L-BFGS iterations (strong Wolfe line search) on one fixed batch."""

    steps: int
    batch_size: int

    def run(self, problem: FinisherProblem) -> dict[str, float]:
        if problem.closure is None:
            raise ValueError("the L-BFGS finisher needs a fixed batch (batch_size >= 1)")
        lbfgs = torch.optim.LBFGS(list(problem.params.values()), lr=1.0,
                                  max_iter=self.steps, tolerance_grad=0.0,
                                  tolerance_change=0.0, line_search_fn="strong_wolfe")
        lbfgs.step(problem.closure)
        return {}


