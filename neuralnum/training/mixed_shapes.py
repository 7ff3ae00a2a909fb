"""Training the shape-general operator: problems of mixed shapes as a loop task.

:class:`ShapeMixture` says where the operator is trained: every batch draws its own shape
``n ∈ [1, n_max]``, ``d ∈ [1, d_max]`` (over- and under-determined) and family; ``b`` and
``x`` are Gaussian. The targets are exact: ``r = A x − b`` and ``g = Aᵀ r`` in double-double
(:mod:`neuralnum.problems.double_double`), so the loss has no rounding floor of its own.

:class:`MixedShapeTask` is the loop's task for a model ``(A, b, x) → (r, g)``:

* a training batch (:meth:`~MixedShapeTask.sample`): ``size`` problems of one random shape
  and family; loss: ``log(1 + e)`` averaged over problems, ``e = ‖r̂ − r‖²/‖r‖² +
  ‖ĝ − g‖²/‖g‖²`` the relative error of both heads (the log keeps a random init's huge
  errors, cubic in the inputs, from dominating the first steps);
* the Levenberg–Marquardt finisher's view (:class:`~neuralnum.training.finisher.ResidualTask`):
  sets of problems are lists of *groups*, one shape each (``group`` problems, every family
  alike, ``A``, ``b`` and ``x`` each scaled per problem by ``10^U(±decades/2)`` so that a
  term of the wrong degree shows), and the residuals are the relative errors of both heads,
  ``(r̂ − r)/‖r‖`` and ``(ĝ − g)/‖g‖``, over the flat weights (Jacobian in forward mode: a
  few hundred parameters, many thousand residuals);
* the held-out problems are such a set too, drawn from their own stream
  (:data:`~neuralnum.training.loop.EVAL_STREAM`).

Shapes: a group is ``(A: (B, n, d), b: (B, n), x: (B, d), r_hi, r_lo: (B, n), g_hi, g_lo:
(B, d))``, the problem in the model's dtype, the targets as double-double float64 pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from neuralnum.core.runtime import make_generator
from neuralnum.core.validation import check_positive_int, check_range
from neuralnum.models.base import count_parameters
from neuralnum.problems.double_double import dd_step
from neuralnum.problems.families import FAMILIES, family_from_name
from neuralnum.training.lm_problems import FunctionalProblem
from neuralnum.training.loop import EVAL_STREAM
from neuralnum.training.plugins import Task
from neuralnum.training.token_residuals import FlatParameters

__all__ = ["Group", "MixedShapeTask", "ShapeMixture", "relative_errors", "relative_residuals"]

Group = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class ShapeMixture:
    """The training distribution: shapes up to ``n_max × d_max``, the registered
    ``families`` (``spectrum``: κ = ``10^U(0, log₁₀ max_cond)``, log-spaced singular
    values), ``group`` problems per shape in the finisher's and held-out sets, scaled over
    ``decades`` there."""

    n_max: int = 64
    d_max: int = 16
    families: tuple[str, ...] = ("gaussian", "spectrum", "scaled", "heavy_tailed")
    max_cond: float = 100.0
    group: int = 24
    decades: float = 2.0

    def __post_init__(self) -> None:
        for name in ("n_max", "d_max", "group"):
            check_positive_int(getattr(self, name), name)
        check_range(self.max_cond, "max_cond", 1)
        check_range(self.decades, "decades", 0)
        unknown = sorted(set(self.families) - set(FAMILIES))
        if not self.families or unknown:
            raise ValueError(f"families must be registered names (neuralnum.problems."
                             f"FAMILIES), got unknown {unknown or 'none at all'}")
        if self.group % len(self.families):
            raise ValueError(f"group={self.group} must be a multiple of the "
                             f"{len(self.families)} families")

    def problems(self, gen: torch.Generator, batch: int, n: int, d: int, family: str,
                 decades: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``batch`` float64 problems ``(A, b, x)`` of one shape and family, each of ``A``,
        ``b``, ``x`` scaled per problem by ``10^U(−decades/2, decades/2)``."""
        fields: dict[str, Any] = {"n": n, "d": d}
        if family == "spectrum":
            exponent = float(torch.rand(1, generator=gen, dtype=torch.float64))
            fields |= {"cond": self.max_cond ** exponent, "spectrum": "geometric"}
        A = family_from_name(family, **fields).matrices(batch, gen)

        def scale(*shape: int) -> torch.Tensor:
            u = torch.rand(batch, *shape, generator=gen, dtype=torch.float64)
            return 10 ** (decades * (u - 0.5))

        b = torch.randn(batch, n, generator=gen, dtype=torch.float64) * scale(1)
        x = torch.randn(batch, d, generator=gen, dtype=torch.float64) * scale(1)
        return A * scale(1, 1), b, x

    def shape(self, gen: torch.Generator) -> tuple[int, int]:
        n = int(torch.randint(1, self.n_max + 1, (1,), generator=gen))
        return n, int(torch.randint(1, self.d_max + 1, (1,), generator=gen))


def _group(A: torch.Tensor, b: torch.Tensor, x: torch.Tensor, dtype: torch.dtype,
           device: torch.device) -> Group:
    """The problem rounded to ``dtype`` and its exact targets (of the rounded problem)."""
    A, b, x = (t.to(dtype) for t in (A, b, x))
    (r_hi, r_lo), (g_hi, g_lo) = dd_step(A, b, x)
    targets = (torch.from_numpy(t) for t in (r_hi, r_lo, g_hi, g_lo))
    return tuple(t.to(device) for t in (A, b, x, *targets))


def relative_errors(model: Callable[..., tuple[torch.Tensor, torch.Tensor]],
                    group: Group) -> torch.Tensor:
    """Per problem ``‖r̂ − r‖²/‖r‖² + ‖ĝ − g‖²/‖g‖²``: ``(B,)`` float64."""
    return relative_residuals(model, group).pow(2).sum(1)


def relative_residuals(model: Callable[..., tuple[torch.Tensor, torch.Tensor]],
                        group: Group, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[(r̂ − r)/‖r‖, (ĝ − g)/‖g‖]`` per problem: ``(B, n + d)`` float64 (the model run
    in ``dtype``, default the group's)."""
    A, b, x, r_hi, r_lo, g_hi, g_lo = group
    if dtype is not None:
        A, b, x = A.to(dtype), b.to(dtype), x.to(dtype)
    r_hat, g_hat = model(A, b, x)
    tiny = torch.finfo(torch.float64).tiny
    r = ((r_hat.double() - r_hi) - r_lo) / r_hi.norm(dim=1, keepdim=True).clamp_min(tiny)
    g = ((g_hat.double() - g_hi) - g_lo) / g_hi.norm(dim=1, keepdim=True).clamp_min(tiny)
    return torch.cat([r, g], 1)


class MixedShapeTask(Task):
    """The loop's task for ``learner`` (its ``net``: ``(A, b, x) → (r, g)``, its ``dtype``,
    ``precision`` and ``device``) on ``mixture``; the held-out set: ``eval_batch``
    problems (rounded up to whole groups) from ``seed +`` :data:`EVAL_STREAM`."""

    def __init__(self, learner: Any, mixture: ShapeMixture, *, seed: int,
                 eval_batch: int) -> None:
        self.learner, self.mixture = learner, mixture
        self.held_out = self.draw(eval_batch, make_generator(seed + EVAL_STREAM))

    def sample(self, size: int, gen: torch.Generator) -> Group:
        n, d = self.mixture.shape(gen)
        families = self.mixture.families
        family = families[int(torch.randint(len(families), (1,), generator=gen))]
        problem = self.mixture.problems(gen, size, n, d, family, decades=0.0)
        return _group(*problem, self.learner.dtype, self.learner.device)

    def loss(self, model: nn.Module, batch: Group) -> torch.Tensor:
        return torch.log1p(relative_errors(model, batch)).mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        errors = torch.cat([relative_errors(model, group) for group in self.held_out])
        return {"mse": float(errors.mean()), "rel_mse_median": float(errors.median())}

    # the Levenberg–Marquardt finisher's view (neuralnum.training.finisher.ResidualTask)
    @property
    def parameters(self) -> int:
        return count_parameters(self.learner.net)

    @property
    def residuals_per_problem(self) -> float:
        return (self.mixture.n_max + self.mixture.d_max) / 2 + 1

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.learner.precision.compute_dtype

    def draw(self, k: int, generator: torch.Generator) -> list[Group]:
        """At least ``k`` problems in whole groups, one random shape each, every family
        alike, scaled over the mixture's ``decades``."""
        mix, groups = self.mixture, []
        for _ in range(-(-k // mix.group)):
            n, d = mix.shape(generator)
            parts = [mix.problems(generator, mix.group // len(mix.families), n, d, family,
                                  mix.decades) for family in mix.families]
            problem = (torch.cat(p) for p in zip(*parts, strict=True))
            groups.append(_group(*problem, self.learner.dtype, self.learner.device))
        return groups

    def join(self, a: list[Group], b: list[Group]) -> list[Group]:
        return [*a, *b]

    def size(self, data: list[Group]) -> int:
        return sum(group[0].shape[0] for group in data)

    def count(self, data: list[Group]) -> int:
        return sum(group[3].numel() + group[5].numel() for group in data)

    def residual_problem(self, data: list[Group], chunk: int, dtype: torch.dtype | None
                         ) -> tuple[FunctionalProblem, torch.Tensor,
                                    Callable[[torch.Tensor], None]]:
        """The relative residuals of both heads on every problem of ``data``, the model run
        in ``dtype`` (default: its compute dtype), as a function of the flat float64
        weights; with the starting weights and the write-back."""
        net, flat = self.learner.net, FlatParameters(self.learner.net)
        dtype = dtype or self.compute_dtype

        def residuals(theta: torch.Tensor) -> torch.Tensor:
            params = flat.unflatten(theta, theta.dtype)

            def model(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return functional_call(net, params, args)

            return torch.cat([relative_residuals(model, group, dtype).reshape(-1)
                              for group in data])

        problem = FunctionalProblem(residuals, chunk=chunk, forward=True)
        return problem, flat.vector(), flat.write_back

    def snap(self, data: list[Group], rtol: float, chunk: int,
             dtype: torch.dtype | None) -> list:
        return []
