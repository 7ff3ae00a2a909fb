"""``neuralnum.lstsq``: a front door that unpacks exactly like ``scipy.linalg.lstsq``.

``x, residues, rank, s = lstsq(A, b)`` is ``scipy.linalg.lstsq(A, b, cond,
check_finite=check_finite, lapack_driver="gelsd")`` (the reference path: same values,
bit for bit). ``lstsq(A, b, solver=learner, method="cg")`` swaps a learned solver in
(:meth:`~neuralnum.solvers.learner.Learner.solve`: touches ``A`` only through the learned
operator); its result unpacks the same way, and additionally carries ``iterations``,
``model_calls``, ``converged`` and the solver's ``info``.

The one deliberate difference from scipy: **a learned solver returns ``rank = None`` and
``s = None``** (both would need an SVD of ``A``, which the learned solver never computes).
Its ``residues`` are ``‖b − A x‖²`` per column whenever ``n > d`` (scipy's convention
additionally requires full column rank, which cannot be known without the SVD).

Shapes (as scipy's, plus a batch axis):

* ``A: (n, d)``, ``b: (n,)`` → ``x: (d,)``, ``residues: ()`` or ``(0,)``;
* ``A: (n, d)``, ``b: (n, k)`` → ``x: (d, k)``, ``residues: (k,)`` or ``(0,)``; ``k = 0``
  is accepted (scipy's LAPACK call rejects it): ``x: (d, 0)``, ``residues: (0,)``;
* batched ``A: (B, n, d)``, ``b: (B, n)`` or ``(B, n, k)`` → ``x: (B, d)`` / ``(B, d, k)``,
  ``rank: (B,)``, ``s: (B, min(n, d))``, ``residues: (B,)`` / ``(B, k)`` with NaN where
  scipy returns none.

Inputs: NumPy arrays, torch tensors or array-likes (nested lists) of float32 / float64,
``A`` and ``b`` of the same dtype; NumPy (or array-like) in gives NumPy out, torch gives
torch. Complex, integer, boolean and mixed dtypes are rejected with an error naming the
argument and the fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import torch

__all__ = ["LstsqResult", "lstsq"]

_FLOATS = (np.float32, np.float64)


@dataclass
class LstsqResult:
    """``x, residues, rank, s = result`` (scipy's order); also ``result.x`` etc.

    Learned solvers fill ``iterations``, ``model_calls`` (per right-hand side / problem),
    ``converged`` (bool per right-hand side / problem) and ``info`` (the solver's
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
    info: Any = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.x, self.residues, self.rank, self.s))

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> Any:
        return (self.x, self.residues, self.rank, self.s)[i]


def _as_array(value: Any, name: str) -> np.ndarray:
    """A real float32/float64 NumPy array, or a ``TypeError`` naming ``name`` and the fix."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array-like of real floats: {err}") from err
    if array.dtype.type not in _FLOATS:
        kind = {"c": "complex", "i": "integer", "u": "unsigned integer", "b": "boolean"}.get(
            array.dtype.kind, str(array.dtype))
        fix = ("solve the real and imaginary parts as a real problem of twice the size, or "
               "use scipy.linalg.lstsq" if array.dtype.kind == "c"
               else f"convert it, e.g. np.asarray({name}, dtype=np.float64)")
        raise TypeError(f"{name} has {kind} dtype {array.dtype}; neuralnum.lstsq needs "
                        f"float32 or float64: {fix}")
    return array


def _check_shapes(a: np.ndarray, b: np.ndarray) -> None:
    if a.ndim not in (2, 3):
        raise ValueError(f"A must have shape (n, d) or (B, n, d), got {a.shape}")
    lead = a.shape[:-1]  # (n,) or (B, n)
    if b.ndim not in (len(lead), len(lead) + 1) or b.shape[:len(lead)] != lead:
        want = " or ".join(str((*lead, *k)) for k in ((), ("k",)))
        raise ValueError(f"b must have shape {want} for A of shape {a.shape} (its rows must "
                         f"match A's {a.shape[-2]} rows), got {b.shape}")
    if a.dtype != b.dtype:
        raise TypeError(f"A has dtype {a.dtype} but b has {b.dtype}: cast both to one "
                        f"dtype (nothing is silently cast)")


def _reference(a: np.ndarray, b: np.ndarray, cond: float | None,
               check_finite: bool) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """``scipy.linalg.lstsq`` with ``gelsd``; ``b`` with 0 columns answered directly."""
    if b.ndim == 2 and b.shape[1] == 0:
        _, _, rank, s = scipy.linalg.lstsq(a, np.zeros(a.shape[0], a.dtype), cond=cond,
                                           check_finite=check_finite, lapack_driver="gelsd")
        return np.zeros((a.shape[1], 0), a.dtype), np.zeros(0, a.dtype), rank, s
    return scipy.linalg.lstsq(a, b, cond=cond, check_finite=check_finite,
                              lapack_driver="gelsd")


def _batched_reference(a: np.ndarray, b: np.ndarray, cond: float | None,
                       check_finite: bool) -> tuple[np.ndarray, ...]:
    parts = [_reference(a[i], b[i], cond, check_finite) for i in range(a.shape[0])]
    k = () if b.ndim == 2 else (b.shape[2],)
    residues = np.full((a.shape[0], *k), np.nan, a.dtype)
    for i, part in enumerate(parts):
        if np.size(part[1]):
            residues[i] = part[1]
    return (np.stack([p[0] for p in parts]), residues,
            np.array([p[2] for p in parts]), np.stack([p[3] for p in parts]))


def _learned(a: np.ndarray | torch.Tensor, b: Any, solver: Any, method: str | None,
             kwargs: dict[str, Any]) -> LstsqResult:
    """Solve every right-hand side (and problem) with ``solver.solve`` as one batch."""
    A = torch.as_tensor(a)
    B = torch.as_tensor(b).to(A.device)
    batched = A.ndim == 3
    A3 = A if batched else A.unsqueeze(0)
    B3 = B if batched else B.unsqueeze(0)
    vector = B3.ndim == 2
    cols = B3.unsqueeze(2) if vector else B3  # (P, n, k)
    P, n, d = A3.shape
    k = cols.shape[2]
    if k == 0 or P == 0:
        x = A3.new_zeros(P, d, k)
        iters = calls = torch.zeros(P, k, dtype=torch.long)
        converged = torch.ones(P, k, dtype=torch.bool)
        info = None
    else:
        As = A3.unsqueeze(1).expand(P, k, n, d).reshape(P * k, n, d).contiguous()
        bs = cols.transpose(1, 2).reshape(P * k, n).contiguous()
        options = dict(kwargs) if method is None else {**kwargs, "method": method}
        xs = solver.solve(As, bs, **options)
        info = getattr(solver, "last_solve", None)
        x = xs.reshape(P, k, d).transpose(1, 2)

        def per_rhs(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else torch.as_tensor(t).reshape(P, k)

        iters = per_rhs(getattr(info, "iterations", None))
        calls = per_rhs(getattr(info, "model_calls", None))
        converged = per_rhs(getattr(info, "converged", None))
    residual = (torch.einsum("pnd,pdk->pnk", A3, x) - cols).pow(2).sum(dim=1)  # (P, k)
    if n <= d:  # scipy returns residues only for n > d
        residual = residual.new_zeros(P, 0) if not batched else torch.full_like(
            residual, float("nan"))
    if vector:
        x = x[..., 0]
        iters, calls, converged = (None if t is None else t[:, 0]
                                   for t in (iters, calls, converged))
        residual = residual[:, 0] if residual.shape[1] else residual
    if not batched:
        x, residual = x[0], residual[0]
        iters, calls, converged = (None if t is None else t[0]
                                   for t in (iters, calls, converged))
    return LstsqResult(x, residual, None, None, iters, calls, converged, info)


def lstsq(A: Any, b: Any, solver: Any = None, cond: float | None = None,
          check_finite: bool = True, method: str | None = None,
          **solve_kwargs: Any) -> LstsqResult:
    """Least-squares solution minimising ``‖A x − b‖₂``: ``x, residues, rank, s``.

    ``solver=None``: ``scipy.linalg.lstsq(A, b, cond, check_finite=check_finite,
    lapack_driver="gelsd")`` per problem (``cond`` defaults to scipy's cutoff).
    ``solver``: a learned solver (an object with ``solve(A, b, **options)`` and
    ``last_solve``, e.g. a :class:`~neuralnum.solvers.learner.Learner`); ``method`` (``"cg"``,
    ``"chebyshev"``, ``"gd"``) and ``solve_kwargs`` (``tol``, ``max_iters``, ``iters`` …)
    go to it. Shapes, dtypes and the one difference from scipy: the module docstring.
    """
    numpy_io = not isinstance(A, torch.Tensor)
    a, bb = _as_array(A, "A"), _as_array(b, "b")
    _check_shapes(a, bb)
    if check_finite or solver is not None:
        for name, arr in (("A", a), ("b", bb)):
            if not np.isfinite(arr).all():
                raise ValueError(f"{name} contains NaN or Inf (remove them; scipy's "
                                 f"check_finite would reject them too)")
    if solver is None:
        if method is not None or solve_kwargs:
            options = sorted([*solve_kwargs, *(["method"] if method else [])])
            raise TypeError(f"solve options {options} need a learned solver (solver=...)")
        if a.ndim == 2:
            x, residues, rank, s = _reference(a, bb, cond, check_finite)
        else:
            x, residues, rank, s = _batched_reference(a, bb, cond, check_finite)
        if numpy_io:
            return LstsqResult(x, residues, rank, s)
        device = A.device
        return LstsqResult(torch.as_tensor(x, device=device),
                           torch.as_tensor(residues, device=device),
                           rank if a.ndim == 2 else torch.as_tensor(rank),
                           torch.as_tensor(s, device=device))
    if cond is not None:
        raise TypeError("cond is a cutoff for the SVD of the reference path; a learned "
                        "solver computes no SVD (pass tol= to it instead)")
    result = _learned(A if isinstance(A, torch.Tensor) else a,
                      b if isinstance(b, torch.Tensor) else bb, solver, method, solve_kwargs)
    if numpy_io:
        for name in ("x", "residues", "iterations", "model_calls", "converged"):
            value = getattr(result, name)
            if isinstance(value, torch.Tensor):
                setattr(result, name, value.cpu().numpy())
    return result
