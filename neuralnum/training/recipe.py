"""The high-precision training recipe: a flat config and the loop plug-ins it makes.

A :class:`Recipe` is a frozen, flat configuration (so an ablation is one
``recipe.replace(field=...)``); :func:`make_training` turns it into the optimizer, the
LR schedule, the hooks, the weight average and the finishers that the one training loop
(:func:`neuralnum.training.loop.train`) runs for a
:class:`~neuralnum.solvers.learner.Learner`. Every stateful hook has ``state_dict()`` /
``load_state_dict()``, so a resumed run continues bit-for-bit.

* **Precision** — ``"float32"``, ``"float64"`` or ``"mixed"`` (float64 master weights,
  float32 forward/backward): :class:`neuralnum.core.validation.Precision`.
* **Optimizer** — Adam with tuned ``eps`` (1e-16 as in Liu et al. 2025) and ``betas``:
  :func:`make_optimizer`; an optional finisher of :attr:`Recipe.finisher_steps` iterations
  after it: L-BFGS (``finisher="lbfgs"``, :class:`~neuralnum.training.loop.LBFGSFinisher`) or
  Levenberg–Marquardt (``finisher="lm"``, :class:`neuralnum.training.finisher.LMFinisher`;
  settings ``lm_*``).
* **LR schedule** — warm-up then cosine / step / no decay
  (:class:`~neuralnum.training.loop.Schedule` in ``LambdaLR``), and two hooks scaling it: decay
  on plateau (:class:`PlateauDecay`) and the adaptive signal-vs-noise rule
  (:class:`AdaptiveLR`: cosine similarity of the gradients of two independent
  half-batches; ×``adaptive_factor`` when the signal falls below the noise).
* **Gradient-noise control** — batch growth as the loss falls (:class:`BatchSchedule`),
  fresh problems every step or a fixed pool (:attr:`Recipe.fresh`), the EMA-of-gradients
  filter ``g + c·EMA_β(g)`` (:class:`GradientFilter`) and an EMA of the weights
  (``torch.optim.swa_utils.AveragedModel``, :func:`~neuralnum.training.loop.ema_average`).
* **Loss** — relative (per problem, ``‖ŷ − y‖² / ‖y‖²``) or absolute MSE: :func:`loss_fn`.

``Recipe()`` is the best configuration we measured learning the GD update from a random
init (``studies/recipe.py``): Adam at LR 1e-2 with ε = 1e-16, cosine decay over the
run, a fixed batch of 256 fresh problems, absolute loss, float64;
``Recipe.baseline()`` is the plain one: constant-LR Adam with default ε, small fixed
batch, absolute loss, no noise control.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel

from neuralnum.core.validation import Precision, parse_precision
from neuralnum.training.loop import (
    DECAYS,
    Finisher,
    Hook,
    LBFGSFinisher,
    Schedule,
    ema_average,
    make_scheduler,
)

__all__ = [
    "ABLATIONS",
    "FINISHERS",
    "AdaptiveLR",
    "AverageRestart",
    "BatchSchedule",
    "GradientFilter",
    "PlateauDecay",
    "Precision",
    "Recipe",
    "Training",
    "cosine_similarity",
    "loss_fn",
    "make_optimizer",
    "make_schedule",
    "make_training",
]

_DTYPES = ("float32", "float64", "mixed")
FINISHERS = ("lbfgs", "lm")
#: ``(fields, valid, bound)``: every numeric field of :class:`Recipe` and its valid range.
_RANGES: tuple[tuple[tuple[str, ...], Callable[[float], bool], str], ...] = (
    (("lr", "eps", "batch_size", "step_every", "pool_size"), lambda v: v > 0, "> 0"),
    (("warmup", "finisher_steps", "total_steps", "adaptive_every", "plateau_patience",
      "grad_ema_coef", "ema_start"), lambda v: v >= 0, ">= 0"),
    (("step_factor", "plateau_factor", "adaptive_factor", "min_lr_factor"),
     lambda v: 0 < v <= 1, "in (0, 1]"),
    (("grad_ema", "weight_ema"), lambda v: 0 <= v < 1, "in [0, 1)"),
    (("adaptive_threshold",), lambda v: -1 <= v <= 1, "in [-1, 1]"),
    (("batch_growth",), lambda v: v >= 1, ">= 1"),
)


@dataclass(frozen=True)
class Recipe:
    """Every training choice, flat; see the module docstring for the pieces.

    ``lr_decay="cosine"`` decays over ``total_steps``, or over the ``steps`` of the
    :meth:`~neuralnum.solvers.learner.Learner.fit` call when ``total_steps=0``;
    ``adaptive_every=0`` turns the adaptive rule off, ``plateau_patience=0`` the plateau
    rule, ``batch_growth=1`` batch growth, ``grad_ema=0`` the gradient filter,
    ``weight_ema=0`` the weight average and ``finisher_steps=0`` the finisher;
    ``ema_start`` (default 0: from the init) restarts the weight average from the current
    weights at that step (:class:`AverageRestart`). ``finisher="lm"``: ``lm_problems``
    training problems (0: sized to 1.5× the rank of the Jacobian), ``lm_fresh`` fresh
    problems monitored, initial damping ``lm_damping``, linear solver ``lm_solver``
    (``auto``/``cholesky``/``eigh``/``svd``/``dual``/``cg``), wall budget ``lm_minutes`` (0:
    none), geodesic acceleration ``lm_geodesic``, chord corrections per iteration
    ``lm_corrections``, training-residual precision ``lm_train_precision``
    (``float64``/``model``), dead-channel snapping threshold ``lm_snap_rtol`` (0: off); see
    :class:`neuralnum.training.finisher.FinisherSettings`.
    """

    # precision
    dtype: str = "float64"
    # optimizer
    lr: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-16
    finisher_steps: int = 0
    finisher: str = "lbfgs"
    lm_problems: int = 0
    lm_fresh: int = 256
    lm_damping: float = 1e-3
    lm_solver: str = "auto"
    lm_minutes: float = 0.0
    lm_geodesic: bool = False
    lm_corrections: int = 0
    lm_train_precision: str = "float64"
    lm_snap_rtol: float = 1e-4
    # LR schedule
    warmup: int = 0
    lr_decay: str = "cosine"
    total_steps: int = 0
    step_every: int = 1000
    step_factor: float = 0.9
    min_lr_factor: float = 1e-4
    plateau_patience: int = 0
    plateau_factor: float = 0.5
    adaptive_every: int = 0
    adaptive_threshold: float = 0.2
    adaptive_factor: float = 0.9
    # gradient-noise control
    batch_size: int = 256
    max_batch_size: int = 1024
    batch_growth: float = 1.0
    fresh: bool = True
    pool_size: int = 4096
    grad_ema: float = 0.0
    grad_ema_coef: float = 2.0
    weight_ema: float = 0.0
    ema_start: int = 0
    # loss
    relative_loss: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.finisher not in FINISHERS:
            raise ValueError(f"finisher must be one of {FINISHERS}, got {self.finisher!r}")
        if self.finisher == "lm":
            self.finisher_settings()  # validates the lm_* fields, naming them
        if self.lr_decay not in DECAYS:
            raise ValueError(f"lr_decay must be one of {DECAYS}, got {self.lr_decay!r}")
        for names, valid, bound in _RANGES:
            for name in names:
                value = getattr(self, name)
                if not valid(value):
                    raise ValueError(f"{name} must be {bound}, got {value}")
        for i, beta in enumerate(self.betas):
            if not 0 <= beta < 1:
                raise ValueError(f"betas[{i}] must be in [0, 1), got {beta}")
        if self.max_batch_size < self.batch_size:
            raise ValueError(f"max_batch_size {self.max_batch_size} < batch_size "
                             f"{self.batch_size}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    # construction ------------------------------------------------------------------
    @classmethod
    def baseline(cls, **changes: Any) -> Recipe:
        """The plain recipe: constant-LR Adam (ε = 1e-8), fixed batch 32, absolute MSE."""
        plain = dict(dtype="float32", eps=1e-8, warmup=0, lr_decay="none", adaptive_every=0,
                     batch_size=32, max_batch_size=32, batch_growth=1.0, grad_ema=0.0,
                     relative_loss=False)
        return cls(**{**plain, **changes})

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/checkpoint-safe dict; :meth:`from_dict` inverts it."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown recipe fields: {sorted(unknown)}")
        data = dict(data)
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)

    def ablation(self, component: str) -> Recipe:
        """This recipe with one component (a key of :data:`ABLATIONS`) turned off."""
        if component not in ABLATIONS:
            raise ValueError(f"unknown component {component!r}; choose from {sorted(ABLATIONS)}")
        return self.replace(**ABLATIONS[component])

    def finisher_settings(self) -> Any:
        """The :class:`neuralnum.training.finisher.FinisherSettings` of ``finisher="lm"``."""
        from neuralnum.training.finisher import FinisherSettings
        from neuralnum.training.levenberg_marquardt import LMSettings

        try:
            return FinisherSettings(
                iterations=max(self.finisher_steps, 1), problems=self.lm_problems,
                fresh=self.lm_fresh, minutes=self.lm_minutes,
                train_precision=self.lm_train_precision, snap_rtol=self.lm_snap_rtol,
                lm=LMSettings(damping=self.lm_damping, solver=self.lm_solver,
                              geodesic=self.lm_geodesic, corrections=self.lm_corrections))
        except ValueError as err:
            raise ValueError(f"lm_* recipe fields: {err}") from None

    @property
    def precision(self) -> Precision:
        return parse_precision(self.dtype, _DTYPES)


#: One-flag ablations: the fields that switch each component of the default recipe off.
#: Warm-up, the adaptive LR rule, the gradient filter, batch growth and the relative loss
#: are available but off by default because, trained from a random init, they slowed
#: learning or ended higher (the recipe study measures each: ``studies.recipe``).
ABLATIONS: dict[str, dict[str, Any]] = {
    "float64": {"dtype": "float32"},
    "adam_eps": {"eps": 1e-8},
    "cosine_decay": {"lr_decay": "none"},
    "fresh_problems": {"fresh": False},
}


# --------------------------------------------------------------------------- optimizer
def make_optimizer(params: Iterable[torch.nn.Parameter], recipe: Recipe) -> torch.optim.Adam:
    """Adam with the recipe's ``lr``, ``betas`` and ``eps`` (foreach off: deterministic)."""
    return torch.optim.Adam(params, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps,
                            foreach=False)


# --------------------------------------------------------------------------- loss
def loss_fn(pred: torch.Tensor, target: torch.Tensor, *, relative: bool) -> torch.Tensor:
    """Mean over the batch of ``‖pred − target‖²/d`` (absolute) or ``/‖target‖²`` (relative).

    ``pred, target: (B, d)``, same dtype; returns a scalar of that dtype. The relative
    form weighs every problem equally whatever its scale.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape "
                         f"{tuple(target.shape)}")
    sq = (pred - target).pow(2).sum(dim=1)
    if relative:
        tiny = torch.finfo(target.dtype).tiny
        return (sq / target.pow(2).sum(dim=1).clamp_min(tiny)).mean()
    return sq.mean() / target.shape[1]


def cosine_similarity(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Cosine similarity of two gradients given as lists of same-shaped tensors."""
    dot = sum(float((x * y).sum()) for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(float(x.pow(2).sum()) for x in a))
    nb = math.sqrt(sum(float(y.pow(2).sum()) for y in b))
    return dot / (na * nb) if na > 0 and nb > 0 else 0.0




# --------------------------------------------------------------------------- LR
def make_schedule(recipe: Recipe, horizon: int | None = None) -> Schedule:
    """The recipe's LR multiplier; the cosine spans ``recipe.total_steps``, or
    ``horizon`` (the run's steps) when that is 0."""
    return Schedule(warmup=recipe.warmup, decay=recipe.lr_decay,
                    horizon=recipe.total_steps or horizon or 0,
                    min_factor=recipe.min_lr_factor, step_every=recipe.step_every,
                    step_factor=recipe.step_factor)


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


# --------------------------------------------------------------------------- batch
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


# --------------------------------------------------------------------------- average
class AverageRestart(Hook):
    """Restart the weight average ``average`` from the current weights at step ``start``.

    An EMA begun at the random init keeps ``decay^steps`` of it (0.999 over 6,000 steps:
    0.25 %, which held a linear-attention learner at one-step MSE 4e-5 where the plain
    weights reached 5e-32); begun once the model is near its floor it only averages out
    the late steps' noise. Stateless: it acts on the step number alone, so resume is exact.
    """

    def __init__(self, average: AveragedModel, start: int):
        self.average = average
        self.start = start

    def after_step(self, step: int, loss: float) -> None:
        if step + 1 == self.start:  # the next update of the average copies the weights
            self.average.n_averaged.zero_()


# --------------------------------------------------------------------------- filter
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


# --------------------------------------------------------------------------- assembly
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
        from neuralnum.training.finisher import LMFinisher

        finishers.append(LMFinisher(recipe.finisher_settings()))
    elif recipe.finisher_steps:
        finishers.append(LBFGSFinisher(recipe.finisher_steps, recipe.max_batch_size))
    return Training(optimizer, make_scheduler(optimizer, schedule), hooks, average, finishers)
