"""A learned solver step for least squares: model + objective + step/solve + save/load.

``Learner(arch, target, recipe)`` holds a token model ``(B, n, width) → (B, n, width)``
(a :func:`neuralnum.models.arch_config` name or any ``nn.Module``), wrapped with the token
layout and the objective's read-out into a :class:`~neuralnum.training.predictor.Predictor`
``(A, b, x) → (B, d)``, and a :class:`~neuralnum.training.recipe.Recipe`.

* :meth:`Learner.step` — one learned iterate; :meth:`Learner.solve` — CG / Chebyshev /
  GD driven only by the learned operator (:mod:`neuralnum.solvers.krylov`).
* :meth:`Learner.fit` — training, delegated to :func:`neuralnum.training.fit.fit`, which runs the
  one training loop (:mod:`neuralnum.training.loop`) on problems of a family.
* :meth:`Learner.save` / :meth:`Learner.load` — a plain dict ``{"format", "config",
  "model"}`` (JSON-able config, a state dict), loaded with
  ``torch.load(weights_only=True)``; a file of another format or version, or one built
  for another shape, raises :class:`~neuralnum.core.runtime.CheckpointError`.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from neuralnum.core.runtime import (
    CheckpointError,
    load_checkpoint,
)
from neuralnum.core.validation import check_problem
from neuralnum.models.base import cast_module
from neuralnum.models.canonical import canonicalize_attention
from neuralnum.models.linear_attention import LinearAttention
from neuralnum.models.registry import (
    ARCHS,
    default_arch,
    load_construction,
    named_arch,
)
from neuralnum.models.tokens import TokenLayout
from neuralnum.solvers import krylov
from neuralnum.solvers.krylov import SolveInfo
from neuralnum.solvers.learned_solver import LearnedSolver, WeightKeyed
from neuralnum.solvers.operators import LearnedOperator
from neuralnum.training.fit import ProblemTask
from neuralnum.training.objectives import Objective, as_objective, objective_from_dict
from neuralnum.training.predictor import Predictor, one_step_metrics
from neuralnum.training.recipe import Recipe

__all__ = ["ARCHS", "FORMAT", "Learner", "SolveInfo", "default_arch"]

#: Checkpoint format; version 3 nests the recipe's Levenberg–Marquardt settings.
FORMAT = "neuralnum.learner/3"


class Learner(LearnedSolver):
    """A trainable learned solver step (or end-to-end predictor) for ``n × d`` problems.

    ``arch``: a :func:`neuralnum.models.arch_config` name (``d_model``, ``n_layers`` and
    ``arch_options`` default to :func:`default_arch`; weights seeded by ``seed``) or an
    ``nn.Module`` mapping ``(B, n, d_model)`` tokens to the same shape.
    ``target``: a :class:`~neuralnum.problems.targets.GDStep`, an objective, ``"gd"`` or
    ``"solution"``. Parameters live in the recipe's master dtype on ``device``; problems
    are drawn on the CPU (seeded) and moved there. Under ``torchrun`` with CUDA each rank
    uses ``cuda:LOCAL_RANK``.
    """

    FORMAT = FORMAT

    def __init__(self, arch: str | nn.Module, target: object = "gd",
                 recipe: Recipe | None = None, *, n: int = 20, d: int = 5,
                 d_model: int | None = None, n_layers: int | None = None,
                 arch_options: dict[str, Any] | None = None, seed: int = 0,
                 device: str | torch.device = "cpu"):
        self.recipe = recipe if recipe is not None else Recipe()
        if not isinstance(self.recipe, Recipe):
            raise TypeError(f"recipe must be a Recipe, got {type(self.recipe).__name__}")
        self.objective: Objective = as_objective(target)
        self.n, self.d = n, d
        self.device = torch.device(device)
        self.arch_config: dict[str, Any] | None = None
        if isinstance(arch, str):
            model, self.arch_config = named_arch(arch, n, d, self.dtype, d_model=d_model,
                                                 n_layers=n_layers, options=arch_options,
                                                 seed=seed)
            d_model = self.arch_config["d_model"]
        elif isinstance(arch, nn.Module):
            d_model = d_model or getattr(arch, "d_model", 2 * d + 1)
            model = cast_module(arch, self.dtype)
        else:
            raise TypeError(f"arch must be an architecture name or nn.Module, got "
                            f"{type(arch).__name__}")
        self.layout = TokenLayout(n, d, width=d_model)
        self.net = Predictor(model, self.layout, self.objective, self.precision)
        self._canonical = WeightKeyed(self._canonical_copy)
        self.to(self.device)
        self.step_count = 0
        self.last_solve: SolveInfo | None = None

    # ------------------------------------------------------------------ config
    @property
    def model(self) -> nn.Module:
        """The token model (its parameters are the learner's)."""
        return self.net.model

    def config(self) -> dict[str, Any]:
        """What is needed to rebuild this learner (saved in every checkpoint)."""
        return {"arch": self.arch_config, "n": self.n, "d": self.d,
                "d_model": self.layout.width, "objective": self.objective.to_dict(),
                "recipe": self.recipe.to_dict()}

    def to(self, device: str | torch.device) -> Learner:
        """Move the model (and its mixed-precision compute copy) to ``device``; problems
        given to :meth:`step` / :meth:`solve` must then live there too."""
        self.device = torch.device(device)
        self.net.to(self.device)
        for compute in self.net.compute:
            compute.to(self.device)
        return self

    @torch.no_grad()
    def init_construction(self, noise: float = 0.0, seed: int = 0) -> Learner:
        """Set the weights to the exact GD construction (``η = 1/n``: the model computes
        ``x − Aᵀ(Ax − b)/n``, zero loss) plus ``noise``·N(0, 1) on every parameter.

        For BaseConv / linear attention learners of the default shape and the update
        objective: the starting point of the precision-refinement studies.
        """
        if not self.objective.iterative:
            raise ValueError("init_construction needs the update objective")
        load_construction(self.model, (self.arch_config or {}).get("name"), self.n, self.d,
                          noise=noise, seed=seed)
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The model's prediction ``(B, d)`` (master dtype): ``x − out_x`` for the update
        rule, ``out_x`` end-to-end (:class:`Predictor`); raises on NaN/Inf output."""
        out = self._raw_forward(A, b, x)
        if not torch.isfinite(out).all():
            raise FloatingPointError("the model produced NaN/Inf (training diverged or the "
                                     "input is far outside the training distribution)")
        return out

    def _raw_forward(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor,
                     net: nn.Module | None = None) -> torch.Tensor:
        """:meth:`forward` without the finiteness check of the output (through ``net``, a
        copy of :attr:`net`, when given)."""
        check_problem(A, b, x)
        return (self.net if net is None else net)(A, b, x)

    def solver_forward(self) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                                         torch.Tensor]:
        """The prediction ``(A, b, x) -> (B, d)`` the operator solvers call (no finiteness
        check: they flag non-finite output themselves).

        For a linear-attention learner it runs a copy of the network whose heads are
        re-factored into their interpolative form
        (:func:`neuralnum.models.canonical.canonicalize_attention`): the same function, but
        each score rounds like one residual. The copy is a function of the weights alone
        (never of a problem) and is kept until the weights change. Other learners run
        :attr:`net`.
        """
        if not isinstance(self.model, LinearAttention):
            return self._raw_forward
        return functools.partial(self._raw_forward, net=self._canonical.get(self.net))

    def _canonical_copy(self, net: nn.Module) -> nn.Module:
        """A copy of ``net`` with its attention heads in interpolative form."""
        canonical = copy.deepcopy(net)
        canonicalize_attention(canonical.model, self.layout)
        return canonical

    @torch.no_grad()
    def step(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """One learned iterate ``x⁺`` for ``A: (B, n, d)``, ``b: (B, n)``, ``x: (B, d)``."""
        check_problem(A, b, x)
        self._check_dtype(A)
        return self.objective.next_iterate(A, x, self.forward(A, b, x), self.n)

    def serves(self, n: int, d: int) -> bool:
        """Whether :meth:`solve` takes problems with ``n`` rows and ``d`` columns: the
        ``d`` it was trained for and at most its ``n`` rows (the model reads a shorter
        sequence; :class:`~neuralnum.solvers.operators.LearnedOperator` repeats rows where
        ``n`` divides the training length)."""
        return d == self.d and 1 <= n <= self.n

    def _solve(self, A: torch.Tensor, b: torch.Tensor, method: str | None,
               x0: torch.Tensor | None, options: dict[str, Any]) -> torch.Tensor:
        """An update learner runs ``method`` (``"cg"`` default, ``"chebyshev"``, ``"gd"``)
        of :func:`neuralnum.solvers.krylov.solve` on its :class:`LearnedOperator`
        (equilibrated, so scale-invariant; no SVD of ``A``), with ``x0`` and ``options``
        (``iters``, ``tol``, ``max_iters``, ``patience``, ``accept``, ``record``,
        ``warn``). An end-to-end learner predicts once from ``x = 0``."""
        if not self.serves(*A.shape[1:]):
            raise ValueError(f"this learner was trained for A of shape {(self.n, self.d)} "
                             f"(it serves {self.d} columns and up to {self.n} rows) and "
                             f"cannot solve A of shape {tuple(A.shape[1:])}: for any shape use "
                             f"the shipped shape-general solver (neuralnum.lstsq(A, b, "
                             f"solver=\"learned\"), or neuralnum.solvers.pretrained."
                             f"pretrained())")
        if self.objective.iterative:
            x, self.last_solve = krylov.solve(LearnedOperator(self, A, b), method or "cg", x0,
                                              **options)
            return x
        if method is not None:
            raise ValueError(f"an end-to-end learner predicts once; method={method!r} needs "
                             f"an update learner")
        self.last_solve = SolveInfo.single_call(A.shape[0], A.device)
        return self.forward(A, b, A.new_zeros(A.shape[0], A.shape[2]))

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor,
                 label: torch.Tensor) -> dict[str, float]:
        """One-step metrics on a batch (:func:`one_step_metrics`)."""
        return one_step_metrics(self.forward(A, b, x), label)

    # ------------------------------------------------------------------ training
    def make_task(self, family: Any, *, seed: int, eval_batch: int) -> ProblemTask:
        """The training loop's task: problems of ``family`` (:class:`ProblemTask`)."""
        return ProblemTask(self, family, seed=seed, eval_batch=eval_batch)

    # ------------------------------------------------------------------ save / load
    def _check_config(self, saved: dict[str, Any], path: object) -> None:
        """A checkpoint must hold a learner of this shape and objective."""
        mine = self.config()
        for key in ("arch", "n", "d", "d_model", "objective"):
            a, b = saved.get(key), mine.get(key)
            if key == "arch":
                if a is None or b is None:
                    continue
                a, b = ([c[k] for k in ("name", "d_model", "n_layers", "options")]
                        for c in (a, b))
            if a != b:
                raise CheckpointError(f"{path} is incompatible: {key} = {a!r}, this learner "
                                      f"has {b!r}")

    @classmethod
    def load(cls, path: str | os.PathLike[str], arch: nn.Module | None = None,
             recipe: Recipe | None = None) -> Learner:
        """Rebuild a learner from a checkpoint (``arch`` needed for custom modules)."""
        state = load_checkpoint(path)
        if state.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a neuralnum learner checkpoint (format "
                                  f"{state.get('format')!r}, expected {FORMAT!r})")
        cfg = state["config"]
        recipe = recipe or Recipe.from_dict(cfg["recipe"])
        objective = objective_from_dict(cfg["objective"])
        if arch is not None:
            learner = cls(arch, objective, recipe, n=cfg["n"], d=cfg["d"],
                          d_model=cfg["d_model"])
        elif cfg["arch"] is None:
            raise CheckpointError(f"{path} was saved from a custom module: pass arch=")
        else:
            a = cfg["arch"]
            learner = cls(a["name"], objective, recipe, n=cfg["n"], d=cfg["d"],
                          d_model=a["d_model"], n_layers=a["n_layers"],
                          arch_options=a["options"], seed=a["seed"])
        return learner._load_state(state, path)
