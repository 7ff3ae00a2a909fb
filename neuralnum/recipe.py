"""The high-precision training recipe: composable, switchable pieces.

A :class:`Recipe` is a frozen, flat configuration (so an ablation is one
``recipe.replace(field=...)``) and this module holds the small stateful pieces the
:class:`~neuralnum.learner.Learner` loop composes from it. Each piece has
``state_dict()`` / ``load_state_dict()`` so a resumed run continues bit-for-bit.

* **Precision** — ``"float32"``, ``"float64"`` or ``"mixed"`` (float64 master weights,
  float32 forward/backward): :class:`Precision`.
* **Optimizer** — Adam with tuned ``eps`` (1e-16 as in Liu et al. 2025) and ``betas``:
  :func:`make_optimizer`; an optional finisher of :attr:`Recipe.finisher_steps` iterations
  after it: L-BFGS (``finisher="lbfgs"``) or Levenberg–Marquardt (``finisher="lm"``,
  :mod:`neuralnum.finisher`; settings ``lm_*``).
* **LR schedule** — warm-up, cosine / step decay, decay on plateau and the adaptive
  signal-vs-noise rule (cosine similarity of the gradients of two independent
  half-batches; ×``adaptive_factor`` when the signal falls below the noise):
  :class:`LRController`.
* **Gradient-noise control** — batch growth as the loss falls (:class:`BatchSchedule`),
  fresh problems every step or a fixed pool (:attr:`Recipe.fresh`), the EMA-of-gradients
  filter ``g + c·EMA_β(g)`` (:class:`GradientFilter`) and an EMA of the weights
  (:class:`WeightAverage`).
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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "ABLATIONS",
    "BatchSchedule",
    "GradientFilter",
    "LRController",
    "Precision",
    "Recipe",
    "WeightAverage",
    "cosine_similarity",
    "loss_fn",
    "make_optimizer",
]

_DTYPES = ("float32", "float64", "mixed")
_DECAYS = ("none", "cosine", "step")
_FINISHERS = ("lbfgs", "lm")


@dataclass(frozen=True)
class Recipe:
    """Every training choice, flat; see the module docstring for the pieces.

    ``lr_decay="cosine"`` decays over ``total_steps``, or over the ``steps`` of the
    :meth:`~neuralnum.learner.Learner.fit` call when ``total_steps=0``;
    ``adaptive_every=0`` turns the adaptive rule off, ``plateau_patience=0`` the plateau
    rule, ``batch_growth=1`` batch growth, ``grad_ema=0`` the gradient filter,
    ``weight_ema=0`` the weight average and ``finisher_steps=0`` the finisher.
    ``finisher="lm"``: ``lm_problems`` training problems (0: sized to 1.5× the rank of
    the Jacobian), ``lm_fresh`` fresh problems monitored, initial damping ``lm_damping``,
    linear solver ``lm_solver`` (``auto``/``cholesky``/``dual``/``cg``), wall budget
    ``lm_minutes`` (0: none), geodesic acceleration ``lm_geodesic``; see
    :class:`neuralnum.finisher.FinisherSettings`.
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
    # loss
    relative_loss: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.finisher not in _FINISHERS:
            raise ValueError(f"finisher must be one of {_FINISHERS}, got {self.finisher!r}")
        if self.finisher == "lm":
            self.finisher_settings()  # validates the lm_* fields, naming them
        if self.lr_decay not in _DECAYS:
            raise ValueError(f"lr_decay must be one of {_DECAYS}, got {self.lr_decay!r}")
        positive = {"lr": self.lr, "eps": self.eps, "batch_size": self.batch_size,
                    "step_every": self.step_every, "pool_size": self.pool_size}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        nonnegative = {"warmup": self.warmup, "finisher_steps": self.finisher_steps,
                       "total_steps": self.total_steps, "adaptive_every": self.adaptive_every,
                       "plateau_patience": self.plateau_patience,
                       "grad_ema_coef": self.grad_ema_coef}
        for name, value in nonnegative.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        fractions = {"step_factor": self.step_factor, "plateau_factor": self.plateau_factor,
                     "adaptive_factor": self.adaptive_factor, "min_lr_factor": self.min_lr_factor}
        for name, value in fractions.items():
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        for name, value in (("grad_ema", self.grad_ema), ("weight_ema", self.weight_ema),
                            ("betas[0]", self.betas[0]), ("betas[1]", self.betas[1])):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not -1 <= self.adaptive_threshold <= 1:
            raise ValueError(f"adaptive_threshold must be in [-1, 1], got "
                             f"{self.adaptive_threshold}")
        if self.max_batch_size < self.batch_size:
            raise ValueError(f"max_batch_size {self.max_batch_size} < batch_size "
                             f"{self.batch_size}")
        if self.batch_growth < 1:
            raise ValueError(f"batch_growth must be >= 1, got {self.batch_growth}")
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
        """The :class:`neuralnum.finisher.FinisherSettings` of ``finisher="lm"``."""
        from neuralnum.finisher import FinisherSettings
        from neuralnum.levenberg_marquardt import LMSettings

        try:
            return FinisherSettings(
                iterations=max(self.finisher_steps, 1), problems=self.lm_problems,
                fresh=self.lm_fresh, minutes=self.lm_minutes,
                lm=LMSettings(damping=self.lm_damping, solver=self.lm_solver,
                              geodesic=self.lm_geodesic))
        except ValueError as err:
            raise ValueError(f"lm_* recipe fields: {err}") from None

    @property
    def precision(self) -> Precision:
        return Precision.from_name(self.dtype)


#: One-flag ablations: the fields that switch each component of the default recipe off.
#: (Warm-up, the adaptive LR rule, the gradient filter, batch growth and the relative loss
#: are available but off by default: from a random init they slowed learning or ended
#: higher — linear attention, n = 20, d = 5, κ = 5, relative loss, 1000 steps: growth ×2
#: to 1024 gave 1.8e-14 vs 5.5e-15 at a fixed 256, the gradient filter 1.7e-10; the
#: relative loss reached the same floor (≈5e-32 float64, ≈1.7e-14 float32) but later:
#: 1.4e-27 vs 4.6e-32 after 3000 steps, seed 0, float64.)
ABLATIONS: dict[str, dict[str, Any]] = {
    "float64": {"dtype": "float32"},
    "adam_eps": {"eps": 1e-8},
    "cosine_decay": {"lr_decay": "none"},
    "fresh_problems": {"fresh": False},
}


# --------------------------------------------------------------------------- precision
@dataclass(frozen=True)
class Precision:
    """Parameter (master) dtype and compute dtype of a training run."""

    param_dtype: torch.dtype
    compute_dtype: torch.dtype

    @classmethod
    def from_name(cls, name: str) -> Precision:
        if name == "float32":
            return cls(torch.float32, torch.float32)
        if name == "float64":
            return cls(torch.float64, torch.float64)
        if name == "mixed":
            return cls(torch.float64, torch.float32)
        raise ValueError(f"dtype must be one of {_DTYPES}, got {name!r}")

    @property
    def mixed(self) -> bool:
        return self.param_dtype != self.compute_dtype


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
class LRController:
    """The learning rate at each step: warm-up × decay × plateau factor × adaptive factor.

    Call :meth:`lr` before a step and :meth:`observe` after it with the step's loss and,
    on adaptive steps (:meth:`adaptive_due`), the half-batch gradient cosine similarity.
    ``horizon``: the cosine decay's length when ``recipe.total_steps`` is 0.
    """

    def __init__(self, recipe: Recipe, horizon: int | None = None):
        self.recipe = recipe
        self.horizon = recipe.total_steps or horizon or 0
        if recipe.lr_decay == "cosine" and self.horizon < 1:
            raise ValueError("lr_decay='cosine' needs total_steps >= 1 (or a fit with steps)")
        self.plateau = 1.0
        self.adaptive = 1.0
        self.best = math.inf
        self.since_best = 0

    def lr(self, step: int) -> float:
        r = self.recipe
        factor = 1.0
        if r.warmup and step < r.warmup:
            factor = (step + 1) / r.warmup
        if r.lr_decay == "cosine":
            t = min(step / self.horizon, 1.0)
            factor *= r.min_lr_factor + (1 - r.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * t))
        elif r.lr_decay == "step":
            factor *= r.step_factor ** (step // r.step_every)
        factor *= self.plateau * self.adaptive
        return r.lr * (max(factor, r.min_lr_factor) if step >= r.warmup else factor)

    def adaptive_due(self, step: int) -> bool:
        every = self.recipe.adaptive_every
        return every > 0 and step >= self.recipe.warmup and step % every == 0

    def observe(self, loss: float, cosine: float | None = None) -> None:
        r = self.recipe
        if cosine is not None:
            if cosine < r.adaptive_threshold:  # noise dominates the gradient: slow down
                self.adaptive *= r.adaptive_factor
            else:  # signal dominates: recover towards the scheduled LR
                self.adaptive = min(1.0, self.adaptive / r.adaptive_factor)
        if r.plateau_patience:
            if loss < self.best:
                self.best, self.since_best = loss, 0
            else:
                self.since_best += 1
                if self.since_best >= r.plateau_patience:
                    self.plateau *= r.plateau_factor
                    self.best, self.since_best = loss, 0

    def state_dict(self) -> dict[str, float]:
        return {"plateau": self.plateau, "adaptive": self.adaptive, "best": self.best,
                "since_best": self.since_best}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.plateau = float(state["plateau"])
        self.adaptive = float(state["adaptive"])
        self.best = float(state["best"])
        self.since_best = int(state["since_best"])


# --------------------------------------------------------------------------- batch
class BatchSchedule:
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

    def observe(self, loss: float) -> None:
        r = self.recipe
        self.smoothed = loss if math.isnan(self.smoothed) else 0.9 * self.smoothed + 0.1 * loss
        if math.isnan(self.reference):
            self.reference = self.smoothed
        if r.batch_growth > 1 and self.smoothed < self.reference / 10:
            grown = int(self.size * r.batch_growth) // self.multiple * self.multiple
            self.size = min(max(grown, self.size), r.max_batch_size)
            self.reference = self.smoothed

    def state_dict(self) -> dict[str, float]:
        return {"size": self.size, "smoothed": self.smoothed, "reference": self.reference}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.size = int(state["size"])
        self.smoothed = float(state["smoothed"])
        self.reference = float(state["reference"])


# --------------------------------------------------------------------------- filters
class GradientFilter:
    """Replace each gradient by ``g + coef·EMA_β(g)`` in place (off when ``β = 0``)."""

    def __init__(self, params: list[torch.nn.Parameter], beta: float, coef: float):
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

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        return {"ema": [m.clone() for m in self.ema]}

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        _copy_saved(self.ema, state["ema"], "gradient-filter")


class WeightAverage:
    """Exponential moving average of the parameters (off when ``decay = 0``)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params = params
        self.decay = decay
        self.average = [p.detach().clone() for p in params] if decay > 0 else []

    @property
    def enabled(self) -> bool:
        return self.decay > 0

    @torch.no_grad()
    def update(self) -> None:
        for p, a in zip(self.params, self.average, strict=False):
            a.mul_(self.decay).add_(p, alpha=1 - self.decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for p, a in zip(self.params, self.average, strict=False):
            p.copy_(a)

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        return {"average": [a.clone() for a in self.average]}

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        _copy_saved(self.average, state["average"], "weight-average")


def _copy_saved(tensors: list[torch.Tensor], saved: list[torch.Tensor], what: str) -> None:
    """Copy checkpointed per-parameter tensors into ``tensors`` (same count required)."""
    if len(saved) != len(tensors):
        raise ValueError(f"{what} state does not match the parameters")
    for tensor, value in zip(tensors, saved, strict=True):
        tensor.copy_(value)
