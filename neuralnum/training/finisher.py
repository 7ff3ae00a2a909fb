"""The second-order precision finisher: Levenberg–Marquardt on a learner's residuals.

:func:`finish_lm` takes a :class:`~neuralnum.solvers.learner.Learner` (after any first-order
phase, or from the exact construction) and minimises ``‖model(A, b, x) − label‖²`` over
a *fixed* training set with :class:`~neuralnum.training.levenberg_marquardt.LevenbergMarquardt`:

* float64 master parameters ``θ`` always, and the Jacobian taken through a float64 copy
  of the model, one problem at a time (``vmap(jacrev)``, per chunk of problems so memory
  stays bounded). The training residuals, which decide whether a step is accepted, are
  float64 too (``train_precision="float64"``); the fresh problems are evaluated in the
  learner's compute dtype, the model as deployed. For a float32 model this matters: with
  the float32 loss deciding (``train_precision="model"``) BaseConv from scratch stopped
  after 11 minutes at fresh 2.8e-12, where no step lowered the rounded loss any more;
  with the float64 loss deciding, the float32 model passes 1e-13 after 22 minutes and
  ends at 1.9e-14 (seed 0, 2 cores; ``docs/results/recipe_30min.json``). Float32 rounding
  of the final weights costs little; float32 noise in the loss blinds the optimiser long
  before that.
* **Generalisation by construction:** the numerical rank ``r`` of ``J`` is measured at
  the start and the training set holds at least ``rank_factor·r`` residuals (grown when
  it does not); a separate set of fresh problems is evaluated every iteration and the
  training set grows by ``grow`` (new problems appended) whenever fresh MSE exceeds
  ``gap`` × training MSE (both in the training precision).
* One metric record per iteration: train / fresh MSE, λ, step norm, wall time, peak
  memory (resident set size on the CPU).

Shapes: problems ``A: (B, n, d)``, ``b: (B, n)``, ``x: (B, d)``, labels ``(B, d)``;
``m = B·d`` residuals, ``p`` parameters.
"""

from __future__ import annotations

import copy
import dataclasses
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call
from torch.nn.utils import parameters_to_vector

from neuralnum.core.validation import check_choice, check_nonnegative_int, check_positive_int
from neuralnum.training.levenberg_marquardt import (
    LevenbergMarquardt,
    LMSettings,
    PerSampleProblem,
    normal_matrix,
    numerical_rank,
)

__all__ = ["FinisherSettings", "LMFinisher", "finish_lm", "learner_problem"]


#: ``FinisherSettings.train_precision`` choices.
TRAIN_PRECISIONS = ("float64", "model")


@dataclass(frozen=True)
class FinisherSettings:
    """``iterations``: LM iterations; ``problems``: initial training problems (0: sized
    from the rank of ``J`` so that residuals ≥ ``rank_factor``·rank); ``fresh``: fresh
    problems monitored each iteration; ``gap``/``grow``: grow the set by ``grow``× when
    fresh MSE > ``gap``·train MSE; ``until``: stop at this fresh MSE; ``minutes``: wall
    budget (0: none); ``chunk``: problems per Jacobian block; ``train_precision``: the
    dtype of the training residuals (and of the fresh residuals the growth rule compares
    them with) — ``"float64"`` (the master weights' loss) or ``"model"`` (the learner's
    compute dtype); ``snap_rtol``: before the first iteration, a model with
    ``snap_dead_channels`` (BaseConv) zeroes the smaller factor of every channel whose
    increment is below this fraction of its layer's largest, kept only if the training
    loss does not rise (0: never); ``lm``: the engine's settings."""

    iterations: int = 20
    problems: int = 0
    fresh: int = 256
    rank_factor: float = 1.5
    gap: float = 10.0
    grow: float = 1.5
    until: float = 0.0
    minutes: float = 0.0
    chunk: int = 128
    train_precision: str = "float64"
    snap_rtol: float = 1e-4
    lm: LMSettings = dataclasses.field(default_factory=LMSettings)

    def __post_init__(self) -> None:
        for name in ("iterations", "fresh", "chunk"):
            check_positive_int(getattr(self, name), name)
        check_nonnegative_int(self.problems, "problems")
        if self.until < 0 or self.minutes < 0:
            raise ValueError("until and minutes must be >= 0")
        if self.rank_factor < 1:
            raise ValueError(f"rank_factor must be >= 1 (residuals per rank of J), got "
                             f"{self.rank_factor}")
        if self.gap <= 1 or self.grow <= 1:
            raise ValueError(f"gap and grow must be > 1, got {self.gap}, {self.grow}")
        check_choice(self.train_precision, "train_precision", TRAIN_PRECISIONS)
        if not 0 <= self.snap_rtol < 1:
            raise ValueError(f"snap_rtol must be in [0, 1), got {self.snap_rtol}")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def learner_problem(learner: Any, data: tuple[torch.Tensor, ...], chunk: int = 128,
                    dtype: torch.dtype | None = None,
                    ) -> tuple[PerSampleProblem, torch.Tensor, Callable[[torch.Tensor], None]]:
    """The learner's residuals on ``data = (A, b, x, label)`` as a
    :class:`~neuralnum.training.levenberg_marquardt.PerSampleProblem` of flat float64 ``θ``.

    ``problem.residuals`` evaluates the model in ``dtype`` (default: the learner's compute
    dtype, i.e. the residuals of the model as deployed); the Jacobian is always float64.
    Returns ``(problem, θ₀: (p,) float64, write_back(θ))`` — ``write_back`` copies ``θ``
    into the learner's parameters (in their dtype).
    """
    model = learner.model
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    buffers = dict(model.named_buffers())
    compute = dtype or learner.precision.compute_dtype
    lin = copy.deepcopy(model).to(torch.float64)
    lin.check_input = lambda t: t  # the input checks branch on data: not under vmap
    evaluator = copy.deepcopy(model).to(compute)
    evaluator.check_input = lambda t: t
    for net, dtype in ((lin, torch.float64), (evaluator, compute)):
        if isinstance(getattr(net, "dtype", None), torch.dtype):
            net.dtype = dtype
    layout, objective = learner.layout, learner.objective
    A, b, x, label = data
    tokens = layout.encode(A, b, x)

    def unflatten(theta: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        parts = theta.to(dtype).split(sizes)
        out = {n: t.view(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        out.update({k: v.to(dtype) if v.is_floating_point() else v
                    for k, v in buffers.items()})
        return out

    def forward(net: torch.nn.Module, theta: torch.Tensor, dtype: torch.dtype,
                tok: torch.Tensor, xs: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        delta = functional_call(net, unflatten(theta, dtype), (tok.to(dtype),),
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

    theta0 = torch.cat([params[n].detach().reshape(-1).to(torch.float64) for n in names])

    @torch.no_grad()
    def write_back(theta: torch.Tensor) -> None:
        for n, t in zip(names, theta.split(sizes), strict=True):
            params[n].copy_(t.view(params[n].shape))

    problem = PerSampleProblem(residual, evaluate, (tokens, x, label), chunk=chunk)
    return problem, theta0, write_back


def _concat(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.cat([u, v]) for u, v in zip(a, b, strict=True))


def _rank_sized_set(learner: Any, draw: Callable[[int], tuple[torch.Tensor, ...]],
                    s: FinisherSettings, p: int
                    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, int, float]:
    """The training set (``≥ rank_factor ×`` the numerical rank of ``J`` residuals, the
    rank measured on a probe set of ``≥ p`` residuals at the starting weights), the
    starting weights, the rank and the condition number of ``JᵀJ``."""
    d = learner.d
    train = draw(s.problems or -(-p // d))
    problem, theta, _ = learner_problem(learner, train, s.chunk)
    with torch.no_grad():
        jtj, _ = normal_matrix(problem, theta, problem.residuals(theta))
    rank, cond = numerical_rank(jtj)
    del jtj
    need = -(-int(s.rank_factor * rank) // d)
    if s.problems and s.problems < need:
        raise ValueError(f"lm problems={s.problems} gives {s.problems * d} residuals, fewer "
                         f"than {s.rank_factor}× the rank {rank} of J: use problems >= {need} "
                         f"(or 0 to size it automatically)")
    if train[0].shape[0] < need:
        train = _concat(train, draw(need - train[0].shape[0]))
    return train, theta, rank, cond


def finish_lm(learner: Any, draw: Callable[[int], tuple[torch.Tensor, ...]],
              settings: FinisherSettings | None = None, *,
              fresh_set: tuple[torch.Tensor, ...] | None = None,
              log: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the LM finisher on ``learner``; ``draw(k)`` returns ``k`` new problems ``(A, b,
    x, label)`` (the training set and its growth; the fresh set unless ``fresh_set`` is
    given). Returns ``{"records": [...], "rank": r, "cond_jtj": κ, "problems": B,
    "parameters": p, "seconds": s}``; ``log`` receives every record. The learner's
    parameters hold the final θ on return. Each record has ``fresh_mse`` (the learner's
    compute dtype: the model as deployed) and ``fresh_mse_train_dtype`` (the training
    precision, which the growth rule compares with ``train_mse``).
    """
    s = settings or FinisherSettings()
    start = time.perf_counter()
    p = sum(q.numel() for q in learner.parameters())
    fresh = fresh_set if fresh_set is not None else draw(s.fresh)
    train, _, rank, cond = _rank_sized_set(learner, draw, s, p)
    train_dtype = torch.float64 if s.train_precision == "float64" else None
    snapped = _snap_dead_channels(learner, train, s, train_dtype)
    fresh_problem = learner_problem(learner, fresh, s.chunk)[0]
    fresh_in_train_dtype = (
        learner_problem(learner, fresh, s.chunk, train_dtype)[0]
        if train_dtype not in (None, learner.precision.compute_dtype) else fresh_problem)
    problem, theta, write_back = learner_problem(learner, train, s.chunk, train_dtype)

    def fresh_mses(theta: torch.Tensor) -> dict[str, float]:
        deployed = float(fresh_problem.residuals(theta).pow(2).mean())
        return {"fresh_mse": deployed, "fresh_mse_train_dtype": (
            deployed if fresh_in_train_dtype is fresh_problem
            else float(fresh_in_train_dtype.residuals(theta).pow(2).mean()))}

    records: list[dict[str, Any]] = [{
        "iteration": 0, "train_mse": float(problem.residuals(theta).pow(2).mean()),
        **fresh_mses(theta),
        "damping": s.lm.damping, "step_norm": 0.0, "accepted": True, "rejects": 0,
        "seconds": 0.0, "problems": train[0].shape[0], "wall": time.perf_counter() - start,
        "peak_mib": _peak_mib()}]
    if log is not None:
        log(records[0])
    lm: LevenbergMarquardt | None = LevenbergMarquardt(problem, theta, s.lm)
    for _ in range(s.iterations):
        if lm is None:
            problem, _, write_back = learner_problem(learner, train, s.chunk, train_dtype)
            lm = LevenbergMarquardt(problem, theta, s.lm)
        record = lm.step()
        theta = lm.theta
        record.update(iteration=len(records), train_mse=record.pop("loss"),
                      **fresh_mses(theta),
                      problems=train[0].shape[0], wall=time.perf_counter() - start,
                      peak_mib=_peak_mib())
        records.append(record)
        if log is not None:
            log(record)
        if record["fresh_mse"] <= s.until or (s.minutes and record["wall"] > 60 * s.minutes):
            break
        if not record["accepted"] and record["damping"] >= s.lm.damping_max:
            break
        if (record["fresh_mse_train_dtype"] > s.gap * max(record["train_mse"], 1e-300)
                and record["accepted"]):
            extra = int(train[0].shape[0] * (s.grow - 1))
            train = _concat(train, draw(extra))
            s = _with_lm(s, lm.damping)
            lm = None
    write_back(theta)
    return {"records": records, "rank": rank, "cond_jtj": cond, "snapped": snapped,
            "problems": train[0].shape[0], "parameters": p,
            "seconds": time.perf_counter() - start}


def _snap_dead_channels(learner: Any, train: tuple[torch.Tensor, ...], s: FinisherSettings,
                        dtype: torch.dtype | None) -> list[tuple[int, int, str]]:
    """``learner.model.snap_dead_channels`` on the training problems' tokens (where the
    model has it and ``s.snap_rtol > 0``), undone if the training loss rose; returns the
    channels zeroed.

    Measured on BaseConv from the exact construction + 1e-3 noise (float64, eigh route
    with 6 chord corrections, seed 0): 48 of 63 channels snapped (their increments ~1e-5
    against ≥ 0.39 for the live ones); fresh one-step MSE at roundoff (3.6e-31), where
    without snapping (and 3 corrections) it was 2.8e-20 after 14 iterations and converging
    linearly (``docs/results/recipe.json``)."""
    model = learner.model
    if not s.snap_rtol or not hasattr(model, "snap_dead_channels"):
        return []
    problem, before, write_back = learner_problem(learner, train, s.chunk, dtype)
    A, b, x, _ = train
    snapped = model.snap_dead_channels(learner.layout.encode(A, b, x), s.snap_rtol)
    if snapped:
        # θ in learner_problem's order: the trainable parameters, flattened, float64
        after = parameters_to_vector(
            [p for p in model.parameters() if p.requires_grad]).to(torch.float64)
        if problem.residuals(after).pow(2).sum() > problem.residuals(before).pow(2).sum():
            write_back(before)
            return []
    return snapped


def _with_lm(s: FinisherSettings, damping: float) -> FinisherSettings:
    """``s`` whose engine restarts at ``damping`` (clamped to the settings' range)."""
    lm = s.lm
    damping = min(max(damping, lm.damping_floor), lm.damping_max)
    return dataclasses.replace(s, lm=dataclasses.replace(lm, damping=damping))


@dataclass
class LMFinisher:
    """The LM finisher as a training-loop finisher (issue 14's ``Finisher`` seam).

    ``batch_size = 0``: it draws its own problems through the loop's
    ``problem.task.sample(k, problem.generator)``, finds the learner as
    ``problem.task.learner`` and logs one record per iteration with
    ``problem.log(lm=record)``; returns the final fresh / train MSE, rank and problems.
    """

    settings: FinisherSettings
    batch_size: int = 0

    def run(self, problem: Any) -> dict[str, float]:
        task = problem.task
        report = finish_lm(task.learner, lambda k: task.sample(k, problem.generator),
                           self.settings, log=lambda r: problem.log(lm=r))
        last = report["records"][-1]
        return {"lm_fresh_mse": last["fresh_mse"], "lm_train_mse": last["train_mse"],
                "lm_rank": report["rank"], "lm_problems": report["problems"]}
