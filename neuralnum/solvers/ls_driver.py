"""What LSQR and CGLS share: the products they see ``A`` through, their options and
scipy's stopping tests, and the batched driver that runs either on a batch of problems.

Both solvers treat a batch of ``B`` independent least-squares problems

    minimise ‖A_p x − b_p‖² + damp² ‖x − x0_p‖²,      A_p: (n, d),  p = 0..B−1,

and use ``A_p`` only through ``op.matvec`` / ``op.rmatvec`` (:class:`Products`; every
:class:`~neuralnum.solvers.operators.Operator` with separate products is one). Nothing
here factorises ``A`` or ``AᵀA`` (no SVD, QR, eig, solve, lstsq, Cholesky); no function of
``torch.linalg`` is called at all (vector norms are computed by :func:`row_norm`).
Problems stop independently: a problem that has stopped is left out of ``idx`` and costs
no more calls.

Stopping codes (``LsqrInfo.istop``, names in :data:`ISTOP_NAMES`), scipy's meanings: with
``rnorm = ‖[b − A x; damp (x − x0)]‖``, ``arnorm = ‖Aᵀr − damp² (x − x0)‖``, ``bnorm = ‖b‖``
and ``eps`` the machine epsilon of ``op.dtype``, after every iteration (in scipy's order,
so a lower code wins)::

    7  itn >= iter_lim
    6  1 + 1/(acond + eps) <= 1
    5  1 + arnorm/(anorm*rnorm + eps) <= 1
    4  1 + (rnorm/bnorm)/(1 + anorm*xnorm/bnorm) <= 1
    3  1/(acond + eps) <= 1/conlim                            (only if conlim > 0)
    2  arnorm/(anorm*rnorm + eps) <= atol
    1  rnorm/bnorm <= btol + atol*anorm*xnorm/bnorm
    0  Aᵀ (b − A x0) = 0 at the start: x = x0 (x = 0 without x0) is a least-squares
       solution; also returned, as scipy does, when iter_lim = 0
    8  (not in scipy) a product, or the recurrence, produced NaN/Inf: the problem is
       stopped and x is its last finite iterate (itn iterations); the products object is
       not called for it again

Minimum-norm solutions: started from ``x = 0`` every iterate lies in ``range(Aᵀ)`` (LSQR's
``v_k`` and CGLS's directions are ``Aᵀ`` times something), and the least-squares solutions
form ``x† + null(A)`` with ``range(Aᵀ) = null(A)^⊥``, so the limit is the minimum-norm
solution ``pinv(A) b`` for rank-deficient and wide (``n < d``) problems.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

__all__ = ["ISTOP_NAMES", "NONFINITE", "Counter", "LsqrInfo", "Options", "Products", "State",
           "options", "row_norm", "row_pow2", "run_solver", "start"]


ISTOP_NAMES: tuple[str, ...] = (
    "The exact solution is x = x0 (x = 0 without x0), or no iteration was allowed",
    "Ax - b is small enough, given atol, btol",
    "The least-squares solution is good enough, given atol",
    "The estimate of cond(Abar) has exceeded conlim",
    "Ax - b is small enough for this machine",
    "The least-squares solution is good enough for this machine",
    "Cond(Abar) seems to be too large for this machine",
    "The iteration limit has been reached",
    "A product or the recurrence produced NaN/Inf; x is the last finite iterate",
)

NONFINITE = 8

_FLOATS = (torch.float32, torch.float64)

State = dict[str, Tensor]


class Products(Protocol):
    """Batched products with ``B`` matrices ``A_p`` of shape ``(n, d)``.

    Attributes
    ----------
    batch, n, d : int
        Number of problems and the shape of each ``A_p``.
    dtype : torch.dtype
        ``torch.float32`` or ``torch.float64``; products return this dtype.
    device : torch.device
        Device of all inputs and outputs.
    calls : Tensor
        ``(batch,)`` long; product calls per problem, counted by the products object.
    """

    batch: int
    n: int
    d: int
    dtype: torch.dtype
    device: torch.device
    calls: Tensor

    def matvec(self, v: Tensor, idx: Tensor) -> Tensor:
        """Return ``A[idx] v``: ``v`` is ``(k, d)``, ``idx`` ``(k,)`` long; result ``(k, n)``."""
        ...

    def rmatvec(self, u: Tensor, idx: Tensor) -> Tensor:
        """Return ``A[idx]^T u``: ``u`` is ``(k, n)``, ``idx`` ``(k,)`` long; result ``(k, d)``."""
        ...


@dataclass
class LsqrInfo:
    """Per-problem results of :func:`lsqr` / :func:`cgls`; every tensor is ``(B,)``.

    Attributes
    ----------
    istop : Tensor
        long, stopping code 0..8, meaning ``LsqrInfo.names[istop]`` (module docstring).
    itn : Tensor
        long, iterations done (for ``istop == 8``: iterations that produced the returned x).
    r1norm, r2norm : Tensor
        ``||b - A x||`` and ``sqrt(r1norm^2 + damp^2 ||x - x0||^2)`` (scipy's meanings; LSQR's
        r1norm is scipy's signed estimate, CGLS's the norm of the recurred residual).
    anorm, acond : Tensor
        Estimates of the Frobenius norm of ``[A; damp I]`` and of its condition number.
    arnorm, xnorm : Tensor
        ``||A^T r - damp^2 (x - x0)||`` and ``||x - x0||`` (estimates, as in scipy).
    matvecs, rmatvecs : Tensor
        long, calls of ``op.matvec`` / ``op.rmatvec`` per problem made by this solve.
    history : Tensor or None
        ``(K + 1, B, d)`` iterates ``x`` after 0..K iterations when ``record=True``; a problem
        that stopped keeps its final ``x`` in the later rows.
    method : str
        ``"lsqr"`` or ``"cgls"``.
    model_calls : Tensor or None
        long, every call of the operator per problem (the products and, for a learned
        operator, its one-off centring calls), set by :func:`neuralnum.solvers.methods.solve`.
    refined : Tensor or None
        bool, problems that :func:`neuralnum.solvers.methods.solve`'s ``refine`` refined
        (``None``: no refinement asked); their ``itn``, ``matvecs``, ``rmatvecs`` include
        the correction solves, ``istop`` and the residual estimates are the last one's.
    """

    istop: Tensor
    itn: Tensor
    r1norm: Tensor
    r2norm: Tensor
    anorm: Tensor
    acond: Tensor
    arnorm: Tensor
    xnorm: Tensor
    matvecs: Tensor
    rmatvecs: Tensor
    history: Tensor | None = None
    method: str = "lsqr"
    model_calls: Tensor | None = None
    refined: Tensor | None = None
    names: ClassVar[tuple[str, ...]] = ISTOP_NAMES

    @property
    def calls(self) -> Tensor:
        """Product calls per problem, ``matvecs + rmatvecs`` (``(B,)`` long)."""
        return self.matvecs + self.rmatvecs

    @property
    def iterations(self) -> Tensor:
        """Iterations per problem (``itn``)."""
        return self.itn

    @property
    def converged(self) -> Tensor:
        """``(B,)`` bool: stopped by a tolerance (``istop`` 0, 1, 2, 4 or 5), not by the
        condition limit, the iteration limit or a non-finite value."""
        return (self.istop <= 2) | (self.istop == 4) | (self.istop == 5)

    def meaning(self, problem: int) -> str:
        """scipy's meaning of problem ``problem``'s ``istop``."""
        return self.names[int(self.istop[problem])]

    def summary(self) -> dict[str, Any]:
        """Medians / maxima and ``istop`` counts as plain numbers (for reports)."""
        calls = self.calls if self.model_calls is None else self.model_calls
        return {"method": self.method,
                "iterations_median": float(self.itn.double().median()),
                "iterations_max": int(self.itn.max()),
                "model_calls_median": float(calls.double().median()),
                "model_calls_max": int(calls.max()),
                **{f"istop_{code}": int((self.istop == code).sum())
                   for code in range(len(self.names)) if (self.istop == code).any()}}


@dataclass(frozen=True)
class Options:
    damp: float
    atol: float
    btol: float
    ctol: float
    iter_lim: int
    eps: float


class Counter:
    """Wraps a products object: skips empty calls, counts calls, checks output shapes."""

    def __init__(self, op: Products) -> None:
        self.op = op
        self.matvecs = torch.zeros(op.batch, dtype=torch.long, device=op.device)
        self.rmatvecs = torch.zeros_like(self.matvecs)

    def matvec(self, v: Tensor, idx: Tensor) -> Tensor:
        """``A[idx] v``: ``(k, d) -> (k, n)``."""
        return self._call(self.op.matvec, self.matvecs, v, idx, self.op.n)

    def rmatvec(self, u: Tensor, idx: Tensor) -> Tensor:
        """``A[idx]^T u``: ``(k, n) -> (k, d)``."""
        return self._call(self.op.rmatvec, self.rmatvecs, u, idx, self.op.d)

    def _call(
        self,
        fn: Callable[[Tensor, Tensor], Tensor],
        count: Tensor,
        x: Tensor,
        idx: Tensor,
        m: int,
    ) -> Tensor:
        if idx.numel() == 0:
            return x.new_zeros(0, m)
        out = fn(x, idx)
        count.index_add_(0, idx, torch.ones_like(idx))
        want = (idx.numel(), m)
        if not isinstance(out, Tensor) or tuple(out.shape) != want or out.dtype != x.dtype:
            got = (tuple(out.shape), out.dtype) if isinstance(out, Tensor) else type(out)
            name = getattr(fn, "__name__", "product")
            raise RuntimeError(f"{name} returned {got}, expected {want} {x.dtype}")
        return out


def row_pow2(x: Tensor) -> Tensor:
    """Power of two ``2**e`` near the largest ``|x|`` of each row (``(k, m) -> (k,)``).

    Dividing a row by it is exact and brings its largest entry into ``[0.5, 1)``; ``e`` is
    clamped so that ``2**e`` and ``2**-e`` are normal numbers of ``x.dtype``.
    """
    emax = math.frexp(torch.finfo(x.dtype).max)[1] - 2
    _, e = torch.frexp(x.abs().amax(dim=-1))
    return torch.exp2(e.clamp(-emax, emax).to(x.dtype))


def row_norm(x: Tensor) -> Tensor:
    """Euclidean norm of each row of ``x`` (``(k, m) -> (k,)``), same dtype.

    Rows are scaled exactly by :func:`row_pow2` before squaring, so the result is that of
    ``sqrt(sum(x**2))`` without its overflow/underflow.
    """
    scale = row_pow2(x)
    scaled = x * (1 / scale).unsqueeze(-1)  # 1/scale: a normal power of two, exact
    return torch.sqrt((scaled * scaled).sum(dim=-1)) * scale


def _check_tensor(name: str, t: object, op: Products, shape: tuple[int, int]) -> None:
    """Raise a clear error unless ``t`` is a finite tensor of ``shape``, ``op.dtype/device``."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.dtype != op.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but the products use {op.dtype}")
    want = torch.device(op.device)
    if t.device.type != want.type or want.index not in (None, t.device.index):
        raise ValueError(f"{name} is on {t.device} but the products are on {op.device}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def options(
    op: Products,
    b: Tensor,
    x0: Tensor | None,
    damp: float,
    atol: float,
    btol: float,
    conlim: float,
    iter_lim: int | None,
) -> Options:
    """Validate the inputs and return the solver options (``iter_lim`` defaults to ``2 d``)."""
    if op.dtype not in _FLOATS:
        raise TypeError(f"products must use float32 or float64, got {op.dtype}")
    _check_tensor("b", b, op, (op.batch, op.n))
    if x0 is not None:
        _check_tensor("x0", x0, op, (op.batch, op.d))
    for name, val in (("damp", damp), ("atol", atol), ("btol", btol), ("conlim", conlim)):
        limit = math.inf if name == "conlim" else math.nextafter(math.inf, 0)
        if isinstance(val, bool) or not isinstance(val, numbers.Real) or not 0 <= val <= limit:
            raise ValueError(f"{name} must be a number >= 0 (finite unless conlim), got {val!r}")
    iter_lim = 2 * op.d if iter_lim is None else iter_lim
    if not isinstance(iter_lim, numbers.Integral) or isinstance(iter_lim, bool) or iter_lim < 0:
        raise ValueError(f"iter_lim must be an int >= 0, got {iter_lim!r}")
    ctol = 1 / conlim if conlim > 0 else 0.0
    eps = torch.finfo(op.dtype).eps
    return Options(float(damp), float(atol), float(btol), float(ctol), int(iter_lim), eps)


def _stopping_tests(s: State, o: Options) -> Tensor:
    """Apply scipy's stopping tests to the ``(k,)`` estimates in ``s``; return istop (long)."""
    test1 = s["rnorm"] / s["bnorm"]
    test2 = s["arnorm"] / (s["anorm"] * s["rnorm"] + o.eps)
    test3 = 1 / (s["acond"] + o.eps)
    t1 = test1 / (1 + s["anorm"] * s["xnorm"] / s["bnorm"])
    rtol = o.btol + o.atol * s["anorm"] * s["xnorm"] / s["bnorm"]
    rules = (
        (s["itn"] >= o.iter_lim, 7),
        (1 + test3 <= 1, 6),
        (1 + test2 <= 1, 5),
        (1 + t1 <= 1, 4),
        (test3 <= o.ctol, 3),
        (test2 <= o.atol, 2),
        (test1 <= rtol, 1),
    )
    istop = torch.zeros_like(s["itn"])
    for hit, code in rules:
        istop = torch.where(hit, code, istop)
    return istop


def _finite_rows(s: State, keys: tuple[str, ...]) -> Tensor:
    """``(k,)`` bool: rows whose tensors ``s[key]`` are all finite. ``t·0`` is 0 for a
    finite ``t`` and NaN for ±Inf or NaN, and a sum with a NaN is NaN: one product and
    one sum per tensor (``isfinite`` takes four passes)."""
    total = None
    for key in keys:
        t = s[key]
        rows = (t.reshape(t.shape[0], -1) * 0).sum(dim=1)
        total = rows if total is None else total + rows
    return total == 0


def _rows(mask: Tensor, t: Tensor) -> Tensor:
    """Broadcast a ``(k,)`` mask against ``t`` of shape ``(k, ...)``."""
    return mask.reshape(-1, *([1] * (t.dim() - 1)))


def _iterate(
    ctr: Counter,
    state: State,
    active: Tensor,
    step: Callable[[Counter, State, Tensor], State],
    o: Options,
    finite_keys: tuple[str, ...],
    record: bool,
) -> list[Tensor]:
    """Run ``step`` on the active problems until each has stopped; updates ``state`` (the
    dict; its tensors are replaced or written in place, never read again by the caller
    but through it).

    A problem whose new state is not finite is rolled back to its previous state and stopped
    with ``istop = 8``.  While every problem is active the step runs on ``state`` itself
    (no gathering or scattering; steps never modify their input tensors in place).
    Returns the list of full ``(B, d)`` iterates when ``record``.
    """
    history = [state["x"].clone()] if record else []
    while bool(active.any()):
        idx = active.nonzero().squeeze(1)
        whole = len(idx) == len(active)
        old = dict(state) if whole else {key: t.index_select(0, idx)
                                         for key, t in state.items()}
        new = step(ctr, dict(old), idx)
        bad = ~_finite_rows(new, finite_keys)
        if bool(bad.any()):
            new = {key: torch.where(_rows(bad, t), old[key], t) for key, t in new.items()}
        new["istop"] = torch.where(bad, NONFINITE, _stopping_tests(new, o))
        for key, t in new.items():
            if whole:
                state[key] = t
            elif t is not old[key]:
                state[key].index_copy_(0, idx, t)
        active[idx] = new["istop"] == 0
        if record:
            history.append(state["x"].clone())
    return history


def start(ctr: Counter, b: Tensor, x0: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``x``, ``r = b - A x`` and ``(B,)`` all-problem indices at the start."""
    idx = torch.arange(b.shape[0], device=b.device)
    if x0 is None:
        return b.new_zeros(b.shape[0], ctr.op.d), b.clone(), idx
    return x0.clone(), b - ctr.matvec(x0, idx), idx


def _first_active(state: State, o: Options, keys: tuple[str, ...]) -> Tensor:
    """Mark problems that must not iterate: ``arnorm == 0`` (istop 0) or non-finite (istop 8)."""
    bad = ~_finite_rows(state, keys)
    state["istop"] = torch.where(bad, NONFINITE, 0)
    return (state["arnorm"] != 0) & ~bad & (o.iter_lim > 0)


def run_solver(
    op: Products,
    b: Tensor,
    x0: Tensor | None,
    o: Options,
    record: bool,
    init: Callable[[Counter, Tensor, Tensor | None], State],
    step: Callable[[Counter, State, Tensor, Options], State],
    keys: tuple[str, ...],
) -> tuple[Tensor, LsqrInfo]:
    """Shared driver: initialise, iterate the active problems, package the results."""
    ctr = Counter(op)
    state = init(ctr, b, x0)
    active = _first_active(state, o, keys)
    history = _iterate(ctr, state, active, partial(step, o=o), o, keys, record)
    names = ("istop", "itn", "r1norm", "r2norm", "anorm", "acond", "arnorm", "xnorm")
    info = LsqrInfo(
        **{key: state[key] for key in names},
        matvecs=ctr.matvecs,
        rmatvecs=ctr.rmatvecs,
        history=torch.stack(history) if record else None,
    )
    return state["x"], info
