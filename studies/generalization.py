"""Generalization of the shipped shape-general operator, from its training shapes to 100×
beyond them.

The shipped solver (:func:`neuralnum.solvers.pretrained.pretrained`) was trained on
problems of ``n ≤ 64`` rows and ``d ≤ 16`` columns. This study measures it there and up to
100× beyond, in ``n``, in ``d`` and in both (tall, wide and square), in float32 and
float64:

* **One step.** The norm-wise relative error of the learned ``A v``, ``Aᵀ u`` and GD step
  ``g = Aᵀ(A x − b)`` — the operator as the solvers see it
  (:class:`~neuralnum.solvers.operators.AxialLearnedOperator`: equilibrated by powers of
  two and centred, mapped back exactly) — judged by the double-double judge
  (:mod:`neuralnum.problems.double_double`) on the problem as rounded to the dtype, beside
  the error of torch's own ``A @ v``, ``A.mT @ u`` and ``A.mT @ (A @ x − b)`` in that
  dtype, as the ratio learned / torch of the root-mean-square errors over a family's
  problems (so one problem where torch rounds luckily does not decide it). ``v``, ``u``,
  ``x`` are N(0, I); ``A``, ``b`` come from the problem families. Three forms of the same
  float64-trained weights, each collapsed to its canonical coefficients in float64 and
  rounded once to the problem's dtype: the network as trained (``learner.net``), its
  coefficients *snapped* (those below the learner's ``snap_rtol`` of their stage's
  largest set to 0), and the *deployed* form
  (:meth:`~neuralnum.solvers.axial_learner.AxialLearner.coefficients`: snapped and
  refitted), which the solver uses and the targets judge.
* **Solving.** Learned CG (``pretrained(dtype).solve(A, b, method="cg")``) on every
  registered family (:data:`neuralnum.problems.FAMILIES`) beside exact CG on the true
  operator and ``scipy.linalg.lstsq``: median correct digits against a judge — mpmath
  where ``n·d ≤ 1024``, elsewhere :func:`svd_judge`, a float64 SVD solution refined with
  double-double residuals (both on the problem as rounded to the dtype, widened exactly,
  with the cutoff ``rcond`` of that dtype). At the mpmath shapes both judges run and
  their agreement is recorded.

Targets, at the held-out shapes (1000, 100), (5000, 500), (100, 1000) and (300, 300):
the deployed learned products and GD step within 4× of torch's error (every family),
and learned CG within 0.5 digit of exact CG (medians, every family), in float32 and
float64. Stretch (``--stretch``: the quick run plus one problem per family there, and
``--full``): the same at (50000, 2000). Writes
``generalization.json`` and ``generalization_ratios.png``.
"""

from __future__ import annotations

import math
import statistics
import time
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch

from neuralnum.core.runtime import make_generator
from neuralnum.models.axial import AxialCoefficients, construct_axial_gd
from neuralnum.problems import FAMILIES, ProblemFamily, family_from_name
from neuralnum.problems.double_double import DD, dd_matvec, dd_step, error
from neuralnum.problems.reference import default_rcond, finite_digits, lstsq, stored_solution
from neuralnum.solvers.axial_learner import AxialLearner
from neuralnum.solvers.krylov import STATUS_NAMES, SolveInfo
from neuralnum.solvers.methods import solve
from neuralnum.solvers.operators import AxialLearnedOperator, ExactOperator, pow2_scale
from neuralnum.solvers.pretrained import pretrained
from studies import markdown as md
from studies.lsq_common import parse
from studies.study_io import figure_row, run_cli, save_figure, timed, write_report

NAME = "generalization"
TRAINING = (64, 16)  # the largest n and d the shipped operator was trained on
TARGET_SHAPES: tuple[tuple[int, int], ...] = ((1000, 100), (5000, 500), (100, 1000),
                                              (300, 300))
STRETCH = (50000, 2000)
#: The one-step sweep: training range, 10× beyond, the targets, 100× beyond.
SWEEP: tuple[tuple[int, int], ...] = (
    (20, 5), (8, 16), (64, 16),
    (640, 16), (64, 160), (160, 160), (640, 160),
    *TARGET_SHAPES,
    (6400, 16), (64, 1600), (1600, 1600), (6400, 1600))
PRODUCTS = ("Av", "ATu", "g")
LABELS = {"Av": "A v", "ATu": "Aᵀu", "g": "g = Aᵀ(A x − b)"}
FORMS = ("trained", "snapped", "deployed")
SOLVERS = ("learned", "exact", "scipy")
DTYPES = ("float64", "float32")
RATIO_LIMIT = 4.0
DIGIT_GAP = 0.5
MPMATH_MAX_ENTRIES = 1024  # n·d up to which mpmath judges (the training range's largest)
REFINEMENTS = 2


@dataclass(frozen=True)
class Settings:
    """What a mode runs: the one-step sweep (``product_shapes``, its families and problems
    per family), the solving grid (``cg_shapes``, every registered family, problems per
    cell) and the stretch shape's problems per cell (0: not run)."""

    product_shapes: tuple[tuple[int, int], ...]
    product_families: tuple[str, ...]
    product_problems: int
    cg_shapes: tuple[tuple[int, int], ...]
    cg_problems: int
    stretch_problems: int


MODES = {
    "quick": Settings(SWEEP, ("gaussian", "scaled", "heavy_tailed"), 3,
                      ((20, 5), (64, 16), *TARGET_SHAPES), 4, 0),
    "full": Settings(SWEEP, tuple(FAMILIES), 8, ((20, 5), (64, 16), *TARGET_SHAPES), 16, 2),
}
MODES["stretch"] = replace(MODES["quick"], stretch_problems=1)


def family(name: str, n: int, d: int) -> ProblemFamily:
    """The registered family ``name`` at shape ``(n, d)`` (``rank_deficient``: rank
    ``min(n, d) // 2``; ``overdetermined`` / ``underdetermined`` are Gaussian problems of
    that shape)."""
    fields = {"rank": max(1, min(n, d) // 2)} if name == "rank_deficient" else {}
    return family_from_name(name, n=n, d=d, **fields)


def _seed(seed: int, part: str, shape: tuple[int, int], name: str) -> int:
    """A seed of its own for every part of the study (``"step"``, ``"cg"``), shape and
    family: independent draws, reproducible."""
    return zlib.crc32(f"{seed}/{part}/{shape[0]}x{shape[1]}/{name}".encode())


# ---------------------------------------------------------------------- one step


def forms(learner: AxialLearner) -> dict[str, AxialCoefficients]:
    """The three forms of ``learner``'s weights (float64 canonical coefficients): as
    trained, snapped at ``learner.snap_rtol``, and deployed."""
    with torch.no_grad():
        trained = learner.net.coefficients().detached()
    return {"trained": trained, "snapped": trained.snapped(learner.snap_rtol),
            "deployed": learner.coefficients()}


def coefficient_tables(coefficients: dict[str, AxialCoefficients],
                       ) -> dict[str, dict[str, list]]:
    """The canonical coefficient tables (``rows``, ``cols``: ``(7, 4)`` each) of every
    form and of the exact construction, as lists."""
    tables = {"construction": construct_axial_gd().coefficients().detached(), **coefficients}
    return {name: {"rows": c.rows.tolist(), "cols": c.cols.tolist()}
            for name, c in tables.items()}


def coefficient_summary(tables: dict[str, dict[str, list]], form: str,
                        ) -> tuple[float, float, int]:
    """For ``form``: the largest distance of its coefficients from the construction's
    where the construction's are nonzero (the ±1 of the two products and of ``−b``), the
    largest other coefficient, and how many of its coefficients are nonzero."""
    exact, mine = (np.concatenate([np.array(tables[k]["rows"]), np.array(tables[k]["cols"])])
                   for k in ("construction", form))
    main = exact != 0
    return (float(np.abs(mine - exact)[main].max()), float(np.abs(mine)[~main].max()),
            int((mine != 0).sum()))


def torch_products(A: torch.Tensor, b: torch.Tensor, x: torch.Tensor, u: torch.Tensor,
                   v: torch.Tensor) -> dict[str, torch.Tensor]:
    """Torch's own ``A v: (B, n)``, ``Aᵀ u: (B, d)`` and ``Aᵀ(A x − b): (B, d)`` in the
    inputs' dtype."""
    r = A @ x.unsqueeze(2) - b.unsqueeze(2)
    return {"Av": (A @ v.unsqueeze(2)).squeeze(2), "ATu": (A.mT @ u.unsqueeze(2)).squeeze(2),
            "g": (A.mT @ r).squeeze(2)}


def learned_products(coefficients: AxialCoefficients, A: torch.Tensor, b: torch.Tensor,
                     x: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                     ) -> dict[str, torch.Tensor]:
    """The learned ``A v``, ``Aᵀ u`` and ``Aᵀ(A x − b)`` as a solver gets them from the
    operator (equilibrated coordinates), mapped back by the exact powers of two:
    ``A = A_eq·2^eA``, ``b = b_eq·2^eb``, so ``A v = (A_eq v)·2^eA`` and
    ``g = g_eq(x·2^(eA − eb))·2^(eA + eb)``."""
    op = AxialLearnedOperator(coefficients, A, b)
    idx = torch.arange(A.shape[0])
    eA, eb = op.eA.unsqueeze(1), op.eb.unsqueeze(1)
    return {"Av": pow2_scale(op.matvec(v, idx), eA),
            "ATu": pow2_scale(op.rmatvec(u, idx), eA),
            "g": pow2_scale(op.gradient(op.to_equilibrated(x), idx), eA + eb)}


def relative_errors(estimate: torch.Tensor, truth: DD) -> list[float]:
    """Per problem, ``‖ŷ − y‖ / ‖y‖`` against the double-double ``y``."""
    err = np.linalg.norm(error(estimate, truth), axis=-1)
    return (err / np.linalg.norm(truth[0], axis=-1)).tolist()


def product_cell(coefficients: dict[str, AxialCoefficients], name: str,
                 shape: tuple[int, int], problems: int, seed: int) -> list[dict[str, Any]]:
    """One row per dtype for ``problems`` problems of family ``name`` at ``shape``: the
    relative errors (per problem) of torch's products and of every form's."""
    gen = make_generator(_seed(seed, "step", shape, name))
    P = family(name, *shape).sample(problems, gen)
    n, d = shape
    x, u, v = (torch.randn(problems, k, generator=gen, dtype=torch.float64) for k in (d, n, d))
    rows = []
    for dtype in DTYPES:
        A, b, xx, uu, vv = (t.to(getattr(torch, dtype)) for t in (P.A, P.b, x, u, v))
        truth = {"Av": dd_matvec(A, vv), "ATu": dd_matvec(A.mT, uu), "g": dd_step(A, b, xx)[1]}
        with torch.no_grad():
            outputs = {"torch": torch_products(A, b, xx, uu, vv)}
            outputs |= {form: learned_products(c, A, b, xx, uu, vv)
                         for form, c in coefficients.items()}
        errors = {method: {p: relative_errors(y[p], truth[p]) for p in PRODUCTS}
                  for method, y in outputs.items()}
        rows.append({"n": n, "d": d, "family": name, "dtype": dtype, "errors": errors})
    return rows


def rms(values: Iterable[float]) -> float:
    """Root mean square of ``values``."""
    values = list(values)
    return math.sqrt(sum(v * v for v in values) / len(values))


def ratio(row: dict[str, Any], form: str, product: str) -> float:
    """A one-step row's learned error over torch's, each the root mean square over the
    row's problems (so one problem where torch happens to round luckily does not decide
    it); 1 where both are 0."""
    mine, ref = rms(row["errors"][form][product]), rms(row["errors"]["torch"][product])
    return mine / ref if ref > 0 else (1.0 if mine == 0 else math.inf)


def worst_ratio(rows: Iterable[dict[str, Any]], shape: tuple[int, int], dtype: str,
                form: str, product: str) -> float | None:
    """The largest :func:`ratio` over the families measured at ``shape`` in ``dtype``;
    ``None`` when that shape was not measured."""
    found = [ratio(row, form, product) for row in rows
             if (row["n"], row["d"]) == tuple(shape) and row["dtype"] == dtype]
    return max(found) if found else None


def torch_error(rows: Iterable[dict[str, Any]], shape: tuple[int, int], dtype: str,
                product: str) -> float | None:
    """Median relative error of torch's product over every problem at ``shape``."""
    found = [e for row in rows if (row["n"], row["d"]) == tuple(shape)
             and row["dtype"] == dtype for e in row["errors"]["torch"][product]]
    return statistics.median(found) if found else None


# ---------------------------------------------------------------------- solving


def svd_judge(A: torch.Tensor, b: torch.Tensor, refinements: int = REFINEMENTS,
              ) -> tuple[torch.Tensor, list[float], list[float]]:
    """Minimum-norm least-squares solutions of the problems ``A: (B, n, d)``, ``b: (B, n)``
    as stored (float32 widened exactly): a float64 SVD truncated at
    ``default_rcond(A.dtype, n, d)·σ_max`` (mpmath's cutoff), then ``refinements`` steps
    ``x ← x − V Σ⁻¹ Uᵀ (A x − b)`` with the residual in double-double, rounded once.

    Returns ``(x: (B, d) float64, the last correction's size relative to x — the judge's
    own error estimate, κ over the kept singular values)``."""
    a, rhs = A.double().numpy(), b.double().numpy()
    _, n, d = a.shape
    rcond = default_rcond(A.dtype, n, d)
    xs, corrections, kappas = [], [], []
    for ai, bi in zip(a, rhs, strict=True):
        U, s, Vt = scipy.linalg.svd(ai, full_matrices=False, check_finite=False)
        keep = s > rcond * s[0]
        U, s, Vt = U[:, keep], s[keep], Vt[keep]
        x = Vt.T @ ((U.T @ bi) / s)
        delta = np.zeros_like(x)
        for _ in range(refinements):
            residual = dd_matvec(ai, x, bi)[0]
            delta = Vt.T @ ((U.T @ residual) / s)
            x = x - delta
        norm = float(np.linalg.norm(x))
        corrections.append(float(np.linalg.norm(delta)) / norm if norm > 0 else 0.0)
        kappas.append(float(s[0] / s[-1]))
        xs.append(x)
    return torch.from_numpy(np.stack(xs)), corrections, kappas


def solution_digits(x: torch.Tensor, judge: torch.Tensor) -> list[float]:
    """Correct digits per problem of ``x: (B, d)`` against ``judge: (B, d)``, as a list
    (:func:`neuralnum.problems.reference.finite_digits`: 0 where ``x`` is not finite)."""
    return finite_digits(x, judge).tolist()


def _status(info: SolveInfo) -> list[str]:
    """How each problem's CG run ended: converged, stagnated or diverged."""
    return [STATUS_NAMES[int(s)] for s in info.status]


def _solutions(A: torch.Tensor, b: torch.Tensor, dtype: str,
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every solver's ``x`` and its record (iterations, seconds)."""
    learner = pretrained(dtype)
    x_learned, learned_s = timed(lambda: learner.solve(A, b, method="cg", warn=False))
    (x_exact, info), exact_s = timed(lambda: solve(ExactOperator(A, b), "cg", warn=False))
    x_scipy, scipy_s = timed(lambda: lstsq(A, b, method="scipy"))
    record = {"iterations": {"learned": learner.last_solve.iterations.tolist(),
                             "exact": info.iterations.tolist()},
              "status": {"learned": _status(learner.last_solve), "exact": _status(info)},
              "seconds": {"learned": learned_s, "exact": exact_s, "scipy": scipy_s}}
    return {"learned": x_learned, "exact": x_exact, "scipy": x_scipy}, record


def cg_cell(name: str, shape: tuple[int, int], problems: int, seed: int,
            ) -> list[dict[str, Any]]:
    """One row per dtype: digits of every solver on ``problems`` problems of family
    ``name`` at ``shape``, the judge used, and (at the mpmath shapes) how far the SVD
    judge agrees with mpmath."""
    n, d = shape
    P = family(name, n, d).sample(problems, make_generator(_seed(seed, "cg", shape, name)))
    rows = []
    for dtype in DTYPES:
        A, b = P.A.to(getattr(torch, dtype)), P.b.to(getattr(torch, dtype))
        start = time.perf_counter()
        x_svd, corrections, kappas = svd_judge(A, b)
        row: dict[str, Any] = {"n": n, "d": d, "family": name, "dtype": dtype,
                               "judge": "svd+dd", "judge_correction": corrections,
                               "kappa": kappas}
        judge = x_svd
        if n * d <= MPMATH_MAX_ENTRIES:
            judge = stored_solution(A, b)
            row |= {"judge": "mpmath", "judge_agreement": solution_digits(x_svd, judge)}
        row["judge_seconds"] = time.perf_counter() - start
        xs, record = _solutions(A, b, dtype)
        row |= record
        row["digits"] = {s: solution_digits(xs[s], judge) for s in SOLVERS}
        rows.append(row)
    return rows


def median_digits(row: dict[str, Any], solver: str) -> float:
    """The median over a solving row's problems of ``solver``'s digits."""
    return statistics.median(row["digits"][solver])


def cg_gap(row: dict[str, Any]) -> float:
    """How many digits learned CG's median falls short of exact CG's (negative: ahead)."""
    return median_digits(row, "exact") - median_digits(row, "learned")


# ---------------------------------------------------------------------- verdicts


def products_within(rows: list[dict[str, Any]], shapes: Iterable[tuple[int, int]],
                    dtypes: Iterable[str]) -> bool | None:
    """Whether the deployed form's worst ratio is ≤ :data:`RATIO_LIMIT` for every product
    at every shape in every dtype; ``None`` if one of them was not measured."""
    worst = [worst_ratio(rows, s, dt, "deployed", p)
             for s in shapes for dt in dtypes for p in PRODUCTS]
    if not worst or any(w is None for w in worst):
        return None
    return max(worst) <= RATIO_LIMIT


def cg_within(rows: list[dict[str, Any]], shapes: Iterable[tuple[int, int]],
              dtypes: Iterable[str]) -> bool | None:
    """Whether learned CG's median is within :data:`DIGIT_GAP` of exact CG's on every
    family at every shape in every dtype; ``None`` if a cell was not measured."""
    wanted = {(tuple(s), f, dt) for s in shapes for f in FAMILIES for dt in dtypes}
    cells = [r for r in rows if ((r["n"], r["d"]), r["family"], r["dtype"]) in wanted]
    if not wanted or {((r["n"], r["d"]), r["family"], r["dtype"]) for r in cells} != wanted:
        return None
    return all(cg_gap(r) <= DIGIT_GAP for r in cells)


def _named(shapes: Iterable[tuple[int, int]]) -> str:
    return ", ".join(f"({n}, {d})" for n, d in shapes)


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    """The targets that were measured: per dtype, the deployed learned products and GD
    step within 4× of torch's error (every family) and learned CG within 0.5 digit of
    exact CG (medians, every family) at :data:`TARGET_SHAPES`; the same at
    :data:`STRETCH` (both dtypes together) when it ran."""
    products, solving = result["products"], result["solving"]
    targets = _named(TARGET_SHAPES)
    checks: dict[str, bool | None] = {}
    for dtype in DTYPES:
        checks[f"{dtype}: deployed learned A v, Aᵀu and GD step within 4× of torch's error "
               f"at {targets} (every family)"] = products_within(products, TARGET_SHAPES,
                                                                  (dtype,))
        checks[f"{dtype}: learned CG within 0.5 digit of exact CG at {targets} (median "
               f"digits, every family)"] = cg_within(solving, TARGET_SHAPES, (dtype,))
    checks[f"stretch {_named([STRETCH])}: deployed learned products and GD step within 4× "
           f"of torch's error (float32 and float64)"] = products_within(products, [STRETCH],
                                                                        DTYPES)
    checks[f"stretch {_named([STRETCH])}: learned CG within 0.5 digit of exact CG (float32 "
           f"and float64, every family)"] = cg_within(solving, [STRETCH], DTYPES)
    return {k: v for k, v in checks.items() if v is not None}


def headline(result: dict[str, Any]) -> str:
    """The results-index line: the deployed form's worst ratio to torch's error per dtype
    and learned CG's largest shortfall behind exact CG, at the target shapes and (when it
    ran) the stretch shape, and the targets met."""
    line = (f"at the held-out shapes {_named(TARGET_SHAPES)}: learned A v, Aᵀu, GD step "
            f"{_worst(result, TARGET_SHAPES)}")
    if any((r["n"], r["d"]) == STRETCH for r in result["solving"]):
        line += f"; at {_named([STRETCH])}: {_worst(result, [STRETCH])}"
    return f"{line}; {md.targets_met(verdicts(result))}"


def _worst(result: dict[str, Any], shapes: list[tuple[int, int]]) -> str:
    """The deployed form's worst ratio to torch's error per dtype and learned CG's largest
    shortfall behind exact CG at ``shapes``, as headline words."""
    worst = {}
    for dt in DTYPES:
        found = [worst_ratio(result["products"], s, dt, "deployed", p)
                 for s in shapes for p in PRODUCTS]
        worst[dt] = max((r for r in found if r is not None), default=None)
    gaps = [cg_gap(r) for r in result["solving"] if (r["n"], r["d"]) in shapes]
    return (f"≤ {md.times(worst['float64'])} (float64) / {md.times(worst['float32'])} "
            f"(float32) torch's error, learned CG ≤ {md.fixed(max(gaps, default=None))} "
            f"digit behind exact CG")


# ---------------------------------------------------------------------- tables


def _shapes(rows: Iterable[dict[str, Any]]) -> list[tuple[int, int]]:
    """The shapes of ``rows`` in order of first appearance."""
    return list(dict.fromkeys((r["n"], r["d"]) for r in rows))


def beyond(shape: tuple[int, int]) -> str:
    """How far ``shape`` lies beyond the training range, per axis."""
    n, d = shape
    if n <= TRAINING[0] and d <= TRAINING[1]:
        return "in range"
    return f"n {max(n / TRAINING[0], 1):.3g}×, d {max(d / TRAINING[1], 1):.3g}×"


def _products_table(rows: list[dict[str, Any]], dtype: str) -> list[str]:
    header = ["shape (n, d)", "beyond training"]
    for product in PRODUCTS:
        header += [f"torch {LABELS[product]}", "learned / torch"]
    body = []
    for shape in _shapes(rows):
        cells = [f"({shape[0]}, {shape[1]})", beyond(shape)]
        for product in PRODUCTS:
            cells.append(md.sci(torch_error(rows, shape, dtype, product), 1))
            cells.append(" / ".join(md.fixed(worst_ratio(rows, shape, dtype, f, product))
                                    for f in FORMS))
        body.append(cells)
    return [f"**{dtype}: norm-wise relative error of torch's product (median over problems) "
            f"and the learned one's over it (RMS over a family's problems, worst family), "
            f"trained / snapped / deployed**",
            "", md.table(header, body)]


def _solving_table(rows: list[dict[str, Any]], dtype: str) -> list[str]:
    mine = [r for r in rows if r["dtype"] == dtype]
    shapes = _shapes(mine)
    judges = {(r["n"], r["d"]): r["judge"] for r in mine}
    header = ["family", *(f"({n}, {d}) {judges[(n, d)]}" for n, d in shapes)]
    body = []
    for name in FAMILIES:
        found = {(r["n"], r["d"]): r for r in mine if r["family"] == name}
        body.append([name, *(" / ".join(md.fixed(median_digits(found[s], k), 1)
                                        for k in SOLVERS) if s in found else "—"
                             for s in shapes)])
    return [f"**{dtype}: correct digits, median over problems: learned CG / exact CG / "
            f"scipy (column: shape and judge)**", "", md.table(header, body)]


def _coefficients_table(tables: dict[str, dict[str, list]]) -> list[str]:
    body = []
    for form in FORMS:
        main, other, nonzero = coefficient_summary(tables, form)
        body.append([form, md.sci(main, 1), md.sci(other, 1), str(nonzero)])
    exact = coefficient_summary(tables, "construction")[2]
    return ["**The three forms' canonical coefficients (both stages) against the exact "
            f"construction's ({exact} nonzero, each ±1)**", "",
            md.table(["form", "largest distance of the construction's terms from ±1",
                      "largest other coefficient", "nonzero coefficients"], body)]


def _stops_table(rows: list[dict[str, Any]], dtype: str) -> list[str]:
    mine = [r for r in rows if r["dtype"] == dtype]
    shapes = _shapes(mine)
    body = []
    for name in FAMILIES:
        found = {(r["n"], r["d"]): r for r in mine if r["family"] == name}
        cells = [name]
        for shape in shapes:
            row = found.get(shape)
            if row is None:
                cells.append("—")
                continue
            runs = [f"{row['status'][s].count('converged')}/{len(row['status'][s])}"
                    for s in ("learned", "exact")]
            cells.append(f"{statistics.median(row['kappa']):.3g} · " + " · ".join(runs))
        body.append(cells)
    return [f"**{dtype}: κ(A) (median) · learned CG runs converged · exact CG runs "
            f"converged (the others stopped on stagnation or divergence)**", "",
            md.table(["family", *(f"({n}, {d})" for n, d in shapes)], body)]


def _judge_line(rows: list[dict[str, Any]]) -> str:
    agree = [(a, r["family"], r["dtype"]) for r in rows for a in r.get("judge_agreement", [])]
    correction = max(c for r in rows for c in r["judge_correction"])
    check = ""
    if agree:
        digits_, name, dtype = min(agree)
        others = [a for a, f, _ in agree if f != name]
        rest = f", ≥ {min(others):.1f} on the other families" if others else ""
        check = (f" Where both ran, svd+dd agrees with mpmath to ≥ {digits_:.1f} digits "
                 f"(worst problem: {name}, {dtype}{rest}).")
    return (f"Judges: mpmath (50 digits) where n·d ≤ {MPMATH_MAX_ENTRIES}; elsewhere "
            f"svd+dd — a float64 SVD solution refined {REFINEMENTS}× with double-double "
            f"residuals — whose last correction is ≤ {md.sci(correction, 1)} of ‖x‖ "
            f"(worst problem).{check} Both solve the problem as rounded to the dtype, with "
            f"that dtype's cutoff rcond = eps·max(n, d).")


def tables(result: dict[str, Any]) -> str:
    """Results block: the one-step ratios per dtype, the solving digits per dtype, the
    judges, whether the stretch shape ran, and the targets."""
    settings = result["settings"]
    lines = [md.command(result, f"the shipped operator (trained on n ≤ {TRAINING[0]}, d ≤ "
                                f"{TRAINING[1]}); one step: {settings['product_problems']} "
                                f"problems per family of "
                                f"{', '.join(settings['product_families'])}; solving: "
                                f"{settings['cg_problems']} problems per family and shape"),
             ""]
    for dtype in DTYPES:
        lines += [*_products_table(result["products"], dtype), ""]
    lines += [*_coefficients_table(result["coefficients"]), ""]
    for dtype in DTYPES:
        lines += [*_solving_table(result["solving"], dtype), ""]
    lines += [*_stops_table(result["solving"], "float64"), ""]
    lines += [_judge_line(result["solving"]), ""]
    stretch = any((r["n"], r["d"]) == STRETCH for r in result["products"])
    per_cell = settings["stretch_problems"]
    lines += [f"Stretch {_named([STRETCH])}: "
              + (f"run ({per_cell} problem{'' if per_cell == 1 else 's'} per family and "
                 f"dtype)." if stretch else "not run (`--stretch` or `--full`)."), ""]
    lines += [md.targets_table(verdicts(result))]
    return "\n".join(lines)


# ---------------------------------------------------------------------- figure, main


def plot_ratios(rows: list[dict[str, Any]], path: Path) -> None:
    """Worst ratio learned / torch vs ``n·d`` per product (panels), form (colour) and
    dtype (filled circles float64, open squares float32), one marker per shape."""
    fig, axes = figure_row(len(PRODUCTS), (13, 3.8))
    shapes = _shapes(rows)
    sizes = [n * d for n, d in shapes]
    for ax, product in zip(axes, PRODUCTS, strict=True):
        for color, form in zip(("C3", "C1", "C0"), FORMS, strict=True):
            for marker, fill, dtype in (("o", color, "float64"), ("s", "none", "float32")):
                ax.scatter(sizes, [worst_ratio(rows, s, dtype, form, product) for s in shapes],
                           s=22, marker=marker, facecolors=fill, edgecolors=color,
                           label=f"{form} {dtype}")
        ax.axhline(RATIO_LIMIT, color="k", linestyle=":", label="target 4×")
        ax.axvspan(min(sizes), TRAINING[0] * TRAINING[1], color="0.9", zorder=0)
        ax.set(xscale="log", yscale="log", xlabel="n·d", title=LABELS[product],
               ylabel="learned / torch error (worst family)")
    axes[0].legend(fontsize=7)
    save_figure(fig, path)


def run(settings: Settings, seed: int) -> dict[str, Any]:
    """The one-step sweep and the solving grid of ``settings`` (with the stretch shape
    when ``settings.stretch_problems``)."""
    learner = pretrained("float64")
    coefficients = forms(learner)
    stretch = [STRETCH] if settings.stretch_problems else []
    plan = [(s, settings.product_problems) for s in settings.product_shapes]
    plan += [(s, settings.stretch_problems) for s in stretch]
    products: list[dict[str, Any]] = []
    for shape, problems in plan:
        for name in settings.product_families:
            products += product_cell(coefficients, name, shape, problems, seed)
        print(f"one step {shape}: worst deployed ratio "
              + ", ".join(f"{dt} {p} {worst_ratio(products, shape, dt, 'deployed', p):.2f}"
                          for dt in DTYPES for p in PRODUCTS), flush=True)
    solving: list[dict[str, Any]] = []
    plan = [(s, settings.cg_problems) for s in settings.cg_shapes]
    plan += [(s, settings.stretch_problems) for s in stretch]
    for shape, problems in plan:
        for name in FAMILIES:
            for row in cg_cell(name, shape, problems, seed):
                solving.append(row)
                print(f"CG {shape} {name} {row['dtype']} ({row['judge']}): "
                      + " / ".join(f"{median_digits(row, s):.2f}" for s in SOLVERS),
                      flush=True)
    return {"snap_rtol": learner.snap_rtol, "provenance": learner.provenance,
            "coefficients": coefficient_tables(coefficients), "products": products,
            "solving": solving}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(NAME, __doc__, argv, modes={
        "stretch": "the quick run plus the stretch shape, one problem per family (about 35 "
                   "minutes on 2 CPU cores, 4 GB)"})
    mode = "full" if args.full else "stretch" if args.stretch else "quick"
    settings = MODES[mode]
    start = time.monotonic()
    result = {"command": md.study_command(NAME, argv), "mode": mode, "seed": args.seed,
              "settings": asdict(settings), **run(settings, args.seed)}
    result["seconds"] = time.monotonic() - start
    result["verdicts"] = verdicts(result)
    print(tables(result))
    plot_ratios(result["products"], args.out / f"{NAME}_ratios.png")
    write_report(args.out, NAME, result)
    return result


if __name__ == "__main__":
    run_cli(main)
