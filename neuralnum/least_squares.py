"""``neuralnum.lstsq``: ``scipy.linalg.lstsq``'s signature, dtype rules and answers, with a
learned solver as an option.

**The reference path** — ``x, residues, rank, s = lstsq(A, b, cond, overwrite_a,
overwrite_b, check_finite, lapack_driver)`` — is ``scipy.linalg.lstsq`` called with exactly
those arguments (``lapack_driver`` ``"gelsd"`` by default, ``"gelsy"`` or ``"gelss"``): the
same values bit for bit, the same shapes and dtypes, the same class of error. So, as in
scipy: ``overwrite_a`` / ``overwrite_b`` let LAPACK write into the arrays given; ``gelsy``
returns ``s = None`` and no ``residues``; ``check_finite=False`` hands NaN / Inf to LAPACK
unchecked (the result may be NaN, an error, or — ``gelsd`` / ``gelss`` with a non-finite
``A`` — a call that never returns).

**The shipped learned path** — ``lstsq(A, b, solver="learned")`` — solves with the
shape-general learned solver that ships with the package
(:func:`~neuralnum.solvers.pretrained.pretrained`, loaded once per dtype and device,
nothing downloaded): any ``(n, d)``, tall, wide or square, float32 or float64, by LSQR on
its two learned products ``v ↦ A v`` and ``u ↦ Aᵀ u`` (``method="cgls"``, ``"cg"`` …
and LSQR's ``atol``, ``btol``, ``iter_lim`` pass through; ``result.info.istop`` says why
each right-hand side stopped, in scipy's codes).

**A learned path** — ``lstsq(A, b, solver=learner, method="cg", tol=...)`` — solves with
``solver.solve(A, b, **options)`` (e.g. :meth:`~neuralnum.solvers.learner.Learner.solve`:
touches ``A`` only through the learned operator, no SVD, QR or solve of ``A``) and reads
``solver.last_solve``; its result unpacks the same way and additionally carries
``iterations``, ``model_calls``, ``converged`` and the solver's ``info``. scipy's options
there:

* ``overwrite_a``, ``overwrite_b``: accepted (a permission; ``A`` and ``b`` are never
  written into);
* ``check_finite``: NaN / Inf are refused (``ValueError``) whatever its value, as a
  learned solver would turn them into a silent NaN; a result that is not finite raises
  ``FloatingPointError``;
* ``cond``, ``lapack_driver``: refused (``TypeError``): they configure LAPACK's
  factorisations, which a learned solver never computes (its stopping rule is ``tol=``,
  its iteration ``method=``).

A learned solver returns ``rank = None`` and ``s = None`` (both would need an SVD of
``A``), and ``residues`` ``‖b − A x‖²`` per column whenever ``n > d`` (scipy additionally
requires full column rank, which cannot be known without the SVD). A solver with a
``serves(n, d)`` method (a :class:`~neuralnum.solvers.learner.Learner`: its ``d`` and up to
its ``n`` rows) serves only the shapes it accepts, one with a torch ``dtype`` attribute
only that dtype; others get a ``ValueError`` / ``TypeError`` saying what to do.

**dtypes** (both paths, scipy's rule, :func:`~neuralnum.core.validation.lapack_dtype`):
the result is float32 when ``A`` and ``b`` are each boolean, an integer of at most 16 bits,
float16 or float32, and float64 otherwise (wider integers, float64, a mix with float64).
Complex and long double inputs are refused with a ``TypeError`` saying what to do (the real
embedding or scipy; an explicit cast), as are non-numeric ones.

**Inputs** are NumPy arrays (any memory layout), torch tensors or array-likes (nested
lists); NumPy or array-likes in give NumPy out, a tensor ``A`` gives tensors out.

**Shapes** (scipy's, plus a batch axis):

* ``A: (n, d)``, ``b: (n,)`` → ``x: (d,)``, ``residues: ()`` or ``(0,)``;
* ``A: (n, d)``, ``b: (n, k)`` → ``x: (d, k)``, ``residues: (k,)`` or ``(0,)``; ``k = 0`` is
  accepted (scipy's LAPACK call rejects it unless ``A`` is empty): ``x: (d, 0)``,
  ``residues: (0,)``, ``rank`` and ``s`` those of ``A``;
* batched ``A: (B, n, d)``, ``b: (B, n)`` or ``(B, n, k)`` → ``x: (B, d)`` / ``(B, d, k)``,
  ``rank: (B,)``, ``s: (B, min(n, d))`` (``None`` for ``gelsy``), ``residues: (B,)`` /
  ``(B, k)`` with NaN where scipy returns none.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import torch

from neuralnum.core import validation
from neuralnum.core.validation import as_real_array, check_choice, lapack_dtype, to_numpy
from neuralnum.solvers.pretrained import pretrained

__all__ = ["DRIVERS", "SOLVERS", "LstsqResult", "lstsq"]

#: scipy's LAPACK drivers (``lapack_driver=``); ``None`` means ``"gelsd"``, as in scipy.
DRIVERS = ("gelsd", "gelsy", "gelss")
#: Names ``solver=`` takes: ``"learned"`` is the shape-general solver the package ships.
SOLVERS = ("learned",)
_TORCH = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


@dataclass
class LstsqResult:
    """``x, residues, rank, s = result`` (scipy's order); also ``result.x`` etc.

    Learned solvers fill ``iterations``, ``model_calls`` (per right-hand side / problem),
    ``converged`` (bool per right-hand side / problem), ``istop`` (LSQR / CGLS: why each
    stopped, in ``scipy.sparse.linalg.lsqr``'s codes — 0: ``x = 0`` solves it, 1: ``A x ≈
    b`` within ``btol``/``atol``, 2: the least-squares optimality test met (``atol``), 3:
    ``conlim`` reached, 4–6: the same at machine precision, 7: ``iter_lim``; ``None`` for
    other methods) and ``info`` (the solver's record, e.g.
    :class:`~neuralnum.solvers.krylov.SolveInfo`); for the reference path they are
    ``None``.
    """

    x: Any
    residues: Any
    rank: Any
    s: Any
    iterations: Any = None
    model_calls: Any = None
    converged: Any = None
    istop: Any = None
    info: Any = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.x, self.residues, self.rank, self.s))

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> Any:
        return (self.x, self.residues, self.rank, self.s)[i]


@dataclass(frozen=True)
class _Lapack:
    """One ``scipy.linalg.lstsq`` call with the caller's options."""

    cond: float | None
    overwrite_a: bool
    overwrite_b: bool
    check_finite: bool
    driver: str

    def __call__(self, a: np.ndarray, b: np.ndarray) -> tuple[Any, Any, int, Any]:
        return scipy.linalg.lstsq(a, b, cond=self.cond, overwrite_a=self.overwrite_a,
                                  overwrite_b=self.overwrite_b,
                                  check_finite=self.check_finite, lapack_driver=self.driver)


def _check_shapes(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> None:
    if a.ndim not in (2, 3):
        raise ValueError(f"A must have shape (n, d) or (B, n, d), got {tuple(a.shape)}")
    lead = tuple(a.shape[:-1])  # (n,) or (B, n)
    if b.ndim not in (len(lead), len(lead) + 1) or tuple(b.shape[:len(lead)]) != lead:
        want = " or ".join(str((*lead, *k)) for k in ((), ("k",)))
        raise ValueError(f"b must have shape {want} for A of shape {tuple(a.shape)} (its "
                         f"rows must match A's {a.shape[-2]} rows), got {tuple(b.shape)}")


def _reference(a: np.ndarray, b: np.ndarray, dtype: np.dtype,
               call: _Lapack) -> tuple[Any, Any, int, Any]:
    """``call(a, b)``; a ``b`` with 0 columns (which LAPACK refuses) answered directly."""
    if b.ndim == 2 and b.shape[1] == 0 and a.size:
        _, _, rank, s = call(a, np.zeros(a.shape[0], dtype))
        return np.zeros((a.shape[1], 0), dtype), np.zeros(0, dtype), rank, s
    return call(a, b)


def _batched_reference(a: np.ndarray, b: np.ndarray, dtype: np.dtype,
                       call: _Lapack) -> tuple[Any, ...]:
    """:func:`_reference` per problem of ``a: (B, n, d)``, ``b: (B, n[, k])``, stacked;
    ``residues`` NaN where scipy returns none, ``s`` ``None`` for ``gelsy``."""
    batch, n, d = a.shape
    k = b.shape[2:]
    parts = [_reference(a[i], b[i], dtype, call) for i in range(batch)]
    if not parts:
        s = None if call.driver == "gelsy" else np.zeros((0, min(n, d)), dtype)
        return np.zeros((0, d, *k), dtype), np.zeros((0, *k), dtype), np.zeros(0, int), s
    x = np.stack([p[0] for p in parts])
    residues = np.full((batch, *k), np.nan, x.dtype)
    for i, part in enumerate(parts):
        if np.size(part[1]):
            residues[i] = part[1]
    s = None if parts[0][3] is None else np.stack([p[3] for p in parts])
    return x, residues, np.array([p[2] for p in parts]), s


def _check_reference_options(method: str | None, solve_kwargs: dict[str, Any]) -> None:
    if method is not None or solve_kwargs:
        options = sorted([*solve_kwargs, *(["method"] if method is not None else [])])
        raise TypeError(f"options {options} are for a learned solver (pass solver=...); "
                        f"the reference path takes scipy's options: cond, overwrite_a, "
                        f"overwrite_b, check_finite, lapack_driver")


def _reference_path(A: Any, a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor,
                    call: _Lapack) -> LstsqResult:
    """scipy on every problem; tensors out when ``A`` is a tensor."""
    dtype = lapack_dtype(a, b)
    a, b = to_numpy(a), to_numpy(b)
    if call.check_finite:
        for name, arr in (("A", a), ("b", b)):
            validation.check_finite(arr, name, "remove them, or pass check_finite=False to "
                                               "hand them to LAPACK unchecked, as scipy does")
    result = (_reference if a.ndim == 2 else _batched_reference)(a, b, dtype, call)
    if not isinstance(A, torch.Tensor):
        return LstsqResult(*result)
    x, residues, rank, s = result
    return LstsqResult(torch.as_tensor(x, device=A.device),
                       torch.as_tensor(residues, device=A.device),
                       rank if a.ndim == 2 else torch.as_tensor(rank),
                       None if s is None else torch.as_tensor(s, device=A.device))


def _check_solver(solver: Any, n: int, d: int, dtype: torch.dtype) -> None:
    """A ``TypeError`` / ``ValueError`` saying what to do when ``solver`` cannot serve
    ``(n, d)`` problems in ``dtype`` (read from its ``solve``, ``dtype``, ``n``, ``d``)."""
    if not callable(getattr(solver, "solve", None)):
        raise TypeError(f"solver must be None (scipy) or a learned solver with a "
                        f".solve(A, b, **options) method (e.g. a Learner), got {solver!r}")
    want = getattr(solver, "dtype", None)
    if isinstance(want, torch.dtype) and want != dtype:
        name, have = str(want).removeprefix("torch."), str(dtype).removeprefix("torch.")
        raise TypeError(f"the learned solver computes in {name} but A and b give {have} "
                        f"(scipy's dtype rule): pass {name} arrays (e.g. "
                        f"A.astype(np.{name})), or use a solver of {have}")
    serves = getattr(solver, "serves", None)
    fixed = getattr(solver, "n", None), getattr(solver, "d", None)
    if callable(serves) and n * d and not serves(n, d):
        raise ValueError(f"the learned solver was trained for A of shape {fixed} and cannot "
                         f"solve A of shape {(n, d)}: pass A of shape {fixed}, use "
                         f"solver=\"learned\" (the shipped solver, any shape), train a "
                         f"learner at this shape (python -m neuralnum train --n {n} --d {d}), "
                         f"or use solver=None (scipy)")


def _check_finite_result(x: torch.Tensor, residual: torch.Tensor) -> None:
    """``FloatingPointError`` unless every solution ``x: (P, d, k)`` is finite."""
    if not torch.isfinite(x).all() or residual.isnan().any():
        bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise FloatingPointError(
            f"the learned solver returned NaN/Inf for {bad} of {x.shape[0] * x.shape[2]} "
            f"right-hand side(s): A and b are outside what it was trained on; use "
            f"solver=None (scipy)")


def _solve_columns(A3: torch.Tensor, cols: torch.Tensor, solver: Any,
                   options: dict[str, Any]) -> tuple[torch.Tensor, Any, list[Any]]:
    """``x: (P, d, k)`` for ``A3: (P, n, d)``, ``cols: (P, n, k)`` with every column of
    every problem one problem of ``solver``; also its ``info`` and the per-column
    ``iterations``, ``model_calls``, ``converged`` and ``istop`` as ``(P, k)`` (or
    ``None``)."""
    P, n, d = A3.shape
    k = cols.shape[2]
    if min(P, n, d, k) == 0:  # nothing to solve: the (minimum-norm) solution is 0
        stats = [torch.zeros(P, k, dtype=torch.long), torch.zeros(P, k, dtype=torch.long),
                 torch.ones(P, k, dtype=torch.bool), None]
        return A3.new_zeros(P, d, k), None, stats
    As = A3.unsqueeze(1).expand(P, k, n, d).reshape(P * k, n, d).contiguous()
    bs = cols.transpose(1, 2).reshape(P * k, n).contiguous()
    xs = solver.solve(As, bs, **options)
    info = getattr(solver, "last_solve", None)
    stats = [None if getattr(info, f, None) is None
             else torch.as_tensor(getattr(info, f)).reshape(P, k)
             for f in ("iterations", "model_calls", "converged", "istop")]
    return xs.reshape(P, k, d).transpose(1, 2), info, stats


def _learned(A: torch.Tensor, B: torch.Tensor, solver: Any, options: dict[str, Any]
             ) -> LstsqResult:
    """Solve every right-hand side (and problem) with ``solver.solve`` as one batch."""
    batched = A.ndim == 3
    A3 = A if batched else A.unsqueeze(0)
    B3 = B if batched else B.unsqueeze(0)
    vector = B3.ndim == 2
    cols = B3.unsqueeze(2) if vector else B3  # (P, n, k)
    P, n, d = A3.shape
    x, info, stats = _solve_columns(A3, cols, solver, options)
    residual = (torch.einsum("pnd,pdk->pnk", A3, x) - cols).pow(2).sum(dim=1)  # (P, k)
    _check_finite_result(x, residual)
    if n <= d:  # scipy returns residues only for n > d
        residual = residual.new_zeros(P, 0) if not batched else torch.full_like(
            residual, float("nan"))
    if vector:
        x = x[..., 0]
        stats = [None if t is None else t[:, 0] for t in stats]
        residual = residual[:, 0] if residual.shape[1] else residual
    if not batched:
        x, residual = x[0], residual[0]
        stats = [None if t is None else t[0] for t in stats]
    return LstsqResult(x, residual, None, None, *stats, info)


def _learned_path(A: Any, a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor,
                  solver: Any, options: dict[str, Any]) -> LstsqResult:
    """``solver`` on finite inputs cast by scipy's rule; NumPy out unless ``A`` is a
    tensor."""
    dtype = _TORCH[lapack_dtype(a, b)]
    if isinstance(solver, str):
        device = A.device if isinstance(A, torch.Tensor) else torch.device("cpu")
        solver = pretrained(str(dtype).removeprefix("torch."), str(device))
    _check_solver(solver, *a.shape[-2:], dtype)
    for name, arr in (("A", a), ("b", b)):
        validation.check_finite(arr, name, "a learned solver cannot solve with them, "
                                           "whatever check_finite says")
    device = A.device if isinstance(A, torch.Tensor) else getattr(solver, "device", "cpu")
    A_t, B_t = (v.to(device=device, dtype=dtype).contiguous() if isinstance(v, torch.Tensor)
                else torch.from_numpy(np.ascontiguousarray(v)).to(device=device, dtype=dtype)
                for v in (a, b))
    result = _learned(A_t, B_t, solver, options)
    if not isinstance(A, torch.Tensor):
        for name in ("x", "residues", "iterations", "model_calls", "converged", "istop"):
            value = getattr(result, name)
            if isinstance(value, torch.Tensor):
                setattr(result, name, value.cpu().numpy())
    return result


def _check_learned_options(solver: Any, cond: float | None, lapack_driver: str | None
                           ) -> None:
    """Refuse scipy's LAPACK options and unknown solver names on a learned path."""
    for option, value, why in (
            ("cond", cond, "the cutoff of LAPACK's SVD; pass tol= for the solver's "
                           "stopping rule instead"),
            ("lapack_driver", lapack_driver, "LAPACK's routine; pass method= for the "
                                             "solver's iteration instead")):
        if value is not None:
            raise TypeError(f"{option}={value!r} does not apply to a learned solver, which "
                            f"calls no LAPACK ({option} is {why}), or use solver=None")
    if isinstance(solver, str) and solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} names no solver: pass one of {SOLVERS} (the "
                         f"shipped shape-general learned solver), None (scipy) or a "
                         f"learned solver object")


def lstsq(A: Any, b: Any, cond: float | None = None, overwrite_a: bool = False,
          overwrite_b: bool = False, check_finite: bool = True,
          lapack_driver: str | None = None, *, solver: Any = None, method: str | None = None,
          **solve_kwargs: Any) -> LstsqResult:
    """Least-squares solution minimising ``‖A x − b‖₂``: ``x, residues, rank, s``.

    Parameters
    ----------
    A : array_like or torch.Tensor, shape ``(n, d)`` or ``(B, n, d)``
        Real (boolean, integer or float up to float64).
    b : array_like or torch.Tensor, shape ``(n,)``, ``(n, k)``, ``(B, n)`` or ``(B, n, k)``
    cond, overwrite_a, overwrite_b, check_finite, lapack_driver
        ``scipy.linalg.lstsq``'s options, passed to it unchanged (``lapack_driver`` one of
        :data:`DRIVERS`, default ``"gelsd"``). With a learned ``solver``: ``overwrite_*``
        accepted, non-finite inputs always refused, ``cond`` / ``lapack_driver`` refused.
    solver : None, ``"learned"`` or a learned solver, keyword-only
        ``None``: scipy. ``"learned"``: the shipped shape-general learned solver (any
        shape; :data:`SOLVERS`). Otherwise an object with ``solve(A, b, **options)`` and
        ``last_solve`` (e.g. a :class:`~neuralnum.solvers.learner.Learner`).
    method : str, optional, keyword-only
        The learned solver's iteration (``"lsqr"``, the shipped solver's default,
        ``"cgls"``, ``"cg"``, ``"chebyshev"``, ``"gd"``); with ``solve_kwargs`` (``tol``,
        ``iters``, ``atol``, ``btol``, ``iter_lim`` …) passed to ``solver.solve``.

    Returns
    -------
    LstsqResult
        ``x, residues, rank, s`` with scipy's shapes (module docstring) in scipy's dtype
        for ``A`` and ``b``: on the reference path exactly scipy's values (LAPACK's
        precision); on a learned path ``rank = s = None`` and the solver's precision,
        plus ``iterations``, ``model_calls``, ``converged`` and ``info``.

    Raises
    ------
    TypeError
        Complex, long double or non-numeric input; an option the chosen path does not take.
    ValueError
        Shapes that do not match; NaN / Inf (reference path: with ``check_finite``);
        an unknown ``lapack_driver``; a learned solver's shape it cannot serve.
    FloatingPointError
        A learned solver's result that is not finite.
    """
    a, bb = as_real_array(A, "A"), as_real_array(b, "b")
    _check_shapes(a, bb)
    if solver is None:
        _check_reference_options(method, solve_kwargs)
        driver = check_choice("gelsd" if lapack_driver is None else lapack_driver,
                              "lapack_driver", DRIVERS)
        return _reference_path(A, a, bb, _Lapack(cond, overwrite_a, overwrite_b,
                                                 check_finite, driver))
    _check_learned_options(solver, cond, lapack_driver)
    options = dict(solve_kwargs) if method is None else {**solve_kwargs, "method": method}
    return _learned_path(A, a, bb, solver, options)
