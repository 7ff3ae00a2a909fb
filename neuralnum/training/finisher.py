"""The second-order precision finisher: Levenberg–Marquardt on a learner's residuals.

:class:`LMFinisher` is the training loop's finisher (``Recipe(finisher="lm")``): after the
first-order phase the loop hands it the task, a generator of its own stream and a log,
and it minimises ``‖model(A, b, x) − label‖²`` over a *fixed* training set with
:class:`~neuralnum.training.levenberg_marquardt.LevenbergMarquardt` (:func:`finish_lm`):

* float64 master parameters ``θ`` always, and the Jacobian taken through a float64 copy
  of the model, one problem at a time (``vmap(jacrev)``, per chunk of problems so memory
  stays bounded). The training residuals, which decide whether a step is accepted, are
  float64 too (``train_precision="float64"``); the held-out problems are evaluated in the
  learner's compute dtype, the model as deployed. For a float32 model this matters: with
  the float32 loss deciding, rounding soon hides every decrease, long before float32
  rounding of the final weights would cost anything.
* **Generalisation by construction:** the numerical rank ``r`` of ``J`` is measured at
  the start and the training set holds at least ``rank_factor·r`` residuals (grown when
  it does not); the task's held-out problems (the ones the loop evaluates on) are
  evaluated every iteration and the training set grows by ``grow`` (new problems
  appended) whenever their MSE exceeds ``gap`` × training MSE (both in the training
  precision).
* One metric record per iteration: train / held-out MSE, λ, step norm, wall time, peak
  memory (resident set size on the CPU).

Shapes: problems ``A: (B, n, d)``, ``b: (B, n)``, ``x: (B, d)``, labels ``(B, d)``;
``m = B·d`` residuals, ``p`` parameters.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from neuralnum.core.validation import (
    check_config_choices,
    check_nonnegative_int,
    check_positive_int,
    check_range,
)
from neuralnum.training.levenberg_marquardt import LevenbergMarquardt, LMSettings
from neuralnum.training.lm_problems import LeastSquaresProblem, normal_matrix, numerical_rank
from neuralnum.training.loop import Finisher, FinisherProblem

__all__ = ["TRAIN_PRECISIONS", "FinisherSettings", "LMFinisher", "ResidualTask", "finish_lm"]

TrainPrecision = Literal["float64", "model"]
#: ``FinisherSettings.train_precision`` choices.
TRAIN_PRECISIONS: tuple[str, ...] = TrainPrecision.__args__


@dataclass(frozen=True)
class FinisherSettings:
    """``problems``: initial training problems (0: sized from the rank of ``J`` so that
    residuals ≥ ``rank_factor``·rank); ``gap``/``grow``: grow the set by ``grow``× when
    held-out MSE > ``gap``·train MSE; ``until``: stop at this held-out MSE; ``minutes``:
    wall budget (0: none); ``chunk``: problems per Jacobian block; ``train_precision``:
    the dtype of the training residuals (and of the held-out residuals the growth rule
    compares them with) — ``"float64"`` (the master weights' loss) or ``"model"`` (the
    learner's compute dtype); ``snap_rtol``: before the first iteration, a model with
    ``snap_dead_channels`` (BaseConv) zeroes the smaller factor of every channel whose
    increment is below this fraction of its layer's largest, kept only if the training
    loss does not rise (0: never); ``engine``: the Levenberg–Marquardt engine's settings."""

    problems: int = 0
    rank_factor: float = 1.5
    gap: float = 10.0
    grow: float = 1.5
    until: float = 0.0
    minutes: float = 0.0
    chunk: int = 128
    train_precision: TrainPrecision = "float64"
    snap_rtol: float = 1e-4
    engine: LMSettings = dataclasses.field(default_factory=LMSettings)

    def __post_init__(self) -> None:
        check_config_choices(self)
        check_nonnegative_int(self.problems, "problems")
        check_positive_int(self.chunk, "chunk")
        check_range(self.rank_factor, "rank_factor", 1)
        for name in ("gap", "grow"):
            check_range(getattr(self, name), name, 1, low_open=True)
        for name in ("until", "minutes"):
            check_range(getattr(self, name), name, 0)
        check_range(self.snap_rtol, "snap_rtol", 0, 1, high_open=True)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ResidualTask(Protocol):
    """What the finisher needs of the loop's task: its held-out problems, new training
    problems from a generator, and their residuals as a least-squares problem of the flat
    float64 weights. A set of problems is whatever the task makes of it (a tuple of
    tensors of one shape, or a list of such groups of several shapes)."""

    held_out: Any
    parameters: int  # trainable scalars (the length of θ)
    residuals_per_problem: float  # of a drawn problem, on average (sizes the sets)
    compute_dtype: torch.dtype  # the dtype of the model as deployed

    def draw(self, k: int, generator: torch.Generator) -> Any: ...

    def join(self, a: Any, b: Any) -> Any: ...

    def size(self, data: Any) -> int: ...

    def count(self, data: Any) -> int: ...

    def residual_problem(self, data: Any, chunk: int, dtype: torch.dtype | None
                         ) -> tuple[LeastSquaresProblem, torch.Tensor,
                                    Callable[[torch.Tensor], None]]: ...

    def snap(self, data: Any, rtol: float, chunk: int, dtype: torch.dtype | None) -> list: ...


def _rank_sized_set(task: ResidualTask, draw: Callable[[int], Any], s: FinisherSettings
                    ) -> tuple[Any, int, float]:
    """The training set (``≥ rank_factor ×`` the numerical rank of ``J`` residuals, the
    rank measured on a probe set of ``≥ p`` residuals at the starting weights), the rank
    and the condition number of ``JᵀJ``."""
    per = task.residuals_per_problem
    train = draw(s.problems or -(-task.parameters // int(per)))
    problem, theta, _ = task.residual_problem(train, s.chunk, None)
    with torch.no_grad():
        jtj, _ = normal_matrix(problem, theta, problem.residuals(theta))
    rank, cond = numerical_rank(jtj)
    del jtj
    need = int(s.rank_factor * rank)
    if s.problems and task.count(train) < need:
        raise ValueError(f"lm problems={s.problems} gives {task.count(train)} residuals, "
                         f"fewer than {s.rank_factor}× the rank {rank} of J: use problems >= "
                         f"{-(-need // int(per))} (or 0 to size it automatically)")
    if task.count(train) < need:
        train = task.join(train, draw(-(-(need - task.count(train)) // int(per))))
    return train, rank, cond


class _HeldOut:
    """MSE of the held-out problems in the deployed dtype and in the training precision."""

    def __init__(self, task: ResidualTask, s: FinisherSettings,
                 train_dtype: torch.dtype | None) -> None:
        self.deployed = task.residual_problem(task.held_out, s.chunk, None)[0]
        same = train_dtype in (None, task.compute_dtype)
        self.in_train_dtype = (self.deployed if same else
                               task.residual_problem(task.held_out, s.chunk, train_dtype)[0])

    def __call__(self, theta: torch.Tensor) -> dict[str, float]:
        deployed = float(self.deployed.residuals(theta).pow(2).mean())
        other = (deployed if self.in_train_dtype is self.deployed
                 else float(self.in_train_dtype.residuals(theta).pow(2).mean()))
        return {"fresh_mse": deployed, "fresh_mse_train_dtype": other}


def _should_stop(record: dict[str, Any], s: FinisherSettings) -> bool:
    """The held-out target is met, the wall budget is spent, or λ hit its ceiling."""
    if record["fresh_mse"] <= s.until or (s.minutes and record["wall"] > 60 * s.minutes):
        return True
    return not record["accepted"] and record["damping"] >= s.engine.damping_max


def finish_lm(task: ResidualTask, draw: Callable[[int], Any], settings: FinisherSettings,
              iterations: int, *,
              log: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run ``iterations`` LM iterations on the weights of ``task``'s model; ``draw(k)``
    returns ``k`` new training problems (the training set and its growth); the task's
    held-out problems are monitored every iteration. Returns ``{"records": [...], "rank":
    r, "cond_jtj": κ, "snapped": [...], "problems": B, "parameters": p, "seconds": s}``;
    ``log`` receives every record. The model's parameters hold the final θ on return.
    Each record has ``fresh_mse`` (held-out, the model as deployed) and
    ``fresh_mse_train_dtype`` (the training precision, which the growth rule compares
    with ``train_mse``)."""
    s, start = settings, time.perf_counter()
    train, rank, cond = _rank_sized_set(task, draw, s)
    train_dtype = torch.float64 if s.train_precision == "float64" else None
    snapped = task.snap(train, s.snap_rtol, s.chunk, train_dtype)
    monitor = _HeldOut(task, s, train_dtype)
    problem, theta, write_back = task.residual_problem(train, s.chunk, train_dtype)
    lm = LevenbergMarquardt(problem, theta, s.engine)
    records: list[dict[str, Any]] = []

    def keep(record: dict[str, Any]) -> None:
        record.update(iteration=len(records), **monitor(lm.theta),
                      problems=task.size(train), wall=time.perf_counter() - start,
                      peak_mib=_peak_mib())
        records.append(record)
        if log is not None:
            log(record)

    keep({"train_mse": lm.loss, "damping": s.engine.damping, "step_norm": 0.0,
          "accepted": True, "rejects": 0, "seconds": 0.0})
    for _ in range(iterations):
        record = lm.step()
        record["train_mse"] = record.pop("loss")
        keep(record)
        if _should_stop(record, s):
            break
        if (record["fresh_mse_train_dtype"] > s.gap * max(record["train_mse"], 1e-300)
                and record["accepted"]):
            train = task.join(train, draw(int(task.size(train) * (s.grow - 1))))
            problem, _, write_back = task.residual_problem(train, s.chunk, train_dtype)
            # the engine keeps its damping in the engine settings' range
            lm = LevenbergMarquardt(problem, lm.theta,
                                    dataclasses.replace(s.engine, damping=lm.damping))
    write_back(lm.theta)
    return {"records": records, "rank": rank, "cond_jtj": cond, "snapped": snapped,
            "problems": task.size(train), "parameters": task.parameters,
            "seconds": time.perf_counter() - start}


@dataclass
class LMFinisher(Finisher):
    """The LM finisher on the loop's seam: ``iterations`` LM iterations with ``settings``.

    ``batch_size = 0``: it draws its own problems, ``problem.task.draw(k,
    problem.generator)``, from the task (a :class:`ResidualTask`: the held-out problems
    it monitors, the residuals it minimises); logs one record per iteration with
    ``problem.log(lm=record)``; returns the final held-out and training MSE, the rank and
    condition number of ``JᵀJ``, the channels snapped, the training problems and the
    parameters (the final record of the run holds them)."""

    settings: FinisherSettings
    iterations: int
    batch_size: int = 0

    def run(self, problem: FinisherProblem) -> dict[str, Any]:
        task = problem.task
        report = finish_lm(task, lambda k: task.draw(k, problem.generator), self.settings,
                           self.iterations, log=lambda r: problem.log(lm=r))
        last = report["records"][-1]
        return {"lm_fresh_mse": last["fresh_mse"], "lm_train_mse": last["train_mse"],
                "lm_rank": report["rank"], "lm_cond_jtj": report["cond_jtj"],
                "lm_snapped": len(report["snapped"]), "lm_problems": report["problems"],
                "lm_parameters": report["parameters"]}
