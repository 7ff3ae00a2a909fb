"""Learned operator-only solvers against scipy.linalg.lstsq on every problem family.

Trains the demo's learner (linear attention from a random init, 6000 steps of the default
recipe on the spectrum family, κ = 5, n = 20, d = 5: :func:`studies.lsq_common.train`);
its float32 twin carries the same weights rounded to float32. Then for every family of
:data:`neuralnum.problems.FAMILIES` at d = 5 and two row counts the model accepts (n = 20
and 10; the under-determined family at n = 4 and 2), in float64 and float32, side by
side on the same held-out problems (64 per row in ``--quick``, a few minutes on 2 cores,
enough that a row's median on ``ill_conditioned`` does not move by half a digit between
seeds; 256 in ``--full``): ``scipy.linalg.lstsq`` (gelsd), learned CG, CG on
the *construction* (the same architecture with the exact GD weights), learned Chebyshev,
learned GD (operator-estimated step), and exact CG / GD (the same algorithms on the true
operator ``Aᵀ(Ax − b)/n``). Every solution is judged against the mpmath minimum-norm
solution of the stored (rounded) problem. Columns: median and worst digits, model calls
(median / max), wall time per problem batch, and the normal-equations bound ``κ(A)²·u``
(as digits), which any method that sees ``A`` only through ``AᵀA`` cannot beat. So a gap
between learned and construction CG is the learned weights' (the solvers evaluate the
model in its canonical gauge, :mod:`neuralnum.models.canonical`, so what remains is
training's), one between construction and exact CG is the architecture's
arithmetic (none since the model's increment is read without rounding it at the
iterate's scale: the construction forms each residual ``a_sᵀx − b_s`` as one score, like
``Aᵀ(Ax − b)``), and one between exact CG and scipy is the algorithm's. Writes
``vs_scipy.json`` and ``vs_scipy_digits_vs_calls.png`` (digits vs model calls per family,
float64, n = 20).

The second part (``result["shapes"]``, :mod:`studies.lsq_shapes`) takes the shipped
shape-general solver (:func:`neuralnum.solvers.pretrained.pretrained`) across shapes: every
family at its small shape and at (1000, 100), (5000, 500), (100, 1000), (300, 300), its
LSQR (reorthogonalised, and plain), CGLS and CG against ``scipy.sparse.linalg.lsqr`` with
the same tolerances and ``scipy.linalg.lstsq``: digits (mpmath judges at n·d ≤ 400,
gelsd refined on double-double residuals above), iterations, model calls, wall-clock. In
``--quick`` numpy's BLAS runs one thread, as torch does.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from typing import Any

import torch

import neuralnum
from neuralnum.core.figures import figure_grid, save_figure
from neuralnum.core.runtime import make_generator
from neuralnum.problems import reference
from neuralnum.problems.families import FAMILIES, family_from_name
from neuralnum.solvers.krylov import solve
from neuralnum.solvers.learner import Learner
from neuralnum.solvers.operators import ExactOperator, LearnedOperator
from neuralnum.solvers.pretrained import pretrained
from neuralnum.training.recipe import Recipe
from studies import lsq_shapes
from studies.lsq_common import construction_twin, parse, train
from studies.markdown import targets_met, targets_table
from studies.study_io import (
    blas_threads,
    format_table,
    one_blas_thread,
    run_cli,
    timed,
    write_report,
)

NAME = "vs_scipy"
SOLVERS = ("scipy", "learned_cg", "construction_cg", "learned_chebyshev", "learned_gd",
           "exact_cg", "exact_gd")
DTYPES = {"float64": torch.float64, "float32": torch.float32}
ROWS_N = {"underdetermined": (4, 2)}  # n < d = 5; every other family: n = 20 and 10
KAPPA_SMALL, KAPPA_MID = 10.0, 100.0
DIGIT_GAP = 0.5
CG_ITERS = 15
MONOTONE_SLACK = 0.1
BUDGETS = (2, 4, 8, 16, 32, 200)


def _learners(seed: int, full: bool) -> tuple[dict[str, Learner], dict[str, Any]]:
    """The demo's learner (float64) and its float32 twin (same weights, rounded)."""
    family = family_from_name("spectrum")
    learner, records, seconds = train("linear_attention", Recipe(), family,
                                      steps=20_000 if full else 6000, seed=seed,
                                      eval_batch=128)
    twin = Learner("linear_attention", "gd", Recipe(dtype="float32"), n=family.n,
                   d=family.d, seed=seed)
    twin.model.load_state_dict(learner.model.state_dict())
    return {"float64": learner, "float32": twin}, {"seconds": seconds, "last": records[-1]}


def _scipy(P: Any) -> torch.Tensor:
    return torch.stack([torch.as_tensor(neuralnum.lstsq(P.A[i].numpy(), P.b[i].numpy()).x)
                        for i in range(P.batch)])


def _run_solvers(learner: Learner, twin: Learner, P: Any) -> dict[str, dict[str, Any]]:
    """Every solver on the batch ``P``: ``{solver: {x, calls, iterations, seconds}}``
    (``twin``: the learner's architecture with the exact construction's weights)."""
    out: dict[str, dict[str, Any]] = {}
    x, seconds = timed(lambda: _scipy(P))
    out["scipy"] = {"x": x, "seconds": seconds}
    operators = {"learned": lambda: LearnedOperator(learner, P.A, P.b),
                 "construction": lambda: LearnedOperator(twin, P.A, P.b),
                 "exact": lambda: ExactOperator(P.A, P.b)}
    for name in SOLVERS[1:]:  # "<operator>_<method>"
        kind, method = name.split("_")
        (x, info), seconds = timed(lambda kind=kind, method=method: solve(
            operators[kind](), method, warn=False))
        out[name] = {"x": x, "info": info, "seconds": seconds}
    return out


def _row(family: str, n: int, dtype: str, P: Any, runs: dict[str, dict[str, Any]],
         x_judge: torch.Tensor) -> dict[str, Any]:
    u = torch.finfo(P.A.dtype).eps / 2
    kappa = float(reference.condition_number(P.A).median())
    bound = min(max(-math.log10(kappa**2 * u), 0.0), -math.log10(u))
    row: dict[str, Any] = {"family": family, "n": n, "dtype": dtype, "kappa": kappa,
                           "kappa2_u": kappa**2 * u, "bound_digits": bound}
    for name, run in runs.items():
        dg = reference.finite_digits(run["x"], x_judge)
        row[f"{name}_digits"] = float(dg.median())
        row[f"{name}_worst"] = float(dg.min())
        row[f"{name}_seconds"] = run["seconds"]
        if "info" in run:
            s = run["info"].summary()
            row[f"{name}_calls"] = s["model_calls_median"]
            row[f"{name}_calls_max"] = s["model_calls_max"]
            row[f"{name}_iterations"] = s["iterations_median"]
            row[f"{name}_converged"] = s["converged"] / P.batch
    return row


def _longer(learner: Learner, P: Any, x_judge: torch.Tensor) -> dict[str, float]:
    """Median digits of learned CG (default stopping rule) under growing iteration
    budgets: more budget must never give fewer digits."""
    out = {}
    for budget in BUDGETS:
        x, _ = solve(LearnedOperator(learner, P.A, P.b), "cg", max_iters=budget, warn=False)
        out[str(budget)] = float(reference.finite_digits(x, x_judge).median())
    return out


def _curves(learner: Learner, P: Any, x_judge: torch.Tensor) -> dict[str, dict[str, list]]:
    """Digits of every iterate vs model calls (learned CG / Chebyshev / GD, exact CG)."""
    curves = {}
    for name, make, method, iters in (
            ("learned_cg", lambda: LearnedOperator(learner, P.A, P.b), "cg", 40),
            ("exact_cg", lambda: ExactOperator(P.A, P.b), "cg", 40),
            ("learned_chebyshev", lambda: LearnedOperator(learner, P.A, P.b), "chebyshev",
             240),
            ("learned_gd", lambda: LearnedOperator(learner, P.A, P.b), "gd", 240)):
        _, info = solve(make(), method, iters=iters, record=True)
        per = 2 if method == "cg" else 1
        setup = float((info.model_calls - per * info.iterations).double().median())
        step = max(1, len(info.history) // 40)
        ks = list(range(0, len(info.history), step))
        curves[name] = {"calls": [setup + per * k for k in ks],
                        "digits": [float(reference.finite_digits(info.history[k], x_judge).median())
                                   for k in ks]}
    return curves


def run(learners: dict[str, Learner], batch: int, seed: int) -> dict[str, Any]:
    """The comparison grid: rows per (family, n, dtype), curves and longer-run digits."""
    rows, longer, curves = [], {}, {}
    twins = {dtype: construction_twin(learner) for dtype, learner in learners.items()}
    for family in FAMILIES:
        for n in ROWS_N.get(family, (20, 10)):
            fam = family_from_name(family, n=n, d=5)
            for dtype, torch_dtype in DTYPES.items():
                P = fam.sample(batch, make_generator(seed + 9000 + n), torch_dtype)
                x_judge = reference.stored_solution(P.A, P.b)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    runs = _run_solvers(learners[dtype], twins[dtype], P)
                    row = _row(family, n, dtype, P, runs, x_judge)
                    rows.append(row)
                    if dtype == "float64" and n == ROWS_N.get(family, (20,))[0]:
                        longer[family] = _longer(learners[dtype], P, x_judge)
                        curves[family] = _curves(learners[dtype], P, x_judge)
                print(format_table([row], ["family", "n", "dtype", "kappa", "bound_digits",
                                           *(f"{s}_digits" for s in SOLVERS),
                                           "learned_cg_calls"]).splitlines()[-1], flush=True)
    return {"rows": rows, "longer": longer, "curves": curves}


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    """Every target: the token learner's (:func:`token_verdicts`) and the shape-general
    solver's (:func:`studies.lsq_shapes.verdicts`)."""
    return {**token_verdicts(result), **lsq_shapes.verdicts(result["shapes"]["rows"])}


def token_verdicts(result: dict[str, Any]) -> dict[str, bool]:
    """The token learner's targets (learned CG as precise as exact CG everywhere and as
    scipy where κ ≤ 10, fast where κ ≤ 100, monotone in iterations, float32 too), from
    the rows of :func:`run`."""
    rows = result["rows"]
    f64 = [r for r in rows if r["dtype"] == "float64"]
    f32 = [r for r in rows if r["dtype"] == "float32"]
    return {
        "float64 learned CG within 0.5 digit of exact CG on every family":
            all(r["exact_cg_digits"] - r["learned_cg_digits"] <= DIGIT_GAP for r in f64),
        "float64 learned CG within 0.5 digit of scipy where κ ≤ 10":
            all(r["scipy_digits"] - r["learned_cg_digits"] <= DIGIT_GAP
                for r in f64 if r["kappa"] <= KAPPA_SMALL),
        "float64 learned CG ≤ 15 iterations (median) where κ ≤ 100":
            all(r["learned_cg_iterations"] <= CG_ITERS
                for r in f64 if r["kappa"] <= KAPPA_MID),
        "learned CG never loses digits when iterated longer":
            all(later >= earlier - MONOTONE_SLACK
                for v in result["longer"].values()
                for earlier, later in itertools.pairwise(v.values())),
        "float32 learned CG within 0.5 digit of exact float32 CG where κ ≤ 100":
            all(r["exact_cg_digits"] - r["learned_cg_digits"] <= DIGIT_GAP
                for r in f32 if r["kappa"] <= KAPPA_MID),
    }


def _cell(row: dict[str, Any], solver: str) -> str:
    return f"{row[f'{solver}_digits']:.1f} ({row[f'{solver}_worst']:.1f})"


def _span(rows: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in rows]
    return f"{min(values):.1f}–{max(values):.1f}"


def headline(result: dict[str, Any]) -> str:
    """The results-index line: float64 median digits of learned CG and of scipy over the
    rows with κ ≤ 10; of the shape-general learned LSQR, scipy lsqr and scipy lstsq at
    the big shapes; and the targets met."""
    rows = [r for r in result["rows"] if r["dtype"] == "float64" and r["kappa"] <= KAPPA_SMALL]
    big = [r for r in result["shapes"]["rows"]
           if r["dtype"] == "float64" and lsq_shapes.is_big(r)]
    return (f"learned CG {_span(rows, 'learned_cg_digits')} median digits vs scipy "
            f"{_span(rows, 'scipy_digits')} where κ ≤ {KAPPA_SMALL:g}; shape-general "
            f"learned LSQR {_span(big, 'learned_lsqr_digits')} vs scipy lsqr "
            f"{_span(big, 'scipy_lsqr_digits')} and lstsq {_span(big, 'scipy_lstsq_digits')}"
            f" at 1000 × 100 … 5000 × 500 (float64); {targets_met(verdicts(result))}")


def tables(result: dict[str, Any]) -> str:
    """Results block: digits per family and dtype, model calls and time, verdicts."""
    lines = [f"`python3 -m studies.vs_scipy --{result['mode']}` — {result['problems']} "
             f"problems per row, judged by mpmath; learner: {result['learner']}."]
    for dtype in DTYPES:
        rows = [r for r in result["rows"] if r["dtype"] == dtype]
        lines += ["", f"**{dtype}: correct digits, median (worst) of {result['problems']}**",
                  "", "| family | n | κ(A) (median) | κ²·u bound | " + " | ".join(SOLVERS) + " |",
                  "|---|---:|---:|---:|" + "---:|" * len(SOLVERS)]
        for r in rows:
            lines.append(f"| {r['family']} | {r['n']} | {r['kappa']:.3g} | "
                         f"{r['bound_digits']:.1f} | "
                         + " | ".join(_cell(r, s) for s in SOLVERS) + " |")
    learned = [s for s in SOLVERS if s != "scipy"]
    lines += ["", f"**float64: model calls, median / max of {result['problems']}; wall "
                  "seconds per batch (single run)**", "",
              "| family | n | " + " | ".join(learned) + " | scipy s | learned_cg s |",
              "|---|---:|" + "---:|" * (len(learned) + 2)]
    for r in (r for r in result["rows"] if r["dtype"] == "float64"):
        calls = " | ".join(f"{r[f'{s}_calls']:.0f} / {r[f'{s}_calls_max']}" for s in learned)
        lines.append(f"| {r['family']} | {r['n']} | {calls} | {r['scipy_seconds']:.3f} | "
                     f"{r['learned_cg_seconds']:.3f} |")
    lines += ["", targets_table(token_verdicts(result))]
    return "\n".join([*lines, "", lsq_shapes.tables(result["shapes"])])


def _figure(result: dict[str, Any], path: Any) -> None:
    families = list(result["curves"])
    rows = math.ceil(len(families) / 3)
    fig, axes = figure_grid(rows, 3, (12, 3.3 * rows))
    scipy_digits = {r["family"]: r["scipy_digits"] for r in result["rows"]
                    if r["dtype"] == "float64" and r["n"] == ROWS_N.get(r["family"], (20,))[0]}
    for ax, family in zip(axes.flat, families, strict=False):
        for name, curve in result["curves"][family].items():
            ax.plot(curve["calls"], curve["digits"], label=name,
                    linestyle="--" if name.startswith("exact") else "-")
        ax.axhline(scipy_digits[family], color="k", linestyle=":", label="scipy")
        ax.set_xscale("log")
        ax.set(title=family, xlabel="model calls", ylabel="median digits", ylim=(0, 16.5))
    axes.flat[0].legend(fontsize=7)
    for ax in list(axes.flat)[len(families):]:
        ax.axis("off")
    save_figure(fig, path)


def run_shapes(mode: str, seed: int) -> dict[str, Any]:
    """The shape-general part (:func:`studies.lsq_shapes.run_grid`) with the shipped
    solver in both dtypes; numpy's BLAS on one thread unless ``mode`` is ``full``."""
    learners = {dtype: pretrained(dtype) for dtype in DTYPES}
    columns = ["family", "n", "d", "dtype", "kappa", "learned_lsqr_digits",
               "scipy_lsqr_digits", "scipy_lstsq_digits", "learned_lsqr_iterations",
               "scipy_lsqr_iterations"]

    def log(row: dict[str, Any]) -> None:
        print(format_table([row], columns).splitlines()[-1], flush=True)

    with contextlib.nullcontext() if mode == "full" else one_blas_thread():
        threads = blas_threads()
        rows = lsq_shapes.run_grid(learners, mode, seed, log)
    counts = {k if k == lsq_shapes.SMALL else f"{k[0]} × {k[1]}": v
              for k, v in lsq_shapes.PROBLEMS[mode].items()}
    return {"weights": "neuralnum/pretrained/axial.pt", "problems": counts,
            "blas_threads": threads, "rows": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(NAME, __doc__, argv)
    batch = 256 if args.full else 64
    mode = "full" if args.full else "quick"
    learners, training = _learners(args.seed, args.full)
    grid = run(learners, batch, args.seed)
    result = {"mode": mode, "problems": batch,
              "learner": f"linear attention, demo recipe, {training['seconds']:.0f} s "
                         f"training, one-step MSE {training['last']['mse']:.2e}",
              "training": training, **grid, "shapes": run_shapes(mode, args.seed)}
    result["verdicts"] = verdicts(result)
    print(tables(result))
    _figure(result, args.out / f"{NAME}_digits_vs_calls.png")
    write_report(args.out, NAME, result)
    return result


if __name__ == "__main__":
    run_cli(main)
