"""The shape-general learned solver against scipy on every family, at every shape: the
second part of :mod:`studies.vs_scipy`, and the pieces :mod:`studies.cost_scaling` shares.

The solver is the shipped one (:func:`neuralnum.solvers.pretrained.pretrained`: weights
trained once on mixed shapes, never on these problems). Every family of
:data:`neuralnum.problems.FAMILIES` is drawn at its own small shape (20 × 5;
``overdetermined`` 40 × 5, ``underdetermined`` 5 × 20) and at the four big shapes
:data:`BIG_SHAPES` (not ``overdetermined`` / ``underdetermined``: with ``n`` and ``d`` set
they are the ``gaussian`` family, and (100, 1000) is the under-determined shape). On each
batch, in float64 (float32 at :data:`FLOAT32_SHAPES`): the learned solver's LSQR (its
default: full reorthogonalisation and one refinement step where LSQR's condition
estimate is ≥ 1e3), the same without the refinement, its LSQR with neither (scipy's
iteration), its CGLS and its CG (the fused step), all touching ``A`` only through the
learned network; the default LSQR on the exact products;
``scipy.sparse.linalg.lsqr`` on the exact problem with the same ``atol = btol = eps``,
``conlim = 1e8`` and ``iter_lim = 2 d``; and ``scipy.linalg.lstsq`` (gelsd, ``cond = eps ·
max(n, d)`` as :func:`neuralnum.problems.reference.lstsq`). Each solution is judged
against the exact minimum-norm solution of the stored problem: mpmath's (50 digits)
where ``n · d`` ≤ :data:`MPMATH_ENTRIES`, else gelsd's refined by :data:`REFINEMENTS`
corrections on double-double residuals (:func:`refined_lstsq`; its last relative
correction is reported beside it: the judge's own error is at most about that).
Recorded per row: median and worst digits, median iterations and model calls (scipy
lsqr: its products ``2 · itn + 1``), wall seconds per problem (a batch solved at once,
divided by its size; scipy in a loop) and the fraction stopped by a tolerance.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse.linalg as sla
import torch

from neuralnum.core.runtime import make_generator
from neuralnum.problems import reference
from neuralnum.problems.double_double import dd_matvec
from neuralnum.problems.families import FAMILIES, Problems, family_from_name
from neuralnum.solvers.axial_learner import PRODUCT_DEFAULTS, AxialLearner
from neuralnum.solvers.krylov import SolveInfo
from neuralnum.solvers.ls_driver import LsqrInfo
from neuralnum.solvers.methods import solve
from neuralnum.solvers.operators import ExactOperator
from studies.markdown import targets_table
from studies.study_io import timed

__all__ = ["BIG_SHAPES", "FLOAT32_SHAPES", "LEARNED", "METHODS", "MPMATH_ENTRIES",
           "REFINEMENTS", "SMALL", "cells", "is_big", "judge", "refined_lstsq", "run_grid",
           "run_methods", "scipy_lsqr", "shape_name"]

BIG_SHAPES: tuple[tuple[int, int], ...] = ((1000, 100), (5000, 500), (100, 1000), (300, 300))
SMALL = "small"  # a family's own default shape
SMALL_ONLY = ("overdetermined", "underdetermined")
FLOAT32_SHAPES: tuple[str | tuple[int, int], ...] = (SMALL, (1000, 100))
LEARNED = {"learned_lsqr": ("lsqr", {}),
           "learned_lsqr_unrefined": ("lsqr", {"refine": 0}),
           "learned_lsqr_plain": ("lsqr", {"reorthogonalize": False}),
           "learned_cgls": ("cgls", {}), "learned_cg": ("cg", {})}
METHODS: tuple[str, ...] = (*LEARNED, "exact_lsqr", "scipy_lsqr", "scipy_lstsq")
MPMATH_ENTRIES = 400
REFINEMENTS = 2
CONLIM = 1e8
#: Problems per batch: small shape, then each big shape.
PROBLEMS = {"quick": {SMALL: 64, (1000, 100): 8, (5000, 500): 1, (100, 1000): 8,
                      (300, 300): 8},
            "full": {SMALL: 256, (1000, 100): 32, (5000, 500): 4, (100, 1000): 32,
                     (300, 300): 32}}


def cells() -> list[tuple[str, str | tuple[int, int], str]]:
    """The grid: ``(family, shape, dtype)`` for every family at its own small shape and
    (but :data:`SMALL_ONLY`) at :data:`BIG_SHAPES`, float64, and float32 at
    :data:`FLOAT32_SHAPES`."""
    grid = []
    for family in FAMILIES:
        shapes = (SMALL,) if family in SMALL_ONLY else (SMALL, *BIG_SHAPES)
        for shape in shapes:
            grid += [(family, shape, "float64")]
            grid += [(family, shape, "float32")] if shape in FLOAT32_SHAPES else []
    return grid


def refined_lstsq(A: torch.Tensor, b: torch.Tensor, rcond: float,
                  steps: int = REFINEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """gelsd's minimum-norm solution of ``A: (B, n, d)``, ``b: (B, n)`` (float64) refined
    ``steps`` times: ``x ← x + lstsq(A, b − A x)`` with the residual formed in
    double-double and rounded once. The least-squares solution is affine in ``b``, so each
    step removes gelsd's error up to its own (``κ²·u`` of a residual that shrinks).
    Returns ``x: (B, d)`` float64 and the last step's relative correction ``(B,)``."""
    x = reference.lstsq(A, b, method="scipy", rcond=rcond)
    change = torch.zeros(A.shape[0], dtype=torch.float64)
    for _ in range(steps):
        hi, lo = dd_matvec(A, x, b)  # A x − b
        residual = -torch.from_numpy(hi + lo)
        delta = reference.lstsq(A, residual, method="scipy", rcond=rcond)
        x = x + delta
        change = delta.norm(dim=1) / x.norm(dim=1).clamp(min=torch.finfo(x.dtype).tiny)
    return x, change


def judge(P: Problems) -> tuple[torch.Tensor, str, float | None]:
    """The exact minimum-norm solution of the stored problems (float64, with the dtype's
    own cutoff ``eps · max(n, d)``), the judge's name and, for the refined judge, its
    median last relative correction."""
    if P.n * P.d <= MPMATH_ENTRIES:
        return reference.stored_solution(P.A, P.b), "mpmath", None
    x, change = refined_lstsq(P.A.double(), P.b.double(),
                              reference.default_rcond(P.A.dtype, P.n, P.d))
    return x, f"gelsd + {REFINEMENTS} dd refinements", float(change.median())


def scipy_lsqr(P: Problems, iter_lim: int | None = None
               ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``scipy.sparse.linalg.lsqr`` on each problem with ``atol = btol = eps`` of its
    dtype, ``conlim`` :data:`CONLIM`, ``iter_lim`` (default ``2 d``): ``(x: (B, d) in the
    problems' dtype, itn: (B,), istop: (B,))``."""
    eps = torch.finfo(P.A.dtype).eps
    A, b = P.A.numpy(), P.b.numpy()
    xs, itns, istops = [], [], []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for i in range(P.batch):
            out = sla.lsqr(A[i], b[i], atol=eps, btol=eps, conlim=CONLIM,
                           iter_lim=iter_lim or 2 * P.d)
            xs.append(out[0])
            itns.append(out[2])
            istops.append(out[1])
    return torch.from_numpy(np.stack(xs)).to(P.A.dtype), np.array(itns), np.array(istops)


def _record(x: torch.Tensor, info: LsqrInfo | SolveInfo, seconds: float,
            P: Problems) -> dict[str, Any]:
    """One method's run on the batch ``P``: ``x: (B, d)``, the median iterations and model
    calls and the fraction converged of ``info`` (a solve's record, ``(B,)`` tensors), and
    the wall ``seconds`` of the batch per problem."""
    return {"x": x, "iterations": info.iterations.double().median().item(),
            "calls": info.model_calls.double().median().item(),
            "converged": info.converged.double().mean().item(), "seconds": seconds / P.batch}


def _learned(learner: AxialLearner, P: Problems, method: str,
             options: dict[str, Any]) -> dict[str, Any]:
    x, seconds = timed(lambda: learner.solve(P.A, P.b, method=method, warn=False,
                                             **options))
    return _record(x, learner.last_solve, seconds, P)


def run_methods(learner: AxialLearner, P: Problems,
                methods: tuple[str, ...] = METHODS) -> dict[str, dict[str, Any]]:
    """Every method of :data:`METHODS` (or ``methods``) on the batch ``P``: ``{method:
    {x, iterations, calls, converged, seconds per problem}}`` (``None`` where a method
    has no such number)."""
    out = {name: _learned(learner, P, *LEARNED[name]) for name in methods if name in LEARNED}
    if "exact_lsqr" in methods:
        (x, info), seconds = timed(lambda: solve(ExactOperator(P.A, P.b), "lsqr", warn=False,
                                                 **PRODUCT_DEFAULTS["lsqr"]))
        out["exact_lsqr"] = _record(x, info, seconds, P)
    if "scipy_lsqr" in methods:
        (x, itn, istop), seconds = timed(lambda: scipy_lsqr(P))
        out["scipy_lsqr"] = {"x": x, "iterations": float(np.median(itn)),
                             "calls": float(np.median(2 * itn + 1)),
                             "converged": float(np.mean(np.isin(istop, (0, 1, 2, 4, 5)))),
                             "seconds": seconds / P.batch}
    if "scipy_lstsq" in methods:
        x, seconds = timed(lambda: reference.lstsq(P.A, P.b, method="scipy"))
        out["scipy_lstsq"] = {"x": x, "iterations": None, "calls": None, "converged": None,
                              "seconds": seconds / P.batch}
    return out


def _row(family: str, P: Problems, dtype: str, runs: dict[str, dict[str, Any]],
         verdict: tuple[torch.Tensor, str, float | None]) -> dict[str, Any]:
    x_judge, judge_name, correction = verdict
    row: dict[str, Any] = {"family": family, "n": P.n, "d": P.d, "dtype": dtype,
                           "problems": P.batch, "judge": judge_name,
                           "judge_correction": correction,
                           "kappa": float(reference.condition_number(
                               P.A.double(), reference.default_rcond(P.A.dtype, P.n, P.d)
                           ).median())}
    for name, run in runs.items():
        digits = reference.finite_digits(run["x"], x_judge)
        row |= {f"{name}_digits": float(digits.median()), f"{name}_worst": float(digits.min()),
                **{f"{name}_{key}": run[key] for key in ("iterations", "calls", "converged",
                                                          "seconds")}}
    return row


def _problems(family: str, shape: str | tuple[int, int], dtype: str, mode: str,
              seed: int) -> Problems:
    fields = {} if shape == SMALL else {"n": shape[0], "d": shape[1]}
    batch = PROBLEMS[mode][shape]
    fam = family_from_name(family, **fields)
    return fam.sample(batch, make_generator(seed + 7000 + fam.n + 3 * fam.d),
                      getattr(torch, dtype))


def run_grid(learners: dict[str, AxialLearner], mode: str, seed: int,
             log: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Every cell of :func:`cells`: one row each (``learners``: the solver per dtype);
    ``log`` sees each row as it is made."""
    rows = []
    for family, shape, dtype in cells():
        P = _problems(family, shape, dtype, mode, seed)
        # scipy's lsqr computes in float64 whatever its input: float32 rows leave it out
        methods = METHODS if dtype == "float64" else tuple(m for m in METHODS
                                                           if m != "scipy_lsqr")
        runs = run_methods(learners[dtype], P, methods)
        rows.append(_row(family, P, dtype, runs, judge(P)))
        if log is not None:
            log(rows[-1])
    return rows


def shape_name(row: dict[str, Any]) -> str:
    """``"1000 × 100"``."""
    return f"{row['n']} × {row['d']}"


def is_big(row: dict[str, Any]) -> bool:
    """Whether ``row`` is at one of :data:`BIG_SHAPES`."""
    return (row["n"], row["d"]) in BIG_SHAPES


# --------------------------------------------------------------------------- targets
LSQR_GAP = 0.5  # digits learned LSQR may fall below scipy's lsqr
ITERATION_RATIO = 1.1  # learned LSQR's median iterations / scipy lsqr's
LSTSQ_GAP = 1.0  # digits learned LSQR may fall below scipy.linalg.lstsq ...
LSTSQ_KAPPA = 1e4  # ... up to this κ
ILL_DIGITS = 12.4  # learned LSQR on ill_conditioned at 20 × 5, median


def verdicts(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """The shape-general targets, float64, from the rows of :func:`run_grid`."""
    big = [r for r in rows if r["dtype"] == "float64" and is_big(r)]
    ill = [r for r in rows if r["dtype"] == "float64" and r["family"] == "ill_conditioned"
           and not is_big(r)]
    return {
        "learned LSQR not more than 0.5 digit below scipy lsqr (same tolerances), every "
        "family at the four big shapes":
            bool(big) and all(r["scipy_lsqr_digits"] - r["learned_lsqr_digits"] <= LSQR_GAP
                              for r in big),
        "learned LSQR median iterations ≤ 1.1× scipy lsqr's, every family at the four big "
        "shapes":
            bool(big) and all(r["learned_lsqr_iterations"]
                              <= ITERATION_RATIO * r["scipy_lsqr_iterations"] for r in big),
        "learned LSQR within 1 digit of scipy lstsq where κ ≤ 1e4, every family at the four "
        "big shapes":
            bool(big) and all(r["scipy_lstsq_digits"] - r["learned_lsqr_digits"] <= LSTSQ_GAP
                              for r in big if r["kappa"] <= LSTSQ_KAPPA * (1 + 1e-9)),
        "ill_conditioned (20 × 5): learned LSQR ≥ 12.4 digits (median)":
            bool(ill) and all(r["learned_lsqr_digits"] >= ILL_DIGITS for r in ill),
    }


# --------------------------------------------------------------------------- tables
NAMES = {"learned_lsqr": "learned LSQR", "learned_lsqr_unrefined": "learned LSQR, unrefined",
         "learned_lsqr_plain": "learned LSQR, plain",
         "learned_cgls": "learned CGLS", "learned_cg": "learned CG",
         "exact_lsqr": "exact LSQR", "scipy_lsqr": "scipy lsqr", "scipy_lstsq": "scipy lstsq"}


def _digit_table(rows: list[dict[str, Any]], methods: tuple[str, ...]) -> list[str]:
    lines = ["| family | n × d | κ(A) | judge | " + " | ".join(NAMES[m] for m in methods) + " |",
             "|---|---|---:|---|" + "---:|" * len(methods)]
    for r in rows:
        cells = " | ".join(f"{r[f'{m}_digits']:.1f} ({r[f'{m}_worst']:.1f})" for m in methods)
        lines.append(f"| {r['family']} | {shape_name(r)} | {r['kappa']:.3g} | {r['judge']} | "
                     f"{cells} |")
    return lines


def _cost_table(rows: list[dict[str, Any]]) -> list[str]:
    iterative = METHODS[:-1]
    timed_methods = ("learned_lsqr", "exact_lsqr", "scipy_lsqr", "scipy_lstsq")
    lines = ["| family | n × d | " + " | ".join(NAMES[m] for m in iterative) + " | "
             + " | ".join(f"{NAMES[m]} s" for m in timed_methods) + " |",
             "|---|---|" + "---:|" * (len(iterative) + len(timed_methods))]
    for r in rows:
        its = " | ".join(f"{r[f'{m}_iterations']:.0f} ({r[f'{m}_calls']:.0f})"
                         for m in iterative)
        secs = " | ".join(f"{r[f'{m}_seconds']:.2g}" for m in timed_methods)
        lines.append(f"| {r['family']} | {shape_name(r)} | {its} | {secs} |")
    return lines


def tables(part: dict[str, Any]) -> str:
    """The shape-general part's block: digits per family and shape (float64, float32),
    iterations, model calls and seconds (float64), its verdicts."""
    rows = part["rows"]
    counts = ", ".join(f"{'each family’s own' if k == SMALL else k}: {v}"
                       for k, v in part["problems"].items())
    f64 = [r for r in rows if r["dtype"] == "float64"]
    lines = [f"**The shape-general learned solver** (the shipped weights, "
             f"`{part['weights']}`) — problems per batch: {counts}; one torch thread, "
             f"BLAS threads: {part['blas_threads']}. Judges: mpmath where n·d ≤ "
             f"{MPMATH_ENTRIES}, else gelsd refined {REFINEMENTS}× on double-double "
             f"residuals (the last relative correction, median per row, "
             f"{judge_correction_max(rows):.1e} at most: about the judge's own error). Every "
             f"LSQR / CGLS: atol = btol = eps, conlim = 1e8, iter_lim = 2d. Learned LSQR "
             f"is the shipped solver's default (Golub–Kahan vectors reorthogonalised, one "
             f"refinement step where LSQR's condition estimate is ≥ 1e3); unrefined: "
             f"without that step; plain: neither (scipy's iteration); exact LSQR: the "
             f"default algorithm on exact products.", "",
             "**float64: correct digits, median (worst)**", "",
             *_digit_table(f64, METHODS), "",
             "**float32: correct digits, median (worst)** (scipy's lsqr computes in "
             "float64 whatever its input, so it is left out)", "",
             *_digit_table([r for r in rows if r["dtype"] == "float32"],
                           tuple(m for m in METHODS if m != "scipy_lsqr")), "",
             "**float64: median iterations (model calls; scipy lsqr: products), wall "
             "seconds per problem (one run)**", "", *_cost_table(f64), "",
             targets_table(verdicts(rows))]
    return "\n".join(lines)


def judge_correction_max(rows: list[dict[str, Any]]) -> float:
    """The largest median last correction of the refined judge over ``rows`` (0 if none)."""
    return max((r["judge_correction"] for r in rows if r["judge_correction"] is not None),
               default=0.0)
