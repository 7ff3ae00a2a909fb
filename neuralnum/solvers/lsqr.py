"""Batched LSQR (Paige & Saunders 1982) touching ``A`` only through two products.

:func:`lsqr` is a line-by-line batched transcription of ``scipy.sparse.linalg.lsqr``: the
Golub–Kahan bidiagonalisation, the same plane rotations (:func:`_sym_ortho`), the same
estimates ``anorm`` (Frobenius norm of the bidiagonal ``B_k``), ``acond``
(``anorm·‖D_k‖_F``), ``xnorm``, ``rnorm``, ``arnorm`` and the same stopping tests
(:mod:`neuralnum.solvers.ls_driver`). Its error grows as ``κ(A)·u`` (plus the
``κ²·u·‖r‖/(‖A‖‖x‖)`` every method shares), where CG on the normal-equations operator
loses ``κ(A)²·u``: the reason for separate products.
"""

from __future__ import annotations

from functools import partial

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
    run_solver,
    start,
)

__all__ = ["Bases", "lsqr"]


def _sym_ortho(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Stable Givens rotation, elementwise (scipy's ``_sym_ortho``) on ``(k,)`` tensors.

    Returns ``c, s, r`` with ``[c s; -s c] [a; b] = [r; 0]``.
    """
    one = torch.ones_like(a)
    tau_b = a / torch.where(b == 0, one, b)
    s_b = torch.sign(b) / torch.sqrt(1 + tau_b * tau_b)
    c_b, r_b = s_b * tau_b, b / torch.where(s_b == 0, one, s_b)
    tau_a = b / torch.where(a == 0, one, a)
    c_a = torch.sign(a) / torch.sqrt(1 + tau_a * tau_a)
    s_a, r_a = c_a * tau_a, a / torch.where(c_a == 0, one, c_a)
    big_b = b.abs() > a.abs()
    c = torch.where(big_b, c_b, c_a)
    s = torch.where(big_b, s_b, s_a)
    r = torch.where(big_b, r_b, r_a)
    b0, a0 = b == 0, (a == 0) & (b != 0)
    c = torch.where(b0, torch.sign(a), torch.where(a0, 0.0, c))
    s = torch.where(b0, 0.0, torch.where(a0, torch.sign(b), s))
    r = torch.where(b0, a.abs(), torch.where(a0, b.abs(), r))
    return c, s, r


class Bases:
    """The Golub–Kahan vectors of every problem so far, for full reorthogonalisation:
    ``u`` rows ``(B, n)`` and ``v`` rows ``(B, d)``, one of each per iteration (rows of
    problems that have stopped are not written: never read again), kept in a
    ``(capacity, B, m)`` buffer per name that doubles when full, so storing a row and
    reading the basis of every problem copy nothing. With ``enabled=False`` nothing is
    kept and :meth:`orthogonalize` is the identity."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.store: dict[str, Tensor] = {}
        self.count: dict[str, int] = {"u": 0, "v": 0}

    def keep(self, name: str, vectors: Tensor, idx: Tensor, batch: int) -> None:
        """Store ``vectors: (k, m)`` of problems ``idx`` (sorted, as the driver's) as the
        next row of ``name``."""
        if not self.enabled:
            return
        count, store = self.count[name], self.store.get(name)
        if store is None or count == store.shape[0]:
            # uninitialised: a problem's entry of a row is read only while the problem is
            # active, and an active problem has been written into every row so far
            grown = vectors.new_empty(max(8, 2 * count), batch, vectors.shape[1])
            if store is not None:
                grown[:count] = store
            self.store[name] = store = grown
        if len(idx) == batch:
            store[count] = vectors
        else:
            store[count, idx] = vectors
        self.count[name] = count + 1

    def orthogonalize(self, name: str, w: Tensor, idx: Tensor) -> Tensor:
        """``w: (k, m)`` with its components along the stored rows of problems ``idx``
        (sorted) removed, twice (classical Gram–Schmidt, repeated: orthogonal to working
        precision)."""
        count = self.count[name]
        if not self.enabled or not count:
            return w
        rows = self.store[name][:count]
        basis = (rows if len(idx) == rows.shape[1] else rows[:, idx]).transpose(0, 1)
        for _ in range(2):  # (k, rows, m): coefficients, then Σ_rows coefficient·row
            w = w - ((basis @ w.unsqueeze(2)).mT @ basis).squeeze(1)
        return w


def _unit(w: Tensor, norm: Tensor) -> Tensor:
    """``w: (k, m)`` divided by ``norm: (k,)`` (as ``w·(1/norm)``) in the rows where
    ``norm > 0``, ``w`` itself in the others."""
    scaled = w * (1 / norm)[:, None]
    pos = norm > 0
    return scaled if bool(pos.all()) else torch.where(pos[:, None], scaled, w)


def _lsqr_init(ctr: Counter, b: Tensor, x0: Tensor | None, bases: Bases) -> State:
    """Initialise LSQR for all problems as scipy does; return the ``(B, ...)`` state."""
    x, u, idx = start(ctr, b, x0)
    bnorm = row_norm(b)
    beta = row_norm(u)
    pos = beta > 0
    u = _unit(u, beta)
    v = x.new_zeros(x.shape)
    v[pos] = ctr.rmatvec(u[pos], idx[pos])
    alfa = row_norm(v)
    v = _unit(v, alfa)
    bases.keep("u", u, idx, len(idx))
    bases.keep("v", v, idx, len(idx))
    zero = torch.zeros_like(bnorm)
    return {
        "x": x,
        "u": u,
        "v": v,
        "w": v.clone(),
        "alfa": alfa,
        "beta": beta,
        "rhobar": alfa.clone(),
        "phibar": beta.clone(),
        "anorm": zero.clone(),
        "acond": zero.clone(),
        "ddnorm": zero.clone(),
        "res2": zero.clone(),
        "xnorm": zero.clone(),
        "xxnorm": zero.clone(),
        "z": zero.clone(),
        "cs2": zero - 1,
        "sn2": zero.clone(),
        "rnorm": beta.clone(),
        "r1norm": beta.clone(),
        "r2norm": beta.clone(),
        "arnorm": alfa * beta,
        "bnorm": bnorm,
        "itn": torch.zeros_like(idx),
        "istop": torch.zeros_like(idx),
    }


def _lsqr_bidiag(ctr: Counter, s: State, idx: Tensor, dampsq: float, bases: Bases) -> None:
    """One Golub-Kahan step on the ``(k, ...)`` state ``s`` (u, beta, anorm, v, alfa),
    each new vector orthogonalised against the stored ones when ``bases`` keeps them."""
    batch = ctr.op.batch
    u = bases.orthogonalize("u", ctr.matvec(s["v"], idx) - s["alfa"][:, None] * s["u"], idx)
    beta = row_norm(u)
    pos = beta > 0
    s["u"] = _unit(u, beta)
    grown = torch.sqrt(s["anorm"] ** 2 + s["alfa"] ** 2 + beta**2 + dampsq)
    s["anorm"] = torch.where(pos, grown, s["anorm"])
    s["beta"] = beta
    bases.keep("u", s["u"], idx, batch)
    go = pos & torch.isfinite(beta)
    every = bool(go.all())  # then no gathering or scattering
    k = None if every else go.nonzero().squeeze(1)

    def rows(t: Tensor) -> Tensor:
        return t if k is None else t[k]

    v = ctr.rmatvec(rows(s["u"]), rows(idx)) - rows(beta)[:, None] * rows(s["v"])
    v = bases.orthogonalize("v", v, rows(idx))
    alfa = row_norm(v)
    v = _unit(v, alfa)
    s["v"] = v if k is None else s["v"].index_copy(0, k, v)
    s["alfa"] = alfa if k is None else s["alfa"].index_copy(0, k, alfa)
    bases.keep("v", s["v"], idx, batch)


def _lsqr_rotate(s: State, damp: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Eliminate damp and beta, update x, w and ddnorm; return theta, phi, rho, tau, psi."""
    if damp > 0:
        rhobar1 = torch.sqrt(s["rhobar"] ** 2 + damp**2)
        psi = damp / rhobar1 * s["phibar"]
        s["phibar"] = s["rhobar"] / rhobar1 * s["phibar"]
    else:
        rhobar1, psi = s["rhobar"], torch.zeros_like(s["rhobar"])
    cs, sn, rho = _sym_ortho(rhobar1, s["beta"])
    theta = sn * s["alfa"]
    s["rhobar"] = -cs * s["alfa"]
    phi = cs * s["phibar"]
    s["phibar"] = sn * s["phibar"]
    tau = sn * phi
    dk = (1 / rho)[:, None] * s["w"]
    s["x"] = s["x"] + (phi / rho)[:, None] * s["w"]
    s["w"] = s["v"] + (-theta / rho)[:, None] * s["w"]
    s["ddnorm"] = s["ddnorm"] + row_norm(dk) ** 2
    return theta, phi, rho, tau, psi


def _lsqr_xnorm(s: State, theta: Tensor, phi: Tensor, rho: Tensor) -> None:
    """Paige-Saunders estimate of ``||x - x0||`` from the second rotation (z, cs2, sn2)."""
    delta = s["sn2"] * rho
    gambar = -s["cs2"] * rho
    rhs = phi - delta * s["z"]
    zbar = rhs / gambar
    s["xnorm"] = torch.sqrt(s["xxnorm"] + zbar**2)
    gamma = torch.sqrt(gambar**2 + theta**2)
    s["cs2"] = gambar / gamma
    s["sn2"] = theta / gamma
    s["z"] = rhs / gamma
    s["xxnorm"] = s["xxnorm"] + s["z"] ** 2


def _lsqr_norms(s: State, tau: Tensor, psi: Tensor, damp: float) -> None:
    """Acond, rnorm, arnorm, r1norm, r2norm as scipy computes them.

    Only ``rnorm`` is written as a hypot (equal to scipy's value when ``damp == 0``, within
    rounding otherwise) so that it does not overflow when ``||b||^2`` would.
    """
    s["acond"] = s["anorm"] * torch.sqrt(s["ddnorm"])
    s["res2"] = s["res2"] + psi**2
    s["rnorm"] = torch.hypot(s["phibar"], torch.sqrt(s["res2"]))  # scipy: sqrt(phibar**2 + res2)
    s["arnorm"] = s["alfa"] * tau.abs()
    if damp > 0:
        r1sq = s["rnorm"] ** 2 - damp**2 * s["xxnorm"]
        r1norm = torch.sqrt(r1sq.abs())
        s["r1norm"] = torch.where(r1sq < 0, -r1norm, r1norm)
    else:
        s["r1norm"] = s["rnorm"]
    s["r2norm"] = s["rnorm"]


def _lsqr_step(ctr: Counter, s: State, idx: Tensor, o: Options, bases: Bases) -> State:
    """One LSQR iteration on the ``(k, ...)`` state of the active problems ``idx``."""
    s["itn"] = s["itn"] + 1
    _lsqr_bidiag(ctr, s, idx, o.damp**2, bases)
    theta, phi, rho, tau, psi = _lsqr_rotate(s, o.damp)
    _lsqr_xnorm(s, theta, phi, rho)
    _lsqr_norms(s, tau, psi, o.damp)
    return s


_LSQR_FINITE = ("x", "u", "v", "w", "alfa", "beta", "rhobar", "phibar")


def lsqr(
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
    reorthogonalize: bool = False,
) -> tuple[Tensor, LsqrInfo]:
    """Batched LSQR with the semantics of ``scipy.sparse.linalg.lsqr``.

    Parameters
    ----------
    op : Products
        The ``B`` matrices ``A_p`` of shape ``(n, d)``, used only through products.
    b : Tensor
        ``(B, n)`` right-hand sides, ``op.dtype`` on ``op.device``, finite.
    damp : float
        Regularisation: minimise ``||A x - b||^2 + damp^2 ||x - x0||^2``.
    atol, btol, conlim : float
        scipy's tolerances (``conlim = 0`` disables the condition test); all ``>= 0``.
    iter_lim : int, optional
        Iteration limit per problem, default ``2 d`` as scipy.
    x0 : Tensor, optional
        ``(B, d)`` starting point; as scipy, LSQR runs on ``b - A x0`` and returns ``x0 + dx``.
    record : bool
        Store the iterates in ``info.history``.
    reorthogonalize : bool
        Keep every Golub–Kahan vector and orthogonalise each new one against them (twice),
        as exact arithmetic would: in floating point the vectors otherwise lose
        orthogonality, and a problem with many distinct singular values over a wide range
        (κ = 1e4 over 100 of them) needs thousands of iterations instead of about ``d``.
        It costs ``O(k·(n + d))`` work and memory per iteration, touching no ``A``.
        Off: scipy's iteration exactly.

    Returns
    -------
    x : Tensor
        ``(B, d)`` solutions, ``op.dtype``; always finite.
    info : LsqrInfo
        Per-problem stopping codes, iteration counts, estimates and product calls.
    """
    o = options(op, b, x0, damp, atol, btol, conlim, iter_lim)
    bases = Bases(reorthogonalize)
    return run_solver(op, b, x0, o, record, partial(_lsqr_init, bases=bases),
                      partial(_lsqr_step, bases=bases), _LSQR_FINITE)
