"""``neuralnum.lstsq``: a front door shaped like ``scipy.linalg.lstsq``'s solution.

``lstsq(A, b, solver=learner)`` swaps a learned iterative solver in for
``scipy.linalg.lstsq(A, b)[0]``; ``solver=None`` uses the reference
(:func:`neuralnum.reference.lstsq`, LAPACK ``gelsd``). Shapes follow scipy:

* ``A: (n, d)``, ``b: (n,)`` → ``x: (d,)``;
* ``A: (n, d)``, ``b: (n, k)`` → ``x: (d, k)`` (``k`` right-hand sides);
* batched ``A: (B, n, d)``, ``b: (B, n)`` → ``x: (B, d)``.

NumPy arrays in give NumPy arrays out (dtype kept); torch tensors give tensors. The
dtype must be float32 or float64 and match the learner's (nothing is silently cast).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from neuralnum import reference
from neuralnum.validation import check_tensor

__all__ = ["lstsq"]


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, torch.Tensor):
        return value
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(value).__name__}")


def lstsq(A: Any, b: Any, solver: Any = None, **solve_kwargs: Any) -> Any:
    """Least-squares solution ``x`` minimising ``‖A x − b‖₂`` (shapes in the module doc).

    ``solver``: a :class:`~neuralnum.learner.Learner` (its :meth:`solve` is called with
    ``solve_kwargs``, e.g. ``iters``/``tol``) or ``None`` for the LAPACK reference. The
    result's precision is the solver's: near machine precision for the reference; what
    the learned step reached (its one-step MSE, amplified by the problem's conditioning)
    for a learner.
    """
    numpy_io = isinstance(A, np.ndarray)
    At, bt = _as_tensor(A, "A"), _as_tensor(b, "b")
    if At.ndim == 2:
        check_tensor(At, "A", 2)
        if bt.ndim not in (1, 2):
            raise ValueError(f"b must have shape (n,) or (n, k) for A of shape "
                             f"{tuple(At.shape)}, got {tuple(bt.shape)}")
        if bt.shape[0] != At.shape[0]:
            raise ValueError(f"b has {bt.shape[0]} rows but A has {At.shape[0]}")
        columns = bt.reshape(bt.shape[0], -1).T  # (k, n)
        x = _solve(At.expand(columns.shape[0], *At.shape), columns, solver, solve_kwargs)
        x = x[0] if bt.ndim == 1 else x.T
    elif At.ndim == 3:
        x = _solve(At, bt, solver, solve_kwargs)
    else:
        raise ValueError(f"A must have shape (n, d) or (B, n, d), got {tuple(At.shape)}")
    return x.numpy() if numpy_io else x


def _solve(A: torch.Tensor, b: torch.Tensor, solver: Any, kwargs: dict[str, Any]) -> torch.Tensor:
    if solver is None:
        if kwargs:
            raise TypeError(f"solve options {sorted(kwargs)} need a learned solver")
        return reference.lstsq(A, b)
    return solver.solve(A.contiguous(), b.contiguous(), **kwargs)
