"""The high-precision training recipe: one frozen config of every training choice.

A :class:`Recipe` is a frozen configuration, flat but for the Levenberg–Marquardt
finisher's settings (:attr:`Recipe.lm`, nested where they are used), so an ablation is
one ``recipe.replace(field=...)``. :func:`neuralnum.training.assembly.make_training` turns
it into the optimizer, the LR schedule, the hooks, the weight average and the finishers
that the one training loop (:func:`neuralnum.training.loop.train`) runs.

* **Precision** — ``"float32"``, ``"float64"`` or ``"mixed"`` (float64 master weights,
  float32 forward/backward): :class:`neuralnum.core.validation.Precision`.
* **Optimizer** — Adam with tuned ``eps`` (1e-16 as in Liu et al. 2025) and ``betas``;
  an optional finisher of :attr:`Recipe.finisher_steps` iterations after it: L-BFGS
  (``finisher="lbfgs"``, :class:`~neuralnum.training.plugins.LBFGSFinisher`) or
  Levenberg–Marquardt (``finisher="lm"``, :class:`~neuralnum.training.finisher.LMFinisher`
  with the settings :attr:`Recipe.lm`; flags ``--lm-*``).
* **LR schedule** — warm-up then cosine / step / no decay
  (:class:`~neuralnum.training.plugins.Schedule` in ``LambdaLR``), and two hooks scaling
  it: decay on plateau and the adaptive signal-vs-noise rule
  (:mod:`neuralnum.training.hooks`).
* **Gradient-noise control** — batch growth as the loss falls, fresh problems every step
  or a fixed pool (:attr:`Recipe.fresh`), the EMA-of-gradients filter and an EMA of the
  weights (``torch.optim.swa_utils.AveragedModel``).
* **Loss** — relative (per problem, ``‖ŷ − y‖² / ‖y‖²``) or absolute MSE
  (:func:`neuralnum.training.objectives.loss_fn`).

``Recipe()`` is the best configuration the recipe study found for learning the GD update
from a random init (``studies/recipe.py``): Adam at LR 1e-2 with ε = 1e-16, cosine decay
over the run, a fixed batch of 256 fresh problems, absolute loss, float64;
``Recipe.baseline()`` is the plain one: constant-LR Adam with default ε, small fixed
batch, absolute loss, no noise control.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from neuralnum.core.flags import prefixed
from neuralnum.core.validation import (
    Precision,
    check_config_choices,
    check_nonnegative_int,
    check_positive_int,
    check_range,
    parse_precision,
)
from neuralnum.training.finisher import FinisherSettings
from neuralnum.training.levenberg_marquardt import LMSettings
from neuralnum.training.plugins import Decay

__all__ = ["ABLATIONS", "FINISHERS", "Recipe"]

Dtype = Literal["float32", "float64", "mixed"]
FinisherName = Literal["lbfgs", "lm"]
FINISHERS: tuple[str, ...] = FinisherName.__args__


@dataclass(frozen=True)
class Recipe:
    """Every training choice; see the module docstring for the pieces.

    ``lr_decay="cosine"`` decays over ``total_steps``, or over the ``steps`` of the
    :meth:`~neuralnum.solvers.learner.Learner.fit` call when ``total_steps=0``;
    ``adaptive_every=0`` turns the adaptive rule off, ``plateau_patience=0`` the plateau
    rule, ``batch_growth=1`` batch growth, ``grad_ema=0`` the gradient filter,
    ``weight_ema=0`` the weight average and ``finisher_steps=0`` the finisher;
    ``ema_start`` (default 0: from the init) restarts the weight average from the current
    weights at that step. ``finisher="lm"`` runs ``finisher_steps`` Levenberg–Marquardt
    iterations with the settings ``lm``
    (:class:`~neuralnum.training.finisher.FinisherSettings`, its engine's
    :class:`~neuralnum.training.levenberg_marquardt.LMSettings` nested in it).
    """

    # precision
    dtype: Dtype = "float64"
    # optimizer
    lr: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-16
    finisher_steps: int = 0
    finisher: FinisherName = "lbfgs"
    lm: FinisherSettings = field(default_factory=FinisherSettings, metadata=prefixed("lm"))
    # LR schedule
    warmup: int = 0
    lr_decay: Decay = "cosine"
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
        check_config_choices(self)
        for name in ("batch_size", "step_every", "pool_size"):
            check_positive_int(getattr(self, name), name)
        for name in ("warmup", "finisher_steps", "total_steps", "adaptive_every",
                     "plateau_patience", "ema_start"):
            check_nonnegative_int(getattr(self, name), name)
        for name in ("lr", "eps"):
            check_range(getattr(self, name), name, 0, low_open=True)
        for name in ("step_factor", "plateau_factor", "adaptive_factor", "min_lr_factor"):
            check_range(getattr(self, name), name, 0, 1, low_open=True)
        for name in ("grad_ema", "weight_ema"):
            check_range(getattr(self, name), name, 0, 1, high_open=True)
        for i, beta in enumerate(self.betas):
            check_range(beta, f"betas[{i}]", 0, 1, high_open=True)
        check_range(self.grad_ema_coef, "grad_ema_coef", 0)
        check_range(self.adaptive_threshold, "adaptive_threshold", -1, 1)
        check_range(self.batch_growth, "batch_growth", 1)
        check_range(self.max_batch_size, "max_batch_size", self.batch_size)
        if not isinstance(self.lm, FinisherSettings):
            raise TypeError(f"lm must be a FinisherSettings, got {type(self.lm).__name__}")
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
        """Plain JSON/checkpoint-safe dict (``lm`` and its ``engine`` nested);
        :meth:`from_dict` inverts it."""
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
        if isinstance(data.get("lm"), dict):
            lm = dict(data["lm"])
            lm["engine"] = LMSettings(**lm.get("engine", {}))
            data["lm"] = FinisherSettings(**lm)
        return cls(**data)

    def ablation(self, component: str) -> Recipe:
        """This recipe with one component (a key of :data:`ABLATIONS`) turned off."""
        if component not in ABLATIONS:
            raise ValueError(f"unknown component {component!r}; choose from {sorted(ABLATIONS)}")
        return self.replace(**ABLATIONS[component])

    @property
    def precision(self) -> Precision:
        return parse_precision(self.dtype)


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
