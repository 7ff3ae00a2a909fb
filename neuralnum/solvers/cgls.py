"""Batched CGLS (CGLS1 of Björck, Elfving & Strakoš 1998) touching ``A`` only through two
products.

CG on the normal equations ``(AᵀA + damp² I) dx = Aᵀr0`` with separate products ``A p`` and
``Aᵀ r`` and a *recurred* residual ``r``: implemented this way it is as accurate as LSQR
(``κ·u``), where forming the normal-equations operator is not. Its ``anorm`` / ``acond``
are LSQR's quantities rebuilt from the CG coefficients (:func:`_cgls_estimates`), so the
stopping tests (:mod:`neuralnum.solvers.ls_driver`) mean the same as LSQR's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from neuralnum.solvers.ls_driver import (
    Counter,
    LsqrInfo,
    Options,
    Products,
    State,
    options,
    row_norm,
    row_pow2,
    run_solver,
    start,
)

__all__ = ["cgls"]


def _cgls_init(ctr: Counter, b: Tensor, x0: Tensor | None) -> State:
    """CGLS start: ``r = b - A x0``, ``s = p = A^T r``; returns the ``(B, ...)`` state.

    The direction is stored as ``p = psig * phat`` with ``psig`` a power of two, so that the
    products see ``phat`` (largest entry in ``[0.5, 1)``) and no intermediate has the scale
    ``||A||^2 ||b||`` of ``A p``.
    """
    x, r, idx = start(ctr, b, x0)
    rnorm = row_norm(r)
    pos = rnorm > 0
    grad = x.new_zeros(x.shape)
    grad[pos] = ctr.rmatvec(r[pos], idx[pos])
    snorm = row_norm(grad)
    psig = row_pow2(grad)
    zero = torch.zeros_like(rnorm)
    return {
        "x": x,
        "x0": x.clone(),
        "r": r,
        "s": grad,
        "phat": grad / psig[:, None],
        "psig": psig,
        "snorm": snorm,
        "anormsq": zero.clone(),
        "bovera": zero.clone(),
        "ddnorm": zero.clone(),
        "anorm": zero.clone(),
        "acond": zero.clone(),
        "xnorm": zero.clone(),
        "rnorm": rnorm.clone(),
        "r1norm": rnorm.clone(),
        "r2norm": rnorm,
        "arnorm": snorm.clone(),
        "bnorm": row_norm(b),
        "itn": torch.zeros_like(idx),
        "istop": torch.zeros_like(idx),
    }


def _finite_rmatvec(ctr: Counter, y: Tensor, idx: Tensor) -> Tensor:
    """``A^T y`` (``(k, n) -> (k, d)``) on the finite rows of ``y``, NaN on the others.

    A problem whose residual is already non-finite is about to be stopped with istop 8; it is
    not passed to the products again.
    """
    ok = torch.isfinite(y).all(dim=1)
    out = y.new_full((y.shape[0], ctr.op.d), math.nan)
    out[ok] = ctr.rmatvec(y[ok], idx[ok])
    return out


def _cgls_estimates(s: State, inv_alpha: Tensor, beta: Tensor, pq: Tensor) -> None:
    """Update LSQR's ``anorm`` and ``acond`` from the CG coefficients.

    CG on ``M = A^T A + damp^2 I`` is Lanczos on ``M`` with tridiagonal ``T_k`` whose diagonal
    is ``1/alpha_i + beta_{i-1}/alpha_{i-1}``; ``T_k = R_k^T R_k`` for LSQR's bidiagonal, so
    ``anorm^2 = trace(T_k)`` is LSQR's ``anorm^2 = sum(alfa^2 + beta^2 + damp^2)``.  LSQR's
    directions ``d_i`` are the M-normalised ``p_i``, so ``ddnorm = sum ||p_i||^2 / p_i^T M p_i``
    (``pq = ||p|| / ||p||_M``) and ``acond = anorm * sqrt(ddnorm)`` is LSQR's estimate.
    """
    s["anormsq"] = s["anormsq"] + inv_alpha + s["bovera"]
    s["bovera"] = beta * inv_alpha
    s["ddnorm"] = s["ddnorm"] + pq**2
    s["anorm"] = torch.sqrt(s["anormsq"])
    s["acond"] = s["anorm"] * torch.sqrt(s["ddnorm"])


def _cgls_step(ctr: Counter, s: State, idx: Tensor, o: Options) -> State:
    """One CGLS1 iteration (recurred residual r) on the state of the active problems ``idx``.

    With ``p = psig * phat`` and ``q = A phat``: ``alpha = snorm^2 / (psig^2 ||q||_M^2)`` and the
    step ``alpha * p = step * phat`` with ``step = (snorm/qm) * (snorm/psig/qm)``.
    """
    s["itn"] = s["itn"] + 1
    q = ctr.matvec(s["phat"], idx)
    pnorm = row_norm(s["phat"])
    qm = torch.hypot(row_norm(q), o.damp * pnorm)
    step = (s["snorm"] / qm) * (s["snorm"] / s["psig"] / qm)
    s["x"] = s["x"] + step[:, None] * s["phat"]
    s["r"] = s["r"] - step[:, None] * q
    dx = s["x"] - s["x0"]
    s["s"] = _finite_rmatvec(ctr, s["r"], idx) - o.damp**2 * dx
    snorm = row_norm(s["s"])
    beta = (snorm / s["snorm"]) ** 2
    _cgls_estimates(s, (s["psig"] / s["snorm"] * qm) ** 2, beta, pnorm / qm)
    p = s["s"] + (beta * s["psig"])[:, None] * s["phat"]
    s["psig"] = row_pow2(p)
    s["phat"] = p / s["psig"][:, None]
    s["snorm"] = snorm
    s["xnorm"] = row_norm(dx)
    s["r1norm"] = row_norm(s["r"])
    s["rnorm"] = torch.hypot(s["r1norm"], o.damp * s["xnorm"])
    s["r2norm"] = s["rnorm"]
    s["arnorm"] = snorm
    return s


_CGLS_FINITE = ("x", "r", "s", "phat", "psig", "snorm")


def cgls(
    op: Products,
    b: Tensor,
    *,
    damp: float = 0.0,
    atol: float = 1e-6,
    btol: float = 1e-6,
    conlim: float = 1e8,
    iter_lim: int | None = None,
    x0: Tensor | None = None,
    record: bool = False,
) -> tuple[Tensor, LsqrInfo]:
    """Batched CGLS (CGLS1 of Björck-Elfving-Strakoš) with LSQR's options and stopping tests.

    Parameters and returns are those of :func:`lsqr`.  The estimates differ in how they are
    obtained: ``r1norm`` and ``arnorm`` are norms of the recurred vectors ``r`` and
    ``s = A^T r - damp^2 (x - x0)``, ``xnorm = ||x - x0||`` is computed directly, and
    ``anorm``/``acond`` are LSQR's quantities rebuilt from the CG coefficients
    (:func:`_cgls_estimates`).  Each iteration costs one ``matvec`` and one ``rmatvec``.
    """
    o = options(op, b, x0, damp, atol, btol, conlim, iter_lim)
    return run_solver(op, b, x0, o, record, _cgls_init, _cgls_step, _CGLS_FINITE)
