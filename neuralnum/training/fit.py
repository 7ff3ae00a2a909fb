"""Training a :class:`~neuralnum.solvers.learner.Learner`: least-squares problems as a loop task.

:func:`fit` is what :meth:`Learner.fit` runs: it builds the recipe's optimizer, schedule,
hooks, weight average and finishers (:func:`neuralnum.training.recipe.make_training`), a
:class:`ProblemTask` (a batch is ``(A, b, x, label)`` of fresh problems from the family
or of a fixed pool; the loss is :func:`neuralnum.training.recipe.loss_fn` of the prediction) and
hands them to the one training loop, :func:`neuralnum.training.loop.train`. Under
``torchrun --nproc_per_node=N`` it runs unchanged: every rank draws the same global batch
from the same generator and keeps its slice; ``DistributedDataParallel`` averages the
gradients, so the trajectory matches the single-process one up to reduction order.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from neuralnum.core.runtime import Distributed, init_distributed, make_generator
from neuralnum.training.loop import Loop, LoopConfig, Task, train
from neuralnum.training.predictor import one_step_metrics
from neuralnum.training.recipe import loss_fn, make_training

if TYPE_CHECKING:
    from neuralnum.solvers.learner import Learner

__all__ = ["ProblemTask", "draw_problems", "fit"]

Callback = Callable[["Learner", dict[str, Any]], bool | None]


def draw_problems(learner: Learner, family: Any, size: int,
                  gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``(A, b, x, label)`` of ``size`` new problems of ``family`` (iterates and labels by
    the learner's objective), drawn from ``gen`` on the CPU and moved to the learner's
    device: ``(B, n, d)``, ``(B, n)``, ``(B, d)``, ``(B, d)`` in the learner's dtype.

    Everything is drawn and labelled in float64 and rounded to the learner's dtype at the
    end, so a seed gives the same problems in every dtype (a float32 learner sees the
    float64 stream rounded, with labels rounded once). Drawing the iterates in float32
    took another random stream, on which BaseConv from scratch in float32 (seed 0, 1200
    steps) stalled at one-step MSE 5.0e-2 where float64 reached 8.2e-5; on the shared
    stream float32 reaches 5.4e-5 (float32 and float64 gradients on one batch agree to
    3e-7: the stall was that stream, not float32 arithmetic)."""
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
    ``recipe.pool_size`` drawn once from ``seed + 2_000_003``; the held-out set of
    ``eval_batch`` problems comes from ``seed + 1_000_003``.
    """

    def __init__(self, learner: Learner, family: Any, *, seed: int, eval_batch: int):
        self.learner, self.family = learner, family
        self.relative = learner.recipe.relative_loss
        self.eval_set = draw_problems(learner, family, eval_batch,
                                      make_generator(seed + 1_000_003))
        self.pool = None
        if not learner.recipe.fresh:
            self.pool = draw_problems(learner, family, learner.recipe.pool_size,
                                      make_generator(seed + 2_000_003))

    def sample(self, size: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        if self.pool is None:
            return draw_problems(self.learner, self.family, size, gen)
        idx = torch.randint(self.pool[0].shape[0], (size,), generator=gen)
        return tuple(t[idx.to(t.device)] for t in self.pool)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        A, b, x, label = batch
        return loss_fn(model(A, b, x), label, relative=self.relative)

    def residuals(self, forward: Callable[..., torch.Tensor],
                  batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """``(B·d,)`` residuals whose squared sum is :meth:`loss`."""
        A, b, x, label = batch
        r = forward(A, b, x) - label
        if self.relative:
            tiny = torch.finfo(label.dtype).tiny
            r = r / label.pow(2).sum(dim=1, keepdim=True).clamp_min(tiny).sqrt()
            return r.flatten() / r.shape[0] ** 0.5
        return r.flatten() / r.numel() ** 0.5

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        A, b, x, label = self.eval_set
        return one_step_metrics(model(A, b, x), label)


def _callback_stops(learner: Learner, callback: Callback, record: dict[str, Any]) -> bool:
    return bool(callback(learner, record))


def _mse_reached(until_mse: float, record: dict[str, Any]) -> bool:
    return record["mse"] <= until_mse


def fit(
    learner: Learner,
    family: Any,
    steps: int | None = None,
    *,
    until_mse: float | None = None,
    callbacks: Iterable[Callback] = (),
    seed: int = 0,
    log_every: int = 10,
    eval_batch: int = 256,
    metrics: str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    distributed: Distributed | None = None,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Train ``learner`` on problems from ``family`` for ``steps`` total steps or until the
    eval MSE ≤ ``until_mse`` (checked every ``log_every`` steps); returns the records.

    ``family.sample(batch, generator, dtype)`` must return problems with ``A, b,
    x_star``. Every ``log_every`` steps a record ``{step, loss, lr, batch, mse, rel_mse,
    digits}`` (eval on a fixed held-out batch of ``eval_batch``) goes to ``metrics``
    (JSON lines) and the callbacks ``callback(learner, record)``; one returning True
    stops training. ``checkpoint`` is written atomically every ``checkpoint_every`` steps
    and at the end; with ``resume=True`` an existing one is loaded and training continues
    to the same ``steps``, reproducing the uninterrupted trajectory exactly.
    """
    from neuralnum.solvers.learner import FORMAT

    if steps is None and until_mse is None:
        raise ValueError("give steps, until_mse, or both")
    cfg = LoopConfig(steps=steps, batch_size=learner.recipe.batch_size, seed=seed,
                     log_every=log_every, eval_every=log_every, metrics=metrics,
                     checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                     resume=resume, format=FORMAT, config=learner.config(),
                     show_progress=show_progress, desc="fit")
    dist = distributed or init_distributed(
        device=None if learner.device.type == "cuda" else learner.device)  # cuda:LOCAL_RANK
    if dist.device != learner.device:
        learner.to(dist.device)
    made = make_training(learner.recipe, learner.net, horizon=steps,
                         world_size=dist.world_size)
    task = ProblemTask(learner, family, seed=seed, eval_batch=eval_batch)
    stop = [functools.partial(_callback_stops, learner, cb) for cb in callbacks]
    if until_mse is not None:
        stop.append(functools.partial(_mse_reached, until_mse))
    loop = Loop(learner.net, task, made.optimizer, made.scheduler, made.hooks,
                made.finishers, made.average)
    result = train(loop, cfg, dist, stop=stop,
                   check=functools.partial(learner.check_compatible, path=checkpoint))
    learner.step_count = result.step
    return result.records
