"""Every least-squares method on an operator, by name: the one place a solve is chosen.

* ``"lsqr"``, ``"cgls"`` — on the operator's separate products ``A v``, ``Aᵀ u``
  (:mod:`neuralnum.solvers.lsqr`, :mod:`neuralnum.solvers.cgls`): error ``∝ κ(A)·u``;
  options ``atol``, ``btol``, ``conlim``, ``iter_lim`` with scipy's meanings
  (``scipy.sparse.linalg.lsqr``), defaults ``atol = btol = eps`` of the dtype (machine
  precision), ``conlim = 1e8``, ``iter_lim = 2·d``; LSQR also ``reorthogonalize``
  (default off: scipy's iteration); both ``refine`` (default 0): that many steps of
  iterative refinement in the working precision — ``x ← x + δ``, ``δ`` the same method's
  solution for the residual ``b − A x`` formed with the operator's own product — for the
  problems whose condition estimate ``acond`` is at least :data:`REFINE_ACOND`. A solve's
  error at ``κ·u`` is mostly its last iterations' rounding against a residual that no
  longer shrinks; the correction solve sees that residual afresh (about 1–2 digits at
  ``κ = 1e4``), at the cost of a second solve where it runs;
* ``"cg"``, ``"chebyshev"``, ``"gd"`` — on the fused ``g(x) ∝ Aᵀ(Ax − b)``
  (:mod:`neuralnum.solvers.krylov`): error ``∝ κ(A)²·u``; options ``iters``, ``tol``,
  ``max_iters``, ``patience``, ``accept``.

:func:`solve` (for the fused methods, by default) balances the columns first where that
is safe and worth it (:meth:`~neuralnum.solvers.operators.Operator.balance_columns`), runs
the method on the
equilibrated problem and returns ``x`` in the original coordinates with the method's
record (:class:`~neuralnum.solvers.ls_driver.LsqrInfo` or
:class:`~neuralnum.solvers.krylov.SolveInfo`: both give ``iterations``, ``model_calls``,
``converged``, ``summary()``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch

from neuralnum.core.validation import check_choice, check_problem
from neuralnum.solvers import krylov
from neuralnum.solvers.cgls import cgls
from neuralnum.solvers.krylov import SolveInfo, SolveWarning
from neuralnum.solvers.ls_driver import NONFINITE, LsqrInfo
from neuralnum.solvers.lsqr import lsqr
from neuralnum.solvers.operators import Operator

__all__ = ["METHODS", "PRODUCT_METHODS", "REFINE_ACOND", "solve"]

PRODUCT_METHODS: tuple[str, ...] = ("lsqr", "cgls")
METHODS: tuple[str, ...] = (*PRODUCT_METHODS, *krylov.METHODS)
_PRODUCT_SOLVERS = {"lsqr": lsqr, "cgls": cgls}
#: ``refine`` leaves out problems whose condition estimate is below this: their error
#: (``≲ acond·u``) is already within a digit or so of the dtype's precision.
REFINE_ACOND = 1e3


def solve(op: Operator, method: str = "lsqr", x0: torch.Tensor | None = None,
          **options: Any) -> tuple[torch.Tensor, LsqrInfo | SolveInfo]:
    """Solve the problems of ``op`` with ``method`` (one of :data:`METHODS`); returns
    ``(x: (B, d) in the original coordinates, the method's record)``. ``x0: (B, d)``
    (original coordinates) defaults to 0; ``options`` are the method's (module
    docstring), plus ``record`` (the iterates), ``warn`` (a :class:`SolveWarning` for
    problems that did not converge) and ``balance`` (column balancing: default on for the
    fused methods; off for LSQR / CGLS, which then run scipy's iteration exactly)."""
    check_choice(method, "method", METHODS)
    if method in krylov.METHODS:
        return krylov.solve(op, method, x0, **options)
    return _solve_with_products(op, method, x0, **options)


@torch.no_grad()
def _solve_with_products(op: Operator, method: str, x0: torch.Tensor | None, *,
                         atol: float | None = None, btol: float | None = None,
                         conlim: float = 1e8, iter_lim: int | None = None,
                         record: bool = False, warn: bool = True, balance: bool = False,
                         reorthogonalize: bool = False, refine: int = 0
                         ) -> tuple[torch.Tensor, LsqrInfo]:
    eps = torch.finfo(op.dtype).eps
    extra = {"reorthogonalize": True} if reorthogonalize else {}
    if reorthogonalize and method != "lsqr":
        raise ValueError("reorthogonalize applies to method='lsqr' (the Golub–Kahan "
                         "vectors); CGLS keeps no basis to orthogonalise against")
    if not isinstance(refine, int) or isinstance(refine, bool) or refine < 0:
        raise ValueError(f"refine must be an int >= 0 (refinement steps), got {refine!r}")
    if x0 is not None:
        check_problem(op.A, op.b, x0, x_name="x0")
    if balance:
        op.balance_columns()
    start = None if x0 is None else op.to_equilibrated(x0)
    run = functools.partial(
        _PRODUCT_SOLVERS[method], op, atol=eps if atol is None else atol,
        btol=eps if btol is None else btol, conlim=conlim, iter_lim=iter_lim, record=record,
        **extra)
    x, info = run(op.b, x0=start)
    for _ in range(refine):
        x, info = _refine(op, run, x, info)
    info.method, info.model_calls = method, op.calls.clone()
    if info.history is not None:
        info.history = torch.stack([op.from_equilibrated(h) for h in info.history])
    if warn and not info.converged.all():
        _warn(method, info)
    return op.from_equilibrated(x), info


def _refine(op: Operator, run: Callable[..., tuple[torch.Tensor, LsqrInfo]],
            x: torch.Tensor, info: LsqrInfo) -> tuple[torch.Tensor, LsqrInfo]:
    """One refinement step of the problems with ``acond ≥`` :data:`REFINE_ACOND` and a
    finite, nonzero answer: ``x + δ``, ``δ = run(b − A x)`` (equilibrated coordinates,
    ``x: (B, d)``), and ``info`` carrying the step (``istop`` and the residual estimates of
    the correction solve, iterations and products added, ``refined`` set)."""
    keep = (info.acond >= REFINE_ACOND) & (info.istop != 0) & (info.istop != NONFINITE)
    info.refined = keep if info.refined is None else info.refined | keep
    idx = keep.nonzero().squeeze(1)
    if not len(idx):
        return x, info
    residual = torch.zeros_like(op.b)  # a zero right-hand side: δ = 0 at no cost
    residual[idx] = op.b[idx] - op.matvec(x[idx], idx)
    delta, step = run(residual, x0=None)
    x = x + delta
    for name in ("istop", "r1norm", "r2norm", "arnorm"):
        setattr(info, name, torch.where(keep, getattr(step, name), getattr(info, name)))
    info.xnorm = torch.where(keep, x.norm(dim=1), info.xnorm)
    info.itn, info.rmatvecs = info.itn + step.itn, info.rmatvecs + step.rmatvecs
    info.matvecs = info.matvecs + step.matvecs + keep.long()
    if info.history is not None:
        info.history = torch.cat([info.history, info.history[-1] + step.history[1:]])
    return x, info


def _warn(method: str, info: LsqrInfo) -> None:
    """A :class:`SolveWarning` naming the problems that stopped without converging."""
    bad = (~info.converged).nonzero().squeeze(1).tolist()
    shown = bad[:10]
    reasons = sorted({info.meaning(i) for i in shown})
    extra = "; x is the last finite iterate" if (info.istop == NONFINITE).any() else ""
    warnings.warn(f"{method}: problems {shown}{'…' if len(bad) > 10 else ''} stopped "
                  f"without converging ({'; '.join(reasons)}){extra}", SolveWarning,
                  stacklevel=4)
