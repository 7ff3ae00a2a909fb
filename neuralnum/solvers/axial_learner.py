"""The shape-general learned solver: one learned operator for least-squares problems of
every shape.

:class:`AxialLearner` holds an :class:`~neuralnum.models.axial.AxialOperator` (a few hundred
weights, none depending on ``n`` or ``d``), trains it on problems of mixed shapes with the
recipe and the Levenberg–Marquardt finisher (:func:`default_recipe`, a
:class:`~neuralnum.training.mixed_shapes.ShapeMixture`), and solves any ``A: (B, n, d)``
through it: LSQR (default) or CGLS on its two learned products, or CG / Chebyshev / GD on
its fused step (:mod:`neuralnum.solvers.methods`), touching ``A`` only through the network.

It solves with the network's *deployed* form: the canonical coefficients with those at
roundoff level set to zero (:meth:`AxialLearner.coefficients`;
:meth:`~neuralnum.models.axial.AxialCoefficients.snapped`, ``snap_rtol``): a learned
coefficient of ``1e-18`` on a term that grows with the shape is invisible where the
network was trained and a same-sign error far beyond it; an exact zero extrapolates.
Checkpoints (:meth:`~LearnedSolver.save`, :meth:`AxialLearner.load`) carry the weights,
the config and a ``provenance`` record (command, seed, commit, metrics).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from neuralnum.core.runtime import CheckpointError, load_checkpoint, make_generator
from neuralnum.models.axial import AxialCoefficients, AxialConfig, AxialOperator
from neuralnum.solvers.learned_solver import LearnedSolver, WeightKeyed
from neuralnum.solvers.ls_driver import LsqrInfo
from neuralnum.solvers.methods import PRODUCT_METHODS, solve
from neuralnum.solvers.operators import AxialLearnedOperator
from neuralnum.training.canonical_refit import refit_coefficients
from neuralnum.training.finisher import FinisherSettings
from neuralnum.training.levenberg_marquardt import LMSettings
from neuralnum.training.loop import FINISHER_STREAM
from neuralnum.training.mixed_shapes import MixedShapeTask, ShapeMixture
from neuralnum.training.recipe import Recipe

__all__ = ["FORMAT", "SNAP_RTOL", "AxialLearner", "default_recipe"]

FORMAT = "neuralnum.axial/1"
SNAP_RTOL = 1e-12  # deployed coefficients below this fraction of their stage's largest are 0


def default_recipe(**changes: Any) -> Recipe:
    """How the shape-general operator is trained: Adam (LR 1e-2, ε = 1e-8, cosine over
    the run) on batches of 64 problems of one random shape, then 40 Levenberg–Marquardt
    iterations on 336 problems of 14 shapes (one thin SVD of ``J`` per iteration,
    geodesic acceleration, 3 chord corrections), float64; ``changes`` override fields."""
    lm = FinisherSettings(problems=336, engine=LMSettings(solver="svd", geodesic=True,
                                                          corrections=3))
    base = Recipe(lr=1e-2, eps=1e-8, batch_size=64, max_batch_size=64, finisher="lm",
                  finisher_steps=40, lm=lm)
    return base.replace(**changes)


#: What the shipped solver's LSQR / CGLS do beyond scipy's iteration, unless told otherwise.
PRODUCT_DEFAULTS: dict[str, dict[str, Any]] = {"lsqr": {"refine": 1, "reorthogonalize": True},
                                               "cgls": {"refine": 1}}


def _product_options(iters: int | None = None, tol: float | None = None,
                     **options: Any) -> dict[str, Any]:
    """LSQR / CGLS options from the names every method understands: ``iters`` runs that
    many iterations (``iter_lim``, tolerances 0), ``tol`` is ``atol = btol``."""
    if iters is not None:  # as the fused methods: no warning for stopping where asked
        options = {"atol": 0.0, "btol": 0.0, "conlim": 0.0, "warn": False, **options,
                   "iter_lim": iters}
    if tol is not None:
        options = {**options, "atol": tol, "btol": tol}
    return options


class AxialLearner(LearnedSolver):
    """The shape-general learned solver (module docstring).

    ``config``: the network's (:class:`~neuralnum.models.axial.AxialConfig`); ``recipe``:
    how it trains (default :func:`default_recipe`); weights drawn from a generator seeded
    with ``seed``; parameters in the recipe's master dtype on ``device``.
    """

    FORMAT = FORMAT

    def __init__(self, config: AxialConfig | None = None, recipe: Recipe | None = None, *,
                 seed: int = 0, device: str | torch.device = "cpu",
                 snap_rtol: float = SNAP_RTOL) -> None:
        self.recipe = default_recipe() if recipe is None else recipe
        if not isinstance(self.recipe, Recipe):
            raise TypeError(f"recipe must be a Recipe, got {type(self.recipe).__name__}")
        self.axial = config or AxialConfig()
        self.seed, self.snap_rtol = seed, snap_rtol
        self.device = torch.device(device)
        self.net = AxialOperator(self.axial, dtype=self.dtype, generator=make_generator(seed))
        self.net.to(self.device)
        self.provenance: dict[str, Any] = {}
        self.step_count = 0
        self.last_solve: Any = None
        self._deployed: WeightKeyed[AxialCoefficients] = WeightKeyed(self._snapped)

    def config(self) -> dict[str, Any]:
        return {"arch": "axial", "axial": dataclasses.asdict(self.axial), "seed": self.seed,
                "snap_rtol": self.snap_rtol, "recipe": self.recipe.to_dict()}

    def to(self, device: str | torch.device) -> AxialLearner:
        self.device = torch.device(device)
        self.net.to(self.device)
        return self

    def make_task(self, data: ShapeMixture | None, *, seed: int,
                  eval_batch: int) -> MixedShapeTask:
        """The training loop's task: problems of mixed shapes (``data``: a
        :class:`~neuralnum.training.mixed_shapes.ShapeMixture`; ``None``: the default)."""
        return MixedShapeTask(self, data or ShapeMixture(), seed=seed, eval_batch=eval_batch)

    def coefficients(self) -> AxialCoefficients:
        """The deployed canonical coefficients (float64): the network's, those below
        ``snap_rtol`` of their stage's largest set to 0, and refitted by :meth:`refit`
        when it ran on these weights (remade whenever the weights change)."""
        return self._deployed.get(self.net)

    def _snapped(self, net: AxialOperator) -> AxialCoefficients:
        """``net``'s canonical coefficients, those below ``snap_rtol`` of their stage's
        largest set to 0."""
        with torch.no_grad():
            return net.coefficients().snapped(self.snap_rtol).detached()

    def refit(self, data: ShapeMixture | None = None, *, seed: int = 0, problems: int = 336,
              iterations: int = 10) -> list[dict[str, Any]]:
        """Refit the deployed coefficients' values on their support
        (:func:`neuralnum.training.canonical_refit.refit_coefficients`) on ``problems``
        problems of ``data`` drawn as the LM finisher draws its training set (the run's
        finisher stream); returns the engine's records."""
        task = self.make_task(data, seed=seed, eval_batch=1)
        groups = task.draw(problems, make_generator(seed + FINISHER_STREAM))
        deployed, records = refit_coefficients(self.coefficients(), groups,
                                               iterations=iterations)
        self._deployed.set(self.net, deployed)
        return records

    def operator(self, A: torch.Tensor, b: torch.Tensor) -> AxialLearnedOperator:
        """The learned operator of the problems ``A: (B, n, d)``, ``b: (B, n)`` as the
        solvers see it (equilibrated, centred products and fused step)."""
        return AxialLearnedOperator(self.coefficients(), A, b)

    def _solve(self, A: torch.Tensor, b: torch.Tensor, method: str | None,
               x0: torch.Tensor | None, options: dict[str, Any]) -> torch.Tensor:
        """``method`` (``"lsqr"`` default, ``"cgls"``, ``"cg"``, ``"chebyshev"``, ``"gd"``)
        of :func:`neuralnum.solvers.methods.solve` on :meth:`operator`, with ``x0`` and
        ``options`` (LSQR / CGLS: ``atol``, ``btol``, ``conlim``, ``iter_lim``, scipy's
        meanings; ``refine``, default 1 here — one step of iterative refinement where
        LSQR's condition estimate is ≥ 1e3; LSQR: ``reorthogonalize``, default on here —
        about ``d`` iterations on an ill-conditioned problem where plain LSQR takes
        thousands; all: ``record``,
        ``warn``; ``iters`` / ``tol``, the fused methods' names,
        mean ``iter_lim`` with no tolerance / ``atol = btol``). :attr:`last_solve`: its
        record."""
        method = method or "lsqr"
        if method in PRODUCT_METHODS:
            options = {**PRODUCT_DEFAULTS[method], **_product_options(**options)}
        x, self.last_solve = solve(self.operator(A, b), method, x0, **options)
        return x

    @property
    def istop(self) -> torch.Tensor | None:
        """The ``istop`` codes of the last LSQR / CGLS solve (scipy's meanings)."""
        return self.last_solve.istop if isinstance(self.last_solve, LsqrInfo) else None

    def _check_config(self, saved: dict[str, Any], path: object) -> None:
        if saved.get("axial") != dataclasses.asdict(self.axial):
            raise CheckpointError(f"{path} is incompatible: axial config {saved.get('axial')}"
                                  f", this learner has {dataclasses.asdict(self.axial)}")

    def save(self, path: str | os.PathLike[str], **extra: Any) -> Path:
        """:meth:`LearnedSolver.save` with the deployed coefficients (``"deployed"``)."""
        deployed = self.coefficients()
        return super().save(path, deployed={"rows": deployed.rows, "cols": deployed.cols},
                            **extra)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu",
             dtype: str | None = None) -> AxialLearner:
        """Rebuild a learner from a checkpoint written by :meth:`save` (with its
        ``provenance``); ``dtype`` (``"float32"``/``"float64"``): solve in that dtype
        instead of the recipe's."""
        state = load_checkpoint(path, format=FORMAT)
        cfg = state["config"]
        recipe = Recipe.from_dict(cfg["recipe"])
        learner = cls(AxialConfig(**cfg["axial"]), recipe.replace(dtype=dtype or recipe.dtype),
                      seed=cfg["seed"], device=device, snap_rtol=cfg["snap_rtol"])
        learner._load_state(state, path)
        learner.provenance = dict(state.get("provenance", {}))
        if "deployed" in state:
            deployed = AxialCoefficients(state["deployed"]["rows"], state["deployed"]["cols"])
            learner._deployed.set(learner.net, deployed)
        return learner

