"""Judge solvers against a high-precision reference: the numbers studies and the CLI print.

:func:`solve_report` solves held-out problems with a learner and with scipy's LAPACK
``gelsd`` and measures both against :func:`neuralnum.reference.lstsq` (``mpmath`` by
default: an SVD at 50 digits, so the judge's own error is below float64 roundoff).
"""

from __future__ import annotations

from typing import Any

import torch

from neuralnum import reference
from neuralnum.runtime import make_generator

__all__ = ["error_metrics", "solve_report"]


def error_metrics(x: torch.Tensor, x_ref: torch.Tensor) -> dict[str, float]:
    """Mean MSE, median relative error and median digits of ``x`` against ``x_ref``."""
    return {"mse": float(reference.mse(x, x_ref).mean()),
            "rel_error": float(reference.relative_error(x, x_ref).median()),
            "digits": float(reference.digits(x, x_ref).median())}


def solve_report(learner: Any, family: Any, *, batch: int = 64, seed: int = 12345,
                 iters: int | None = None, tol: float | None = None,
                 judge: str = "mpmath") -> dict[str, dict[str, Any]]:
    """``{"learned": {...}, "scipy": {...}}``: each solver's :func:`error_metrics` on
    ``batch`` problems from ``family`` (drawn with ``seed`` in the learner's dtype),
    judged by ``reference.lstsq(method=judge)``; the learned row adds ``iterations``."""
    problems = family.sample(batch, make_generator(seed), learner.dtype)
    A, b = problems.A, problems.b
    x_judge = reference.lstsq(A.double(), b.double(), method=judge)
    x_learned = learner.solve(A, b, iters=iters, tol=tol)
    learned = {**error_metrics(x_learned, x_judge), "iterations": learner.last_solve.iterations}
    return {"learned": learned,
            "scipy": error_metrics(reference.lstsq(A, b, method="scipy"), x_judge)}
