"""The one training loop: ``neuralnum``'s Learner and ``structured.train`` both run it.

Read :func:`train` top to bottom (as nanoGPT's ``train.py``): wrap the model in
``DistributedDataParallel`` under ``torchrun``, resume from a checkpoint, then per step
draw the global batch from one seeded generator, keep this rank's slice, compute the
gradients, let the hooks edit them, ``optimizer.step()``, update the weight average,
``scheduler.step()``, log, checkpoint; after the loop the finishers run (on a generator
of their own stream, :data:`FINISHER_STREAM`) and the final checkpoint is written. The
users differ only in their :class:`~neuralnum.training.plugins.Task` (what a batch is and
what the loss is), their optimizer and their plug-ins (:mod:`neuralnum.training.plugins`).

What a run is told comes in one place: :class:`RunOptions` (how long, how often, where),
which :class:`LoopConfig` extends with what the program running the loop adds, and
which :class:`neuralnum.training.fit.FitOptions` extends for a learner's training.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel

from neuralnum.core.flags import checked
from neuralnum.core.runtime import (
    CheckpointError,
    Distributed,
    MetricsLog,
    check_output_path,
    load_checkpoint,
    make_generator,
    progress,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from neuralnum.core.validation import check_nonnegative_int, check_positive_int
from neuralnum.training.plugins import Batch, Finisher, FinisherProblem, Hook, Task

__all__ = ["EVAL_STREAM", "FINISHER_STREAM", "POOL_STREAM", "Loop", "LoopConfig", "Result",
           "RunOptions", "train"]

#: The run's streams besides the batches' (seeded with the run's seed): the finishers'
#: generator, the held-out problems and a fixed pool of problems are seeded with the seed
#: plus these offsets.
FINISHER_STREAM, EVAL_STREAM, POOL_STREAM = 7, 1_000_003, 2_000_003


@dataclass
class Loop:
    """The objects one run trains with (the caller builds them; :func:`train` runs them).

    ``model`` is the unwrapped module (parameters in their training dtype, on the
    device); ``average`` an :func:`ema_average` of it or ``None``; ``generator`` the one
    the batches are drawn from (``None``: a fresh one seeded with the run's seed). A
    caller that keeps its own generator continues its stream across runs: phases trained
    one after another on one stream, or a run continued in memory
    (:attr:`LoopConfig.start`).
    """

    model: nn.Module
    task: Task
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR | None = None
    hooks: Sequence[Hook] = ()
    finishers: Sequence[Finisher] = ()
    average: AveragedModel | None = None
    generator: torch.Generator | None = None


#: A command line's output file: refused up front when it cannot be written.
_OUTPUT_FILE = functools.partial(check_output_path, directory=False)


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How long, how often and where: what the caller of a run decides.

    ``steps``: total steps (``None``: until a stop rule fires); ``seed``: the one seed of
    the run (batches, finishers and held-out data derive their generators from it); a
    record is logged every ``log_every`` steps and at ``steps`` (JSON lines in
    ``metrics``); ``checkpoint`` is written atomically every ``checkpoint_every`` steps
    and at the end; with ``resume`` an existing one is loaded and the run continues
    exactly; ``show_progress``: a progress bar on the main process.
    """

    steps: int | None = None
    seed: int = 0
    log_every: int = 10
    metrics: Path | None = field(default=None, metadata=checked(_OUTPUT_FILE))
    checkpoint: Path | None = field(default=None, metadata=checked(_OUTPUT_FILE))
    checkpoint_every: int = 100
    resume: bool = False
    show_progress: bool = True

    def __post_init__(self) -> None:
        for name in ("log_every", "checkpoint_every"):
            check_positive_int(getattr(self, name), name)
        check_nonnegative_int(self.seed, "seed")
        if self.steps is not None:
            check_nonnegative_int(self.steps, "steps")
        for name in ("metrics", "checkpoint"):  # str or PathLike in, Path kept
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))


@dataclass(frozen=True, kw_only=True)
class LoopConfig(RunOptions):
    """:class:`RunOptions` plus what the program running the loop adds: the global
    ``batch_size`` (hooks may change it), ``stop_at`` (end the run earlier, as an
    interruption would; the schedule still spans ``steps``), ``start`` (continue in
    memory from that step: the caller's :class:`Loop` — its generator included — is as
    that step left it, e.g. from a run with ``stop_at=start``; a checkpoint resumed
    from takes precedence), held-out metrics every
    ``eval_every`` steps (and at ``steps``) in the logged records, the checkpoint's
    ``format`` and JSON-able ``config``, and the progress bar's ``desc``."""

    batch_size: int
    stop_at: int | None = None
    start: int = 0
    eval_every: int = 1
    format: str = "neuralnum.train/1"
    config: dict[str, Any] = field(default_factory=dict)
    desc: str = "train"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_size", "eval_every"):
            check_positive_int(getattr(self, name), name)
        for name in ("stop_at", "start"):
            if getattr(self, name) is not None:
                check_nonnegative_int(getattr(self, name), name)

    @classmethod
    def of(cls, options: RunOptions, **extra: Any) -> LoopConfig:
        """The loop's config for a run of ``options`` (its :class:`RunOptions` fields)
        plus ``extra`` (``batch_size`` and the rest)."""
        shared = {f.name: getattr(options, f.name) for f in dataclasses.fields(RunOptions)}
        return cls(**shared, **extra)

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
    if cfg.start and loop.generator is None:
        raise ValueError(f"start={cfg.start} continues a run in memory: give the loop the "
                         "generator its batches were drawn from (Loop.generator)")
    raw = loop.model
    model = DistributedDataParallel(raw) if dist.enabled else raw
    gen = loop.generator if loop.generator is not None else make_generator(cfg.seed)
    step = _resume(loop, cfg, gen, dist, check)
    log = MetricsLog(cfg.metrics if dist.is_main else None,
                     resume_step=step if cfg.resume or cfg.start else None)
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
    _finish(loop, model, cfg, dist, log, step)
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


def _finish(loop: Loop, model: nn.Module, cfg: LoopConfig, dist: Distributed,
            log: MetricsLog, step: int) -> None:
    """Copy the weight average into the model, run the finishers, log a final record."""
    if loop.average is not None:
        with torch.no_grad():
            for p, a in zip(loop.model.parameters(), loop.average.module.parameters(),
                            strict=True):
                p.copy_(a)
    metrics: dict[str, Any] = {}
    gen = make_generator(cfg.seed + FINISHER_STREAM)
    for finisher in loop.finishers:
        problem = _finisher_problem(model, loop, finisher.batch_size, gen, dist,
                                    functools.partial(log.log, step))
        metrics.update(finisher.run(problem) or {})
    if loop.finishers or loop.average is not None:
        log.log(step, final=True, **metrics, **loop.task.evaluate(loop.model))


def _finisher_problem(model: nn.Module, loop: Loop, size: int, gen: torch.Generator,
                      dist: Distributed, log: Callable[..., dict[str, Any]]
                      ) -> FinisherProblem:
    params = {k: p for k, p in loop.model.named_parameters() if p.requires_grad}
    problem = FinisherProblem(model, params, loop.task, gen, log)
    if size:
        batch = loop.task.shard(loop.task.sample(size, gen), dist)

        def closure() -> torch.Tensor:
            for p in params.values():
                p.grad = None
            loss = loop.task.loss(model, batch)
            loss.backward()
            return dist.all_reduce_mean(loss.detach().clone())

        problem.closure = closure
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
    """Load the checkpoint into ``loop`` when resuming from an existing one; the step
    (``cfg.start`` when there is none)."""
    if not (cfg.resume and cfg.checkpoint is not None and Path(cfg.checkpoint).is_file()):
        return cfg.start
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
