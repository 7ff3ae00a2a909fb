"""Judge solvers against a high-precision reference: the numbers studies and the CLI print.

:func:`solve_report` solves held-out problems with a learner and with scipy's LAPACK
``gelsd`` and measures both against :func:`neuralnum.problems.reference.lstsq` (``mpmath`` by
default: an SVD at 50 digits, so the judge's own error is below float64 roundoff).
"""

from __future__ import annotations

from typing import Any

import torch

from neuralnum.core.runtime import make_generator
from neuralnum.problems import reference

__all__ = ["error_metrics", "solve_report"]


def error_metrics(x: torch.Tensor, x_ref: torch.Tensor) -> dict[str, float]:
    """Mean MSE, median relative error and median digits of ``x: (B, d)`` against
    ``x_ref``, plus the fraction of ``diverged`` (non-finite) rows — which count as an
    infinite MSE and relative error and as 0 digits."""
    finite = torch.isfinite(x).all(dim=1)
    safe = torch.where(finite.unsqueeze(1), x, x_ref)
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    mse = torch.where(finite, reference.mse(safe, x_ref), inf)
    rel = torch.where(finite, reference.relative_error(safe, x_ref), inf)
    # x in the wider of the two dtypes, as it always was here: a float32 x judged against a
    # float64 x_ref is clipped at float64's digits, not float32's
    digits = reference.finite_digits(x.to(torch.promote_types(x.dtype, x_ref.dtype)), x_ref)
    return {"mse": float(mse.mean()), "rel_error": float(rel.median()),
            "digits": float(digits.median()), "diverged": float((~finite).double().mean())}


def solve_report(learner: Any, family: Any, *, batch: int = 64, seed: int = 12345,
                 iters: int | None = None, tol: float | None = None,
                 judge: str = "mpmath", method: str | None = None) -> dict[str, dict[str, Any]]:
    """``{"learned": {...}, "scipy": {...}}``: each solver's :func:`error_metrics` on
    ``batch`` problems from ``family`` (drawn with ``seed`` in the learner's dtype),
    judged by ``reference.lstsq(method=judge)``; the learned row adds the median
    ``iterations`` and ``model_calls`` of its ``method`` (default: CG for update learners)."""
    problems = family.sample(batch, make_generator(seed), learner.dtype)
    A, b = problems.A, problems.b
    x_judge = reference.lstsq(A.double(), b.double(), method=judge)
    x_learned = learner.solve(A, b, method, iters=iters, tol=tol)
    info = learner.last_solve
    learned = {**error_metrics(x_learned, x_judge),
               "iterations": float(info.iterations.double().median()),
               "model_calls": float(info.model_calls.double().median())}
    return {"learned": learned,
            "scipy": error_metrics(reference.lstsq(A, b, method="scipy"), x_judge)}
