"""What every learned solver shares: batching of its inputs, its dtype, training through
the one loop, and checkpoints.

A learned solver (:class:`~neuralnum.solvers.learner.Learner`, the token learner bound to
one shape; :class:`~neuralnum.solvers.axial_learner.AxialLearner`, the shape-general one)
is a trainable network ``net`` with a :class:`~neuralnum.training.recipe.Recipe`, and
solves least-squares problems touching ``A`` only through it. Subclasses give
``FORMAT`` (the checkpoint format), ``net``, :meth:`config`, :meth:`make_task` (the
training loop's task) and :meth:`_solve` (a batch of problems); this class gives
:meth:`solve` (one problem or a batch), :meth:`fit`, :meth:`save` and
:meth:`load_weights`, with checkpoints written atomically and read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from neuralnum.core.runtime import CheckpointError, Distributed, load_checkpoint, save_checkpoint
from neuralnum.core.validation import check_problem, check_tensor
from neuralnum.models.registry import check_weights
from neuralnum.training.fit import Callback, FitOptions, fit
from neuralnum.training.plugins import Task
from neuralnum.training.recipe import Recipe

T = TypeVar("T")

__all__ = ["LearnedSolver"]


class WeightKeyed(Generic[T]):
    """A value derived from a network's weights by ``build(net)``, remade only when the
    weights change (in value, dtype or device)."""

    def __init__(self, build: Callable[[nn.Module], T]) -> None:
        self.build = build
        self.weights: torch.Tensor | None = None
        self.value: T | None = None

    def get(self, net: nn.Module) -> T:
        """The value for ``net``'s current weights."""
        weights = _flat_weights(net)
        old = self.weights
        if (old is None or (old.device, old.dtype) != (weights.device, weights.dtype)
                or not torch.equal(old, weights)):
            self.weights, self.value = weights, self.build(net)
        return self.value

    def set(self, net: nn.Module, value: T) -> None:
        """Keep ``value`` (made otherwise than by ``build``) for ``net``'s current
        weights."""
        self.weights, self.value = _flat_weights(net), value


def _flat_weights(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


class LearnedSolver:
    """Base of the learned solvers; ``recipe``, ``precision``, ``device``, ``net``,
    ``step_count`` and ``last_solve`` (the record of the last :meth:`solve`) are set by the
    subclass."""

    FORMAT: ClassVar[str] = ""
    recipe: Recipe
    net: nn.Module
    device: torch.device
    last_solve: Any = None
    step_count: int = 0

    @property
    def precision(self) -> Any:
        return self.recipe.precision

    @property
    def dtype(self) -> torch.dtype:
        """The dtype problems are given in (the master / parameter dtype)."""
        return self.precision.param_dtype

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.net.parameters() if p.requires_grad]

    def config(self) -> dict[str, Any]:
        """What is needed to rebuild this solver (saved in every checkpoint)."""
        raise NotImplementedError

    def make_task(self, data: Any, *, seed: int, eval_batch: int) -> Task:
        """The training loop's task for the problems ``data`` describes."""
        raise NotImplementedError

    def _solve(self, A: torch.Tensor, b: torch.Tensor, method: str | None,
               x0: torch.Tensor | None, options: dict[str, Any]) -> torch.Tensor:
        """Solve the batch ``A: (B, n, d)``, ``b: (B, n)``; set :attr:`last_solve`."""
        raise NotImplementedError

    def _check_dtype(self, A: torch.Tensor) -> None:
        if A.dtype != self.dtype:
            raise TypeError(f"A.dtype {A.dtype} differs from the learned solver's dtype "
                            f"{self.dtype} (recipe dtype {self.recipe.dtype!r})")

    @torch.no_grad()
    def solve(self, A: torch.Tensor, b: torch.Tensor, method: str | None = None,
              x0: torch.Tensor | None = None, **options: Any) -> torch.Tensor:
        """Solve ``min ‖A x − b‖`` touching ``A`` only through the learned network: ``x:
        (B, d)`` for ``A: (B, n, d)``, ``b: (B, n)`` (or ``(d,)`` for ``A: (n, d)``, ``b:
        (n,)``), in :attr:`dtype`; ``method``, ``x0`` and ``options`` as the subclass
        says. :attr:`last_solve` records iterations, model calls and how each problem
        stopped."""
        unbatched = isinstance(A, torch.Tensor) and A.ndim == 2
        if unbatched:
            check_tensor(b, "b", 1)
            A, b = A.unsqueeze(0), b.unsqueeze(0)
            x0 = None if x0 is None else check_tensor(x0, "x0", 1).unsqueeze(0)
        check_problem(A, b, x0, x_name="x0")
        self._check_dtype(A)
        x = self._solve(A, b, method, x0, options)
        return x[0] if unbatched else x

    def fit(self, data: Any, steps: int | None = None, *,
            callbacks: Iterable[Callback] = (), distributed: Distributed | None = None,
            **options: Any) -> list[dict[str, Any]]:
        """Train on the problems ``data`` describes for ``steps`` (and/or until
        ``until_mse`` or for ``minutes``): :func:`neuralnum.training.fit.fit` with
        ``FitOptions(steps=steps, **options)`` (seed, log_every, eval_batch, metrics,
        checkpoint, checkpoint_every, resume, show_progress:
        :class:`~neuralnum.training.fit.FitOptions`)."""
        return fit(self, data, FitOptions(steps=steps, **options), callbacks=callbacks,
                   distributed=distributed)

    def save(self, path: str | os.PathLike[str], **extra: Any) -> Path:
        """Atomically write the format, config and weights (no training state), and any
        ``extra`` plain entries, to ``path``."""
        return save_checkpoint(path, {"format": self.FORMAT, "config": self.config(),
                                      "model": self.net.state_dict(), **extra})

    def check_compatible(self, state: dict[str, Any], path: object) -> dict[str, Any]:
        """Raise :class:`CheckpointError` unless ``state`` (a loaded checkpoint) has this
        solver's format, a compatible config (:meth:`_check_config`) and weights of its
        names and shapes; returns ``state``."""
        if state.get("format") != self.FORMAT:
            raise CheckpointError(f"{path} is not a {self.FORMAT} checkpoint (format "
                                  f"{state.get('format')!r}); write it again with this "
                                  f"version's save()")
        self._check_config(state["config"], path)
        check_weights(state["model"], self.net.state_dict(), path, CheckpointError)
        return state

    def _check_config(self, saved: dict[str, Any], path: object) -> None:
        """Raise :class:`CheckpointError` if the saved config cannot load into this one."""

    def load_weights(self, path: str | os.PathLike[str]) -> LearnedSolver:
        """Load the weights of a checkpoint written by :meth:`save` / :meth:`fit`."""
        return self._load_state(load_checkpoint(path), path)

    def _load_state(self, state: dict[str, Any], path: object) -> LearnedSolver:
        """Load the weights of ``state``, the checkpoint read from ``path``, once
        :meth:`check_compatible` accepts it."""
        state = self.check_compatible(state, path)
        self.net.load_state_dict({k: v.to(self.dtype) if v.is_floating_point() else v
                                  for k, v in state["model"].items()})
        return self
