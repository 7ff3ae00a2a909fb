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

import copy
import dataclasses
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.func import functional_call
from torch.nn.utils import parameters_to_vector

from neuralnum.core.validation import (
    check_config_choices,
    check_nonnegative_int,
    check_positive_int,
    check_range,
)
from neuralnum.training.levenberg_marquardt import LevenbergMarquardt, LMSettings
from neuralnum.training.lm_problems import PerSampleProblem, normal_matrix, numerical_rank
from neuralnum.training.loop import Finisher, FinisherProblem

__all__ = ["TRAIN_PRECISIONS", "FinisherSettings", "LMFinisher", "finish_lm",
           "learner_problem"]

Data = tuple[torch.Tensor, ...]
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


def _cast_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of ``model`` in ``dtype`` with its data-dependent input checks off (they
    branch on values, which ``vmap`` cannot trace)."""
    net = copy.deepcopy(model).to(dtype)
    net.check_input = lambda t: t
    if isinstance(getattr(net, "dtype", None), torch.dtype):
        net.dtype = dtype
    return net


class _FlatParameters:
    """The trainable parameters of ``model`` as one flat float64 vector ``θ: (p,)``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = dict(model.named_parameters())
        self.names = [n for n, p in self.params.items() if p.requires_grad]
        self.shapes = [self.params[n].shape for n in self.names]
        self.sizes = [self.params[n].numel() for n in self.names]
        self.buffers = dict(model.named_buffers())

    def vector(self) -> torch.Tensor:
        return torch.cat([self.params[n].detach().reshape(-1).to(torch.float64)
                          for n in self.names])

    def unflatten(self, theta: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        parts = theta.to(dtype).split(self.sizes)
        out = {n: t.view(s) for n, t, s in zip(self.names, parts, self.shapes, strict=True)}
        out.update({k: v.to(dtype) if v.is_floating_point() else v
                    for k, v in self.buffers.items()})
        return out

    @torch.no_grad()
    def write_back(self, theta: torch.Tensor) -> None:
        for n, t in zip(self.names, theta.split(self.sizes), strict=True):
            self.params[n].copy_(t.view(self.params[n].shape))


def learner_problem(learner: Any, data: Data, chunk: int = 128,
                    dtype: torch.dtype | None = None,
                    ) -> tuple[PerSampleProblem, torch.Tensor, Callable[[torch.Tensor], None]]:
    """The learner's residuals on ``data = (A, b, x, label)`` as a
    :class:`~neuralnum.training.lm_problems.PerSampleProblem` of flat float64 ``θ``.

    ``problem.residuals`` evaluates the model in ``dtype`` (default: the learner's compute
    dtype, i.e. the residuals of the model as deployed); the Jacobian is always float64.
    Returns ``(problem, θ₀: (p,) float64, write_back(θ))`` — ``write_back`` copies ``θ``
    into the learner's parameters (in their dtype).
    """
    flat = _FlatParameters(learner.model)
    compute = dtype or learner.precision.compute_dtype
    lin, evaluator = _cast_copy(learner.model, torch.float64), _cast_copy(learner.model, compute)
    layout, objective = learner.layout, learner.objective
    A, b, x, label = data

    def forward(net: torch.nn.Module, theta: torch.Tensor, dtype: torch.dtype,
                tok: torch.Tensor, xs: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        delta = functional_call(net, flat.unflatten(theta, dtype), (tok.to(dtype),),
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

    problem = PerSampleProblem(residual, evaluate, (layout.encode(A, b, x), x, label),
                               chunk=chunk)
    return problem, flat.vector(), flat.write_back


def _concat(a: Data, b: Data) -> Data:
    return tuple(torch.cat([u, v]) for u, v in zip(a, b, strict=True))


def _rank_sized_set(learner: Any, draw: Callable[[int], Data], s: FinisherSettings, p: int
                    ) -> tuple[Data, int, float]:
    """The training set (``≥ rank_factor ×`` the numerical rank of ``J`` residuals, the
    rank measured on a probe set of ``≥ p`` residuals at the starting weights), the rank
    and the condition number of ``JᵀJ``."""
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
    return train, rank, cond


class _HeldOut:
    """MSE of the held-out problems in the deployed dtype and in the training precision."""

    def __init__(self, learner: Any, data: Data, s: FinisherSettings,
                 train_dtype: torch.dtype | None) -> None:
        self.deployed = learner_problem(learner, data, s.chunk)[0]
        same = train_dtype in (None, learner.precision.compute_dtype)
        self.in_train_dtype = (self.deployed if same
                               else learner_problem(learner, data, s.chunk, train_dtype)[0])

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


def finish_lm(learner: Any, draw: Callable[[int], Data], held_out: Data,
              settings: FinisherSettings, iterations: int, *,
              log: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run ``iterations`` LM iterations on ``learner``; ``draw(k)`` returns ``k`` new
    problems ``(A, b, x, label)`` (the training set and its growth), ``held_out`` the
    problems monitored every iteration. Returns ``{"records": [...], "rank": r,
    "cond_jtj": κ, "snapped": [...], "problems": B, "parameters": p, "seconds": s}``;
    ``log`` receives every record. The learner's parameters hold the final θ on return.
    Each record has ``fresh_mse`` (held-out, the learner's compute dtype: the model as
    deployed) and ``fresh_mse_train_dtype`` (the training precision, which the growth rule
    compares with ``train_mse``)."""
    s, start = settings, time.perf_counter()
    p = sum(q.numel() for q in learner.parameters())
    train, rank, cond = _rank_sized_set(learner, draw, s, p)
    train_dtype = torch.float64 if s.train_precision == "float64" else None
    snapped = _snap_dead_channels(learner, train, s, train_dtype)
    monitor = _HeldOut(learner, held_out, s, train_dtype)
    problem, theta, write_back = learner_problem(learner, train, s.chunk, train_dtype)
    lm = LevenbergMarquardt(problem, theta, s.engine)
    records: list[dict[str, Any]] = []

    def keep(record: dict[str, Any]) -> None:
        record.update(iteration=len(records), **monitor(lm.theta),
                      problems=train[0].shape[0], wall=time.perf_counter() - start,
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
            train = _concat(train, draw(int(train[0].shape[0] * (s.grow - 1))))
            problem, _, write_back = learner_problem(learner, train, s.chunk, train_dtype)
            lm = LevenbergMarquardt(problem, lm.theta, _with_damping(s.engine, lm.damping))
    write_back(lm.theta)
    return {"records": records, "rank": rank, "cond_jtj": cond, "snapped": snapped,
            "problems": train[0].shape[0], "parameters": p,
            "seconds": time.perf_counter() - start}


def _snap_dead_channels(learner: Any, train: Data, s: FinisherSettings,
                        dtype: torch.dtype | None) -> list[tuple[int, int, str]]:
    """``learner.model.snap_dead_channels`` on the training problems' tokens (where the
    model has it and ``s.snap_rtol > 0``), undone if the training loss rose; returns the
    channels zeroed. A channel with both factors near zero sits where two zero-loss
    branches cross and the residual is quadratic in its weights, so Gauss–Newton there
    converges only linearly; on one branch the problem is regular."""
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


def _with_damping(engine: LMSettings, damping: float) -> LMSettings:
    """``engine`` restarting at ``damping`` (clamped to its range)."""
    damping = min(max(damping, engine.damping_floor), engine.damping_max)
    return dataclasses.replace(engine, damping=damping)


@dataclass
class LMFinisher(Finisher):
    """The LM finisher on the loop's seam: ``iterations`` LM iterations with ``settings``.

    ``batch_size = 0``: it draws its own problems, ``problem.task.sample(k,
    problem.generator)``; monitors the task's held-out problems
    (``problem.task.held_out``); finds the learner as ``problem.task.learner``; logs one
    record per iteration with ``problem.log(lm=record)``; returns the final held-out and
    training MSE, the rank and condition number of ``JᵀJ``, the channels snapped, the
    training problems and the parameters (the final record of the run holds them)."""

    settings: FinisherSettings
    iterations: int
    batch_size: int = 0

    def run(self, problem: FinisherProblem) -> dict[str, Any]:
        task = problem.task
        report = finish_lm(task.learner, lambda k: task.sample(k, problem.generator),
                           task.held_out, self.settings, self.iterations,
                           log=lambda r: problem.log(lm=r))
        last = report["records"][-1]
        return {"lm_fresh_mse": last["fresh_mse"], "lm_train_mse": last["train_mse"],
                "lm_rank": report["rank"], "lm_cond_jtj": report["cond_jtj"],
                "lm_snapped": len(report["snapped"]), "lm_problems": report["problems"],
                "lm_parameters": report["parameters"]}
