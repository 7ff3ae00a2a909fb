"""Training a learner: least-squares problems as a loop task, and :func:`fit`.

:func:`fit` is what :meth:`Learner.fit <neuralnum.solvers.learner.Learner.fit>` runs: it
builds the recipe's optimizer, schedule, hooks, weight average and finishers
(:func:`neuralnum.training.assembly.make_training`), a :class:`ProblemTask` (a batch is
``(A, b, x, label)`` of fresh problems from the family or of a fixed pool; the loss is
:func:`~neuralnum.training.objectives.loss_fn` of the prediction) and hands them to the
one training loop, :func:`neuralnum.training.loop.train`, with the run's
:class:`FitOptions`. Under ``torchrun --nproc_per_node=N`` it runs unchanged: every rank
draws the same global batch from the same generator and keeps its slice;
``DistributedDataParallel`` averages the gradients, so the trajectory matches the
single-process one up to reduction order.

The learner is anything with the :class:`Trainable` attributes (the
:class:`~neuralnum.solvers.learner.Learner` is one); this layer does not import it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from neuralnum.core.runtime import Distributed, init_distributed, make_generator
from neuralnum.core.validation import Precision, check_positive_int, check_range
from neuralnum.models.base import count_parameters
from neuralnum.training.assembly import make_training
from neuralnum.training.lm_problems import LeastSquaresProblem
from neuralnum.training.loop import (
    EVAL_STREAM,
    POOL_STREAM,
    Loop,
    LoopConfig,
    RunOptions,
    train,
)
from neuralnum.training.objectives import Objective, loss_fn
from neuralnum.training.plugins import Task
from neuralnum.training.predictor import one_step_metrics
from neuralnum.training.recipe import Recipe
from neuralnum.training.token_residuals import learner_problem, snap_dead_channels

__all__ = ["FitOptions", "ProblemTask", "Trainable",
           "draw_problems", "fit"]


class Trainable(Protocol):
    """What :func:`fit` needs of a learner (a :class:`ProblemTask` also reads its
    ``objective``, ``n`` and ``d``)."""

    FORMAT: str
    recipe: Recipe
    objective: Objective
    net: nn.Module
    precision: Precision
    n: int
    d: int
    device: torch.device
    dtype: torch.dtype
    step_count: int

    def to(self, device: str | torch.device) -> Any: ...

    def config(self) -> dict[str, Any]: ...

    def make_task(self, family: Any, *, seed: int, eval_batch: int) -> Task: ...

    def check_compatible(self, state: dict[str, Any], path: object) -> dict[str, Any]: ...


@dataclass(frozen=True, kw_only=True)
class FitOptions(RunOptions):
    """:class:`~neuralnum.training.loop.RunOptions` plus what ends or measures a learner's
    training: ``until_mse`` (stop once the held-out MSE, checked at every logged step, is
    at most this), ``minutes`` (stop after this wall time) and ``eval_batch`` (held-out
    problems behind the logged one-step metrics). Give ``steps``, ``until_mse``,
    ``minutes`` or several."""

    until_mse: float | None = None
    minutes: float | None = None
    eval_batch: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int(self.eval_batch, "eval_batch")
        for name in ("until_mse", "minutes"):  # inf: stop at the first logged step / never
            if getattr(self, name) is not None:
                check_range(getattr(self, name), name, 0, infinite=True)

    @property
    def bounded(self) -> bool:
        """Whether something ends the run (steps, a target MSE or a wall-clock budget)."""
        return any(v is not None for v in (self.steps, self.until_mse, self.minutes))


Callback = Callable[[Trainable, dict[str, Any]], bool | None]
Data = tuple[torch.Tensor, ...]


def draw_problems(learner: Trainable, family: Any, size: int,
                  gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``(A, b, x, label)`` of ``size`` new problems of ``family`` (iterates and labels by
    the learner's objective), drawn from ``gen`` on the CPU and moved to the learner's
    device: ``(B, n, d)``, ``(B, n)``, ``(B, d)``, ``(B, d)`` in the learner's dtype.

    Everything is drawn and labelled in float64 and rounded to the learner's dtype at the
    end, so a seed gives the same problems in every dtype (a float32 learner sees the
    float64 stream rounded, with labels rounded once)."""
    problems = family.sample(size, gen, torch.float64)
    A, b, x_star = problems.A, problems.b, problems.x_star
    if A.shape[1:] != (learner.n, learner.d):
        raise ValueError(f"family produces {tuple(A.shape[1:])} problems but the learner "
                         f"was built for (n, d) = {(learner.n, learner.d)}")
    objective = learner.objective
    if x_star is None:
        if not objective.iterative:
            raise ValueError("the end-to-end objective needs families that know x_star "
                             "(noise = 0)")
        x_star = A.new_zeros(A.shape[0], A.shape[2])  # iterates drawn around 0
    x = objective.sample_iterate(x_star, gen)
    batch = (A, b, x, objective.label(A, b, x, x_star))
    return tuple(t.to(device=learner.device, dtype=learner.dtype) for t in batch)


class ProblemTask(Task):
    """Batches ``(A, b, x, label)`` of ``family``'s problems for ``learner``.

    Fresh problems every step, or (``recipe.fresh=False``) rows of a fixed pool of
    ``recipe.pool_size`` drawn once from ``seed +`` :data:`POOL_STREAM`; the held-out
    problems (:attr:`held_out`, ``eval_batch`` of them: the logged metrics and the
    Levenberg–Marquardt finisher's monitor) come from ``seed +`` :data:`EVAL_STREAM`.
    """

    def __init__(self, learner: Trainable, family: Any, *, seed: int, eval_batch: int):
        self.learner, self.family = learner, family
        self.relative = learner.recipe.relative_loss
        self.held_out = draw_problems(learner, family, eval_batch,
                                      make_generator(seed + EVAL_STREAM))
        self.pool = None
        if not learner.recipe.fresh:
            self.pool = draw_problems(learner, family, learner.recipe.pool_size,
                                      make_generator(seed + POOL_STREAM))

    def sample(self, size: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        if self.pool is None:
            return draw_problems(self.learner, self.family, size, gen)
        idx = torch.randint(self.pool[0].shape[0], (size,), generator=gen)
        return tuple(t[idx.to(t.device)] for t in self.pool)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        A, b, x, label = batch
        return loss_fn(model(A, b, x), label, relative=self.relative)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        A, b, x, label = self.held_out
        return one_step_metrics(model(A, b, x), label)

    # the Levenberg–Marquardt finisher's view (neuralnum.training.finisher.ResidualTask)
    @property
    def parameters(self) -> int:
        return count_parameters(self.learner.net)

    @property
    def residuals_per_problem(self) -> float:
        return self.learner.d

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.learner.precision.compute_dtype

    def draw(self, k: int, generator: torch.Generator) -> Data:
        return self.sample(k, generator)

    def join(self, a: Data, b: Data) -> Data:
        return tuple(torch.cat([u, v]) for u, v in zip(a, b, strict=True))

    def size(self, data: Data) -> int:
        return data[0].shape[0]

    def count(self, data: Data) -> int:
        return data[3].numel()

    def residual_problem(self, data: Data, chunk: int, dtype: torch.dtype | None
                         ) -> tuple[LeastSquaresProblem, torch.Tensor,
                                    Callable[[torch.Tensor], None]]:
        return learner_problem(self.learner, data, chunk, dtype)

    def snap(self, data: Data, rtol: float, chunk: int, dtype: torch.dtype | None) -> list:
        return snap_dead_channels(self.learner, data, rtol, chunk, dtype)


def _stop_rules(learner: Trainable, options: FitOptions,
                callbacks: Iterable[Callback]) -> list[Callable[[dict[str, Any]], bool]]:
    """The functions of each logged record that end the run: the callbacks, the held-out
    target ``until_mse`` and the wall-clock budget ``minutes``."""
    rules = [functools.partial(_callback_stops, learner, cb) for cb in callbacks]
    if options.until_mse is not None:
        rules.append(functools.partial(_mse_reached, options.until_mse))
    if options.minutes is not None:
        rules.append(functools.partial(_out_of_time, time.monotonic() + 60 * options.minutes))
    return rules


def _callback_stops(learner: Trainable, callback: Callback, record: dict[str, Any]) -> bool:
    return bool(callback(learner, record))


def _mse_reached(until_mse: float, record: dict[str, Any]) -> bool:
    return record["mse"] <= until_mse


def _out_of_time(deadline: float, record: dict[str, Any]) -> bool:
    return time.monotonic() > deadline


def fit(learner: Trainable, family: Any, options: FitOptions, *,
        callbacks: Iterable[Callback] = (),
        distributed: Distributed | None = None) -> list[dict[str, Any]]:
    """Train ``learner`` on the problems ``family`` describes as ``options`` say; returns
    the logged records.

    The learner makes the loop's task of ``family`` (``learner.make_task``: a
    :class:`ProblemTask` of a problem family for a token learner, a
    :class:`~neuralnum.training.mixed_shapes.MixedShapeTask` of a shape mixture for the
    shape-general operator). Every ``log_every`` steps a record ``{step, loss, lr, batch,
    …}`` with the task's held-out metrics goes to ``metrics`` (JSON lines) and the
    callbacks ``callback(learner, record)``; one returning True stops training, as do
    ``until_mse`` and ``minutes``. ``checkpoint`` is written atomically every
    ``checkpoint_every`` steps and at the end; with ``resume`` an existing one is loaded
    and training continues to the same ``steps``, reproducing the uninterrupted
    trajectory exactly.
    """
    if not options.bounded:
        raise ValueError("give steps, until_mse or minutes (or several)")
    cfg = LoopConfig.of(options, batch_size=learner.recipe.batch_size,
                        eval_every=options.log_every, format=learner.FORMAT,
                        config=learner.config(), desc="fit")
    dist = distributed or init_distributed(
        device=None if learner.device.type == "cuda" else learner.device)  # cuda:LOCAL_RANK
    if dist.device != learner.device:
        learner.to(dist.device)
    made = make_training(learner.recipe, learner.net, horizon=options.steps,
                         world_size=dist.world_size)
    task = learner.make_task(family, seed=options.seed, eval_batch=options.eval_batch)
    loop = Loop(learner.net, task, made.optimizer, made.scheduler, made.hooks,
                made.finishers, made.average)
    result = train(loop, cfg, dist, stop=_stop_rules(learner, options, callbacks),
                   check=functools.partial(learner.check_compatible, path=options.checkpoint))
    learner.step_count = result.step
    return result.records
