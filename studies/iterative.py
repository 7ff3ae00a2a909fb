"""Error vs iteration: learned CG / GD on the learned operator, exact CG / GD, end-to-end.

Trains the two solvers of :func:`studies.lsq_common.train_solvers` on the spectrum family
(κ = 5, n = 20, d = 5), then on held-out problems records the MSE against the mpmath
minimum-norm solution of every iterate of CG and of GD (step from Lanczos through the
operator) — each run on the learned operator and on the true ``Aᵀ(Ax − b)/n``, the same
algorithm (:mod:`neuralnum.solvers.krylov`; no SVD anywhere) — and the end-to-end
Transformer's one-shot prediction. "Last iterate" is the iterate after the final
iteration, no minimum taken; "solve" is :meth:`~neuralnum.solvers.learner.Learner.solve` with its
stopping rule (the best iterate by the learned residual). Targets (the paper's claim,
checked on the operator-only solvers): learned CG ≥ 1e5× lower MSE than the end-to-end
Transformer; learned CG / GD within 10× of exact CG / GD at the last iterate. Writes
``iterative.json`` and ``iterative_error_vs_iteration.png``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from neuralnum.core.runtime import make_generator
from neuralnum.problems import reference
from neuralnum.problems.families import family_from_name
from neuralnum.solvers.krylov import solve
from neuralnum.solvers.operators import ExactOperator, LearnedOperator
from studies.lsq_common import PAPER, parse, train_solvers, training_summary
from studies.markdown import sci, targets_met, targets_table
from studies.study_io import figure, format_table, run_cli, save_figure, write_report

NAME = "iterative"
E2E_FACTOR = 1e5
EXACT_FACTOR = 10.0
CURVES = ("learned_cg", "exact_cg", "learned_gd", "exact_gd")


def mse_or_inf(x: torch.Tensor, x_ref: torch.Tensor) -> float:
    """Mean MSE over the batch; ``inf`` if any row is not finite."""
    return float(reference.mse(x, x_ref).mean()) if torch.isfinite(x).all() else math.inf


def trajectories(learner: Any, A: torch.Tensor, b: torch.Tensor, x_ref: torch.Tensor,
                 iters: dict[str, int]) -> dict[str, list[float]]:
    """MSE of every iterate ``x_0 … x_k`` of each curve in :data:`CURVES`."""
    out = {}
    for name in CURVES:
        kind, method = name.split("_")
        op = LearnedOperator(learner, A, b) if kind == "learned" else ExactOperator(A, b)
        _, info = solve(op, method, iters=iters[method], record=True)
        out[name] = [mse_or_inf(x, x_ref) for x in info.history]
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else (1.0 if a == 0 else math.inf)


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    """Targets from ``result["final"]`` (last iterates, solve results, end-to-end)."""
    f = result["final"]
    return {
        "learned CG (solve) >= 1e5x lower MSE than the end-to-end Transformer":
            f["end_to_end"] >= E2E_FACTOR * f["learned_cg_solve"],
        "learned CG within 10x of exact CG at the last iterate":
            f["learned_cg"] <= EXACT_FACTOR * max(f["exact_cg"], 1e-300),
        "learned GD within 10x of exact GD at the last iterate":
            f["learned_gd"] <= EXACT_FACTOR * max(f["exact_gd"], 1e-300),
    }


def headline(result: dict[str, Any]) -> str:
    """The results-index line: the last iterates' MSE of learned and exact CG beside the
    end-to-end Transformer's."""
    f = result["final"]
    return (f"learned CG MSE {sci(f['learned_cg'])} vs exact CG {sci(f['exact_cg'])} vs "
            f"end-to-end Transformer {sci(f['end_to_end'])} ({result['dtype']}); "
            f"{targets_met(verdicts(result))}")


def tables(result: dict[str, Any]) -> str:
    """Results block: MSE vs iteration, final MSEs, verdicts."""
    n = result["problems"]
    lines = [f"`python3 -m studies.iterative --{result['mode']}` — spectrum family (κ = 5, "
             f"n = 20, d = 5), {result['dtype']}, {n} held-out problems, MSE vs mpmath "
             f"(mean of {n}).", "",
             "| iteration | " + " | ".join(CURVES) + " |", "|---:|" + "---:|" * len(CURVES)]
    for row in result["rows"]:
        lines.append(f"| {row['iteration']} | "
                     + " | ".join(f"{row[c]:.2e}" if row[c] is not None else "–"
                                  for c in CURVES) + " |")
    lines += ["", f"| solver | MSE vs mpmath (mean of {n}) |", "|---|---:|"]
    lines += [f"| {k} | {v:.2e} |" for k, v in result["final"].items()]
    lines += ["", targets_table(result["verdicts"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse(NAME, __doc__, argv)
    dtype_name = "float64"
    family = family_from_name("spectrum")
    iters, batch = ({"cg": 60, "gd": 600}, 256) if args.full else ({"cg": 40, "gd": 400}, 32)
    solvers = train_solvers(args.full, dtype_name, family, args.seed)
    learner = solvers["learned"]["learner"]
    P = family.sample(batch, make_generator(args.seed + 777), learner.dtype)
    x_judge = reference.lstsq(P.A.double(), P.b.double(), method="mpmath").to(P.A.dtype)
    curves = trajectories(learner, P.A, P.b, x_judge, iters)
    e2e = mse_or_inf(solvers["end_to_end"]["learner"].solve(P.A, P.b), x_judge)
    x_solve = learner.solve(P.A, P.b, warn=False)
    calls = float(learner.last_solve.model_calls.double().median())
    final = {**{name: curve[-1] for name, curve in curves.items()},
             "learned_cg_solve": mse_or_inf(x_solve, x_judge), "end_to_end": e2e,
             "scipy": mse_or_inf(reference.lstsq(P.A, P.b), x_judge)}
    checkpoints = sorted({1, 5, 10, 20, iters["cg"], 100, 200, iters["gd"]})
    rows = [{"iteration": k, **{c: curves[c][k] if k < len(curves[c]) else None
                                for c in CURVES}} for k in checkpoints]
    result = {"mode": "full" if args.full else "quick", "dtype": dtype_name,
              "problems": batch, "iterations": iters, "rows": rows, "final": final,
              "learned_cg_solve_calls_median": calls, "paper": PAPER,
              "curves": curves, "training": training_summary(solvers)}
    result["verdicts"] = verdicts(result)
    print(format_table([{k: ("–" if v is None else v) for k, v in r.items()} for r in rows],
                       ["iteration", *CURVES]))
    print(format_table([{"solver": k, "mse_vs_mpmath": v} for k, v in final.items()],
                       ["solver", "mse_vs_mpmath"]))
    for text, met in result["verdicts"].items():
        print(f"target {'MET' if met else 'not met'}: {text}")
    print("paper (float32):", {k: PAPER[k] for k in ("iterated_learned", "exact_gd",
                                                    "end_to_end_transformer")})
    fig, ax = figure()
    for name, curve in curves.items():
        ax.semilogy([max(v, 1e-300) for v in curve], label=name.replace("_", " "),
                    linestyle="--" if name.startswith("exact") else "-")
    ax.axhline(max(e2e, 1e-300), color="C5", label="end-to-end Transformer")
    ax.axhline(max(final["scipy"], 1e-300), color="k", linestyle=":", label="scipy gelsd")
    ax.set(xlabel="iteration", ylabel=f"MSE vs mpmath ({dtype_name})", xscale="symlog",
           title="error vs iteration (operator-only solvers)")
    ax.legend()
    save_figure(fig, args.out / "iterative_error_vs_iteration.png")
    write_report(args.out, NAME, result)
    return result


if __name__ == "__main__":
    run_cli(main)
