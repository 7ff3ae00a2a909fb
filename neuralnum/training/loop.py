"""The one training loop: ``neuralnum``'s Learner and ``structured.train`` both run it.

Read :func:`train` top to bottom (as nanoGPT's ``train.py``): wrap the model in
``DistributedDataParallel`` under ``torchrun``, resume from a checkpoint, then per step
draw the global batch from one seeded generator, keep this rank's slice, compute the
gradients, let the hooks edit them, ``optimizer.step()``, update the weight average,
``scheduler.step()``, log, checkpoint; after the loop the finishers run and the final
checkpoint is written. The users differ only in their :class:`Task` (what a batch is and
what the loss is), their optimizer and their hooks.

Pieces
------
* Precision of every training config: :func:`neuralnum.core.validation.parse_precision`
  (``"float32"``, ``"float64"``, ``"bfloat16"``: float32 weights, bf16 autocast;
  ``"mixed"``: float64 master weights, float32 forward/backward).
* :class:`Schedule` — the one LR schedule (linear warm-up, then cosine / step / no decay
  to a floor, times the scales hooks set); a ``lr_lambda`` for
  ``torch.optim.lr_scheduler.LambdaLR`` (:func:`make_scheduler`), whose ``state_dict``
  carries it, scales included.
* :func:`ema_average` — ``torch.optim.swa_utils.AveragedModel`` keeping an EMA of the
  weights from their initial values.
* :class:`Hook` — a plug-in with no-op defaults: choose the batch size, take over the
  gradient computation, edit gradients, observe each step; ``state_dict`` for resume.
* :class:`Finisher` — an optimizer phase after the loop on one fixed batch;
  :class:`LBFGSFinisher` is the L-BFGS one.

The optimizer seam
------------------
First-order optimizers are any ``torch.optim.Optimizer`` the caller builds (Adam, AdamW).
A second-order or line-search method is a :class:`Finisher`: an object with a
``batch_size`` and ``run(problem: FinisherProblem) -> dict`` (metrics for the final
record), run once after the loop (after the weight average is copied in). The
:class:`FinisherProblem` holds the training module, its parameters by name, and, over
one fixed batch of ``batch_size`` problems drawn from the training generator, a
DDP-aware ``closure()`` (zero grads, forward, backward, return the global mean loss) and
a pure ``residuals(params) -> (m,) tensor`` (``torch.func.functional_call``; its squared
sum is the loss); also the task and the generator (to draw more data) and ``log``.
:class:`LBFGSFinisher` is ``LBFGS(params).step(closure)``. A Levenberg–Marquardt phase
on the fixed batch is::

    @dataclass
    class LMFinisher(Finisher):
        steps: int
        batch_size: int

        def run(self, problem: FinisherProblem) -> dict[str, float]:
            theta = {k: v.detach().clone() for k, v in problem.params.items()}
            for _ in range(self.steps):
                r = problem.residuals(theta)
                jac = torch.func.jacrev(problem.residuals)(theta)      # name → (m, *shape)
                theta = lm_step(theta, r, jac)                         # damped normal eqs
            problem.load(theta)
            return {"lm_loss": float(problem.residuals(theta).pow(2).sum())}

and one that grows its own problem set (``batch_size = 0``) calls
``problem.task.sample(size, problem.generator)`` and ``problem.log(lm=record)``. It is
plugged in as ``Loop(..., finishers=[LMFinisher(20, 1024)])``; the Learner builds its
finishers in :func:`neuralnum.training.recipe.make_training` (``Recipe.finisher_steps``).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from neuralnum.core.runtime import (
    CheckpointError,
    Distributed,
    MetricsLog,
    load_checkpoint,
    make_generator,
    progress,
    restore_training_state,
    save_checkpoint,
    training_state,
)

__all__ = [
    "DECAYS",
    "Finisher",
    "FinisherProblem",
    "Hook",
    "LBFGSFinisher",
    "Loop",
    "LoopConfig",
    "Result",
    "Schedule",
    "Task",
    "ema_average",
    "make_scheduler",
    "shard_batch",
    "train",
]

DECAYS = ("none", "cosine", "step")
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
        if decay not in DECAYS:
            raise ValueError(f"lr_decay must be one of {DECAYS}, got {decay!r}")
        if decay == "cosine" and horizon < 1:
            raise ValueError("cosine LR decay needs a horizon: total_steps >= 1 or a run "
                             "with steps")
        if warmup < 0 or step_every < 1 or not 0 <= min_factor <= 1:
            raise ValueError("need warmup >= 0, step_every >= 1 and 0 <= min_factor <= 1")
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


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule) -> LambdaLR:
    """``LambdaLR(optimizer, schedule)``: every group's LR is its initial LR × schedule."""
    return LambdaLR(optimizer, schedule)


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
    * ``residuals(forward, batch)`` — the ``(m,)`` residual vector whose squared sum is
      the loss (needed by residual-based finishers only); ``forward`` calls the model.
    """

    def sample(self, size: int, gen: torch.Generator) -> Batch:
        raise NotImplementedError

    def shard(self, batch: Batch, dist: Distributed) -> Batch:
        return shard_batch(batch, dist)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {}

    def residuals(self, forward: Callable[..., torch.Tensor], batch: Batch) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} defines no residuals")


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


@dataclass
class FinisherProblem:
    """What a :class:`Finisher` works on: one fixed batch (this rank's part).

    ``model``: the (possibly DDP-wrapped) training module; ``params``: its trainable
    parameters by name; ``closure()``: zero the grads, forward, backward (DDP averages),
    return the global mean loss; ``residuals(params)``: the pure ``(m,)`` residual vector
    at the given parameter values (``torch.func.functional_call``), with
    ``residuals(params).pow(2).sum() == loss``. A finisher that draws its own data (its
    ``batch_size`` is 0: no fixed batch, ``closure`` and ``residuals`` unset) uses
    ``task.sample(size, generator)``; ``log(**metrics)`` writes a record at the current
    step.
    """

    model: nn.Module
    params: dict[str, torch.nn.Parameter]
    closure: Callable[[], torch.Tensor] | None
    residuals: Callable[[Mapping[str, torch.Tensor]], torch.Tensor] | None
    task: Task
    generator: torch.Generator
    log: Callable[..., dict[str, Any]]

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


# --------------------------------------------------------------------------- the loop
@dataclass
class Loop:
    """The objects one run trains with (the caller builds them; :func:`train` runs them).

    ``model`` is the unwrapped module (parameters in their training dtype, on the
    device); ``average`` an :func:`ema_average` of it or ``None``.
    """

    model: nn.Module
    task: Task
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR | None = None
    hooks: Sequence[Hook] = ()
    finishers: Sequence[Finisher] = ()
    average: AveragedModel | None = None


@dataclass(frozen=True)
class LoopConfig:
    """How long, how often and where: the loop's own options.

    ``steps``: total steps (``None``: until a stop rule fires); ``stop_at`` ends the run
    earlier, as an interruption would (the schedule still spans ``steps``). A record is
    logged every ``log_every`` steps and at ``steps``; it holds held-out metrics every
    ``eval_every`` steps and at ``steps``. ``checkpoint`` is written atomically every
    ``checkpoint_every`` steps and at the end, holding ``format`` and the JSON-able
    ``config``; with ``resume`` an existing one is loaded and the run continues exactly.
    """

    steps: int | None
    batch_size: int
    seed: int = 0
    stop_at: int | None = None
    log_every: int = 1
    eval_every: int = 1
    metrics: str | os.PathLike[str] | None = None
    checkpoint: str | os.PathLike[str] | None = None
    checkpoint_every: int = 100
    resume: bool = False
    format: str = "neuralnum.train/1"
    config: dict[str, Any] = field(default_factory=dict)
    show_progress: bool = True
    desc: str = "train"

    def __post_init__(self) -> None:
        for name in ("batch_size", "log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("steps", "stop_at"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")

    @property
    def last(self) -> int | None:
        """The step the run ends at (``None``: open-ended)."""
        ends = [s for s in (self.steps, self.stop_at) if s is not None]
        return min(ends) if ends else None


Stop = Callable[[dict[str, Any]], bool]
Check = Callable[[dict[str, Any]], Any]


@dataclass
class Result:
    """How a run ended: the step reached and every logged record (this process's)."""

    step: int
    records: list[dict[str, Any]]


def train(loop: Loop, cfg: LoopConfig, dist: Distributed, *, stop: Sequence[Stop] = (),
          check: Check | None = None) -> Result:
    """Run ``loop`` as ``cfg`` says; returns the step reached and the logged records.

    ``stop``: functions of each evaluated record; one returning True ends the run.
    ``check(state)`` raises :class:`~neuralnum.core.runtime.CheckpointError` when a checkpoint
    to resume from does not belong to this run (format and weights are always checked).
    """
    raw = loop.model
    model = DistributedDataParallel(raw) if dist.enabled else raw
    gen = make_generator(cfg.seed)
    step = _resume(loop, cfg, gen, dist, check)
    log = MetricsLog(cfg.metrics if dist.is_main else None,
                     resume_step=step if cfg.resume else None)
    bar = progress(total=cfg.last, initial=step, desc=cfg.desc,
                   enabled=cfg.show_progress and dist.is_main)
    stopped = False
    try:
        while not stopped and (cfg.last is None or step < cfg.last):
            size = _batch_size(loop.hooks, cfg.batch_size)
            batch = loop.task.shard(loop.task.sample(size, gen), dist)
            metrics: dict[str, Any] = {"lr": loop.optimizer.param_groups[0]["lr"],
                                       "batch": size}
            loss = _gradients(model, loop, batch, step, dist)
            metrics["loss"] = loss
            for hook in loop.hooks:
                metrics.update(hook.on_gradients(raw) or {})
            loop.optimizer.step()
            if loop.average is not None:
                loop.average.update_parameters(raw)
            for hook in loop.hooks:
                metrics.update(hook.after_step(step, loss) or {})
            if loop.scheduler is not None:
                loop.scheduler.step()
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    metrics.update(loop.task.evaluate(_evaluated(loop)))
                record = log.log(step, **metrics)
                bar.set_postfix(loss=f"{loss:.3e}")
                stopped = any(bool(rule(record)) for rule in stop)
            if cfg.checkpoint is not None and step % cfg.checkpoint_every == 0:
                _save(loop, cfg, gen, step, dist)
    finally:
        bar.close()
    _finish(loop, model, cfg, gen, dist, log, step)
    if cfg.checkpoint is not None:
        _save(loop, cfg, gen, step, dist)
    return Result(step, log.records)


def _batch_size(hooks: Sequence[Hook], size: int) -> int:
    for hook in hooks:
        size = hook.batch_size(size)
    return size


def _gradients(model: nn.Module, loop: Loop, batch: Batch, step: int,
               dist: Distributed) -> float:
    """Fresh gradients of this rank's ``batch`` (DDP averages them); the global mean loss."""
    def backward(part: Batch) -> float:
        loss = loop.task.loss(model, part)
        loss.backward()
        return float(loss.detach())

    loop.optimizer.zero_grad(set_to_none=True)
    loss = next((value for hook in loop.hooks
                 if (value := hook.backward(step, batch, backward)) is not None), None)
    if loss is None:
        loss = backward(batch)
    mean = float(dist.all_reduce_mean(torch.tensor(loss, dtype=torch.float64,
                                                   device=dist.device)))
    if not math.isfinite(mean):
        raise FloatingPointError(f"training loss became {mean} at step {step}")
    return mean


def _evaluated(loop: Loop) -> nn.Module:
    """The module held-out metrics are computed with: the weight average when kept."""
    return loop.average.module if loop.average is not None else loop.model


def _finish(loop: Loop, model: nn.Module, cfg: LoopConfig, gen: torch.Generator,
            dist: Distributed, log: MetricsLog, step: int) -> None:
    """Copy the weight average into the model, run the finishers, log a final record."""
    if loop.average is not None:
        with torch.no_grad():
            for p, a in zip(loop.model.parameters(), loop.average.module.parameters(),
                            strict=True):
                p.copy_(a)
    metrics: dict[str, Any] = {}
    for finisher in loop.finishers:
        problem = _finisher_problem(model, loop, finisher.batch_size, gen, dist,
                                    functools.partial(log.log, step))
        metrics.update(finisher.run(problem) or {})
    if loop.finishers or loop.average is not None:
        log.log(step, final=True, **metrics, **loop.task.evaluate(loop.model))


def _finisher_problem(model: nn.Module, loop: Loop, size: int, gen: torch.Generator,
                      dist: Distributed, log: Callable[..., dict[str, Any]]
                      ) -> FinisherProblem:
    raw = loop.model
    params = {k: p for k, p in raw.named_parameters() if p.requires_grad}
    problem = FinisherProblem(model, params, None, None, loop.task, gen, log)
    if not size:
        return problem
    batch = loop.task.shard(loop.task.sample(size, gen), dist)

    def closure() -> torch.Tensor:
        for p in params.values():
            p.grad = None
        loss = loop.task.loss(model, batch)
        loss.backward()
        return dist.all_reduce_mean(loss.detach().clone())

    def residuals(values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return loop.task.residuals(lambda *args: functional_call(raw, dict(values), args),
                                   batch)

    problem.closure, problem.residuals = closure, residuals
    return problem


# --------------------------------------------------------------------------- checkpoints
def _save(loop: Loop, cfg: LoopConfig, gen: torch.Generator, step: int,
          dist: Distributed) -> None:
    if dist.is_main:
        state = training_state(
            step=step, model=loop.model, optimizer=loop.optimizer, scheduler=loop.scheduler,
            generators={"train": gen},
            hooks=[hook.state_dict() for hook in loop.hooks],
            average=loop.average.state_dict() if loop.average is not None else None)
        assert cfg.checkpoint is not None
        save_checkpoint(cfg.checkpoint, {"format": cfg.format, "config": cfg.config, **state})
    dist.barrier()


def _resume(loop: Loop, cfg: LoopConfig, gen: torch.Generator, dist: Distributed,
            check: Check | None) -> int:
    """Load the checkpoint into ``loop`` when resuming from an existing one; the step."""
    if not (cfg.resume and cfg.checkpoint is not None and Path(cfg.checkpoint).is_file()):
        return 0
    state = load_checkpoint(cfg.checkpoint, map_location=dist.device, format=cfg.format)
    if check is not None:
        check(state)
    if "step" not in state:
        raise CheckpointError(f"{cfg.checkpoint} holds no training state to resume")
    if len(state["hooks"]) != len(loop.hooks) or (state["average"] is None) != (
            loop.average is None):
        raise CheckpointError(f"{cfg.checkpoint} was written with other training plug-ins")
    step = restore_training_state(state, model=loop.model, optimizer=loop.optimizer,
                                  scheduler=loop.scheduler, generators={"train": gen})
    for hook, saved in zip(loop.hooks, state["hooks"], strict=True):
        hook.load_state_dict(saved)
    if loop.average is not None:
        loop.average.load_state_dict(state["average"])
    return step
