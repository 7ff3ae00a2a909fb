"""Ground truth for least squares: batched minimum-norm solutions and error metrics.

* :func:`lstsq` — the minimum-norm least-squares solution of every problem in a batch by
  ``scipy.linalg.lstsq`` (LAPACK ``gelsd``, in the input's precision), ``numpy.linalg.lstsq``
  (which computes float32 input in float64 and rounds back), or ``mpmath`` (an SVD in
  ``dps`` decimal digits of the exactly converted input, correctly rounded to the input
  dtype to within one ulp). All three drop singular values below ``rcond·σ_max``, so they
  solve the same (truncated) problem; the mpmath path is the judge of precision claims.
* :func:`stored_solution` — the judge of a problem as stored in float32 or float64: the
  exactly widened problem solved with the stored dtype's own cutoff, in float64.
* :func:`condition_number` — ``σ_max/σ_min`` over the singular values kept by ``rcond``.
* :func:`sensitivity` — the first-order condition number of the least-squares solution,
  ``κ·(2 + (κ+1)·‖r‖/(‖A‖‖x‖))`` (Higham, *Accuracy and Stability*, Thm 20.1): a backward
  stable solver in unit roundoff ``u`` has relative error ``≲ c·u·sensitivity`` — the
  ``κ·u`` term for consistent systems, ``κ²·u`` once the residual is non-zero.
* :func:`mse`, :func:`relative_error`, :func:`digits` — per-problem error metrics;
  :func:`finite_digits` — :func:`digits` with 0 for a non-finite solution.

Shapes: ``A: (B, n, d)``, ``b: (B, n)``, solutions ``x: (B, d)``; float32 or float64.
"""

from __future__ import annotations

import math
from typing import Literal

import mpmath
import numpy as np
import scipy.linalg
import torch

from neuralnum.core.validation import check_finite, check_problem, check_tensor

__all__ = [
    "METHODS",
    "condition_number",
    "digits",
    "finite_digits",
    "lstsq",
    "mse",
    "relative_error",
    "sensitivity",
    "stored_solution",
]

Method = Literal["scipy", "numpy", "mpmath"]
METHODS: tuple[str, ...] = ("scipy", "numpy", "mpmath")


def default_rcond(dtype: torch.dtype, n: int, d: int) -> float:
    """``eps(dtype)·max(n, d)``: singular values below ``rcond·σ_max`` count as zero."""
    return torch.finfo(dtype).eps * max(n, d)


def _check_rcond(rcond: float | None, dtype: torch.dtype, n: int, d: int) -> float:
    if rcond is None:
        return default_rcond(dtype, n, d)
    if not (np.isfinite(rcond) and 0 <= rcond < 1):
        raise ValueError(f"rcond must be in [0, 1), got {rcond!r}")
    return float(rcond)


def _mpmath_lstsq(a: np.ndarray, b: np.ndarray, rcond: float, dps: int) -> np.ndarray:
    """Minimum-norm solution of one problem via an mpmath SVD at ``dps`` digits."""
    ctx = mpmath.MPContext()
    ctx.dps = dps
    # float -> mpf is exact, so the SVD sees exactly the stored problem.
    u, s, vh = ctx.svd_r(ctx.matrix(a.astype(np.float64).tolist()),
                         full_matrices=False, compute_uv=True)
    cutoff = ctx.mpf(rcond) * s[0]
    x = ctx.matrix(a.shape[1], 1)
    bm = ctx.matrix(b.astype(np.float64).tolist())
    for i in range(s.rows):
        if s[i] <= cutoff:  # also skips σ = 0
            continue
        coeff = ctx.fdot((u[j, i], bm[j]) for j in range(u.rows)) / s[i]
        for k in range(vh.cols):
            x[k] += coeff * vh[i, k]
    return np.array([float(v) for v in x], dtype=np.float64)


def lstsq(
    A: torch.Tensor,
    b: torch.Tensor,
    method: Method = "scipy",
    *,
    dps: int = 50,
    rcond: float | None = None,
) -> torch.Tensor:
    """Minimum-norm least-squares solutions ``argmin ‖x‖ s.t. x minimises ‖A x − b‖₂``.

    ``A: (B, n, d)``, ``b: (B, n)`` (float32 or float64, finite) → ``x: (B, d)`` in the
    dtype and on the device of ``A``. ``method``: ``"scipy"`` (gelsd in the input's
    precision), ``"numpy"`` or ``"mpmath"`` (SVD at ``dps`` ≥ 17 decimal digits; its result
    is the exact truncated minimum-norm solution rounded to float64, then to ``A.dtype``).
    ``rcond`` (default ``eps(A.dtype)·max(n, d)``): singular values ``≤ rcond·σ_max`` are
    treated as zero by every method, which makes rank-deficient and under-determined
    problems well defined.
    """
    batch, n, d = check_problem(A, b)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(dps, int) or isinstance(dps, bool) or dps < 17:
        raise ValueError(f"dps must be an int >= 17 (more digits than float64), got {dps!r}")
    rcond = _check_rcond(rcond, A.dtype, n, d)
    a_np = A.detach().cpu().numpy()
    b_np = b.detach().cpu().numpy()
    if method == "scipy":
        xs = [scipy.linalg.lstsq(a_np[i], b_np[i], cond=rcond, lapack_driver="gelsd",
                                 check_finite=False)[0] for i in range(batch)]
    elif method == "numpy":
        xs = [np.linalg.lstsq(a_np[i], b_np[i], rcond=rcond)[0] for i in range(batch)]
    else:
        xs = [_mpmath_lstsq(a_np[i], b_np[i], rcond, dps) for i in range(batch)]
    return torch.from_numpy(np.stack(xs)).to(dtype=A.dtype, device=A.device)


def stored_solution(A: torch.Tensor, b: torch.Tensor, method: Method = "mpmath") -> torch.Tensor:
    """The minimum-norm solution of the problem exactly as stored: ``A: (B, n, d)``,
    ``b: (B, n)`` (float32 or float64) widened exactly to float64 and solved by
    :func:`lstsq` (``method``) with the cutoff of ``A``'s own dtype,
    ``default_rcond(A.dtype, n, d)`` → ``x: (B, d)`` float64."""
    _, n, d = check_tensor(A, "A", 3).shape
    return lstsq(A.double(), b.double(), method, rcond=default_rcond(A.dtype, n, d))


def condition_number(A: torch.Tensor, rcond: float | None = None) -> torch.Tensor:
    """``κ = σ_max/σ_min`` per problem, ``(B,)`` float64, over the singular values above
    ``rcond·σ_max`` (default as in :func:`lstsq`), so rank-deficient ``A`` get their
    effective condition number."""
    _, n, d = check_tensor(A, "A", 3).shape
    check_finite(A, "A")
    rcond = _check_rcond(rcond, A.dtype, n, d)
    s = torch.linalg.svdvals(A.double())
    smax = s[:, :1]
    return smax[:, 0] / torch.where(s > rcond * smax, s, torch.full_like(s, math.inf)).amin(1)


def sensitivity(
    A: torch.Tensor, b: torch.Tensor, x: torch.Tensor, rcond: float | None = None
) -> torch.Tensor:
    """Per-problem condition number of the least-squares solution, ``(B,)`` float64.

    ``κ·(2 + (κ+1)·‖r‖/(‖A‖₂‖x‖))`` with ``r = b − A x``, ``κ = σ_max/σ_min`` over the
    singular values above ``rcond·σ_max`` (as in :func:`lstsq`), ``x`` the (reference)
    solution. A backward-stable solver with unit roundoff ``u`` has relative forward error
    ``≲ c(n, d)·u·sensitivity`` to first order (Higham 2002, Thm 20.1).
    """
    check_problem(A, b, x)
    kappa = condition_number(A, rcond)
    A64, b64, x64 = A.double(), b.double(), x.double()
    smax = torch.linalg.matrix_norm(A64, ord=2)
    r = (b64 - torch.einsum("bnd,bd->bn", A64, x64)).norm(dim=1)
    ratio = r / (smax * x64.norm(dim=1))
    ratio = torch.where(r == 0, torch.zeros_like(ratio), ratio)
    return kappa * (2 + (kappa + 1) * ratio)


def _pair(x: torch.Tensor, x_ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_finite(check_tensor(x, "x", 2), "x")
    check_finite(check_tensor(x_ref, "x_ref", 2), "x_ref")
    if x.shape != x_ref.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but x_ref has {tuple(x_ref.shape)}")
    if x.device != x_ref.device:
        raise ValueError(f"x is on {x.device} but x_ref is on {x_ref.device}")
    return x.double(), x_ref.double()


def mse(x: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
    """Mean squared error per problem, ``mean_j (x_j − x_ref_j)²``: ``(B,)`` float64.

    ``x, x_ref: (B, d)``, float32 or float64 (may differ; compared in float64).
    """
    x, x_ref = _pair(x, x_ref)
    return (x - x_ref).pow(2).mean(dim=1)


def relative_error(x: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
    """``‖x − x_ref‖₂ / ‖x_ref‖₂`` per problem: ``(B,)`` float64.

    Where ``x_ref = 0`` the result is 0 if ``x = 0`` too and ``inf`` otherwise.
    """
    x, x_ref = _pair(x, x_ref)
    diff, ref = (x - x_ref).norm(dim=1), x_ref.norm(dim=1)
    safe = torch.where(ref > 0, ref, torch.ones_like(ref))
    inf = torch.full_like(diff, float("inf"))
    return torch.where(ref > 0, diff / safe, torch.where(diff > 0, inf, torch.zeros_like(diff)))


def digits(x: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
    """Correct significant digits per problem, ``−log10(relative_error)``: ``(B,)`` float64.

    Clipped to ``[0, −log10(u)]`` where ``u`` is the unit roundoff of the less precise of
    the two dtypes (≈ 7.22 for float32, ≈ 15.95 for float64): an exact match counts as
    full precision, an error of 100% or more as no digits.
    """
    err = relative_error(x, x_ref)
    u = max(torch.finfo(x.dtype).eps, torch.finfo(x_ref.dtype).eps) / 2
    return (-torch.log10(err.clamp(min=u))).clamp(min=0.0)


def finite_digits(x: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
    """:func:`digits` per problem, 0 where a row of ``x`` is not finite: ``(B,)`` float64.

    ``x: (B, d)`` may hold NaN or ±inf; ``x_ref: (B, d)`` finite; float32 or float64 (may
    differ). The clip is :func:`digits`' (the less precise of ``x``'s and ``x_ref``'s
    dtypes).
    """
    finite = torch.isfinite(x).all(dim=1)
    safe = torch.where(finite.unsqueeze(1), x, torch.zeros_like(x))
    return torch.where(finite, digits(safe, x_ref), 0.0)
