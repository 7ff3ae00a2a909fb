"""Every least-squares method on an operator, by name: the one place a solve is chosen.

* ``"lsqr"``, ``"cgls"`` — on the operator's separate products ``A v``, ``Aᵀ u``
  (:mod:`neuralnum.solvers.lsqr`, :mod:`neuralnum.solvers.cgls`): error ``∝ κ(A)·u``;
  options ``atol``, ``btol``, ``conlim``, ``iter_lim`` with scipy's meanings
  (``scipy.sparse.linalg.lsqr``), defaults ``atol = btol = eps`` of the dtype (machine
  precision), ``conlim = 1e8``, ``iter_lim = 2·d``; LSQR also ``reorthogonalize``
  (default off: scipy's iteration);
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

import warnings
from typing import Any

import torch

from neuralnum.core.validation import check_choice, check_problem
from neuralnum.solvers import krylov
from neuralnum.solvers.cgls import cgls
from neuralnum.solvers.krylov import SolveInfo, SolveWarning
from neuralnum.solvers.ls_driver import NONFINITE, LsqrInfo
from neuralnum.solvers.lsqr import lsqr
from neuralnum.solvers.operators import Operator

__all__ = ["METHODS", "PRODUCT_METHODS", "solve"]

PRODUCT_METHODS: tuple[str, ...] = ("lsqr", "cgls")
METHODS: tuple[str, ...] = (*PRODUCT_METHODS, *krylov.METHODS)
_PRODUCT_SOLVERS = {"lsqr": lsqr, "cgls": cgls}


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
                         reorthogonalize: bool = False) -> tuple[torch.Tensor, LsqrInfo]:
    eps = torch.finfo(op.dtype).eps
    extra = {"reorthogonalize": True} if reorthogonalize else {}
    if reorthogonalize and method != "lsqr":
        raise ValueError("reorthogonalize applies to method='lsqr' (the Golub–Kahan "
                         "vectors); CGLS keeps no basis to orthogonalise against")
    if x0 is not None:
        check_problem(op.A, op.b, x0, x_name="x0")
    if balance:
        op.balance_columns()
    start = None if x0 is None else op.to_equilibrated(x0)
    x, info = _PRODUCT_SOLVERS[method](
        op, op.b, atol=eps if atol is None else atol, btol=eps if btol is None else btol,
        conlim=conlim, iter_lim=iter_lim, x0=start, record=record, **extra)
    info.method, info.model_calls = method, op.calls.clone()
    if info.history is not None:
        info.history = torch.stack([op.from_equilibrated(h) for h in info.history])
    if warn and not info.converged.all():
        _warn(method, info)
    return op.from_equilibrated(x), info


def _warn(method: str, info: LsqrInfo) -> None:
    """A :class:`SolveWarning` naming the problems that stopped without converging."""
    bad = (~info.converged).nonzero().squeeze(1).tolist()
    shown = bad[:10]
    reasons = sorted({info.meaning(i) for i in shown})
    extra = "; x is the last finite iterate" if (info.istop == NONFINITE).any() else ""
    warnings.warn(f"{method}: problems {shown}{'…' if len(bad) > 10 else ''} stopped "
                  f"without converging ({'; '.join(reasons)}){extra}", SolveWarning,
                  stacklevel=4)
