"""Generalization gap (OOD MSE / in-distribution MSE) under shifts in n, κ, scale, noise.

Trains the two solvers of :func:`studies.lsq_common.train_solvers` on the spectrum family
(κ = 5, n = 20, d = 5, scale 1, no noise), then solves held-out problems of shifted
families (:meth:`neuralnum.problems.ProblemFamily.shifted`) and judges every solution
against the mpmath minimum-norm least-squares solution. The learned update is used as
an operator by :meth:`~neuralnum.solvers.learner.Learner.solve` (CG on the learned operator with
its stopping rule; no SVD), beside CG on the same architecture set to the exact
construction (so a shortfall shared by both is the architecture's arithmetic, not
training's) and exact CG on the true operator (the same algorithm); the end-to-end
Transformer predicts once. Both models have a fixed context of n = 20
tokens, so the n shifts go down (n = 10, 15). Targets: learned CG's gap ≥ 1e4× smaller
than the end-to-end Transformer's (the paper's generalisation claim); on the κ = 20 shift
learned CG reaches the digits of exact CG, within 0.5. ``mse_ratio`` (end-to-end MSE / learned MSE
per shift) is printed too: a gap near 1 can also mean a model never fit the training
distribution. Writes ``ood.json`` and ``ood_gaps.png``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from neuralnum.core.runtime import make_generator
from neuralnum.problems.families import family_from_name
from neuralnum.problems.reference import lstsq
from neuralnum.solvers.evaluate import error_metrics
from neuralnum.solvers.krylov import solve
from neuralnum.solvers.operators import ExactOperator
from studies.lsq_common import (
    PAPER,
    construction_twin,
    parse,
    train_solvers,
    training_summary,
)
from studies.markdown import sci, targets_met, targets_table
from studies.study_io import figure, format_table, run_cli, save_figure, write_report

NAME = "ood"
GAP_FACTOR = 1e4
DIGIT_GAP = 0.5
KAPPA_SHIFT = "cond=20"
SHIFTS: dict[str, dict] = {
    "in-distribution": {},
    "n=15": {"n": 15},
    "n=10": {"n": 10},
    "cond=10": {"cond": 10.0},
    "cond=20": {"cond": 20.0},
    "scale=0.5": {"scale": 0.5},
    "scale=4": {"scale": 4.0},
    "noise=1e-3": {"noise": 1e-3},
    "noise=1e-1": {"noise": 1e-1},
}


def verdicts(result: dict) -> dict[str, bool]:
    """Targets from the per-shift rows of :func:`main`."""
    rows = {r["shift"]: r for r in result["rows"]}
    kappa = rows[KAPPA_SHIFT]
    return {
        "learned CG's gap >= 1e4x smaller than the end-to-end Transformer's (median over "
        "shifts)": result["median_gap_ratio"] >= GAP_FACTOR,
        "learned CG reaches exact CG's digits (within 0.5) on the κ = 20 shift":
            kappa["exact_cg_digits"] - kappa["learned_digits"] <= DIGIT_GAP,
    }


def headline(result: dict) -> str:
    """The results-index line: learned CG's worst median digits over the shifts beside
    the end-to-end Transformer's worst MSE."""
    rows = result["rows"]
    return (f"learned CG ≥ {min(r['learned_digits'] for r in rows):.1f} digits on every "
            f"shift, end-to-end Transformer MSE up to "
            f"{sci(max(r['end_to_end_mse'] for r in rows))}; {targets_met(verdicts(result))}")


def tables(result: dict) -> str:
    """Results block: per-shift MSE, gaps and digits; verdicts."""
    n = result["problems"]
    lines = [f"`python3 -m studies.ood --{result['mode']}` — trained on the spectrum family "
             f"(κ = 5, n = 20, d = 5); {n} held-out problems per shift, judged by mpmath; "
             f"MSE is the mean of {n}, digits the median.", "",
             "| shift | learned CG MSE | gap | digits | construction CG digits | exact CG "
             "digits | end-to-end MSE | gap | gap ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['shift']} | {r['learned_mse']:.2e} | {r['learned_gap']:.3g} | "
                     f"{r['learned_digits']:.1f} | {r['construction_cg_digits']:.1f} | "
                     f"{r['exact_cg_digits']:.1f} | "
                     f"{r['end_to_end_mse']:.2e} | {r['end_to_end_gap']:.3g} | "
                     f"{r['gap_ratio']:.3g} |")
    lines += ["", targets_table(result["verdicts"])]
    return "\n".join(lines)


def _shift_row(name: str, shifted: Any, solvers: dict[str, Any], twin: Any, batch: int,
               seed: int) -> dict[str, Any]:
    """MSE, digits and divergence of every solver on ``batch`` problems of one shifted
    family (judged by mpmath), beside the digits of CG on the construction ``twin`` (the
    learned architecture with exact weights) and of exact CG."""
    P = shifted.sample(batch, make_generator(seed + 4242), solvers["learned"]["learner"].dtype)
    x_judge = lstsq(P.A.double(), P.b.double(), method="mpmath").to(P.A.dtype)
    row: dict[str, Any] = {"shift": name}
    for key, entry in solvers.items():
        learner = entry["learner"]
        x = learner.solve(P.A, P.b, **({"warn": False} if key == "learned" else {}))
        metrics = error_metrics(x, x_judge)
        row[f"{key}_mse"] = metrics["mse"]
        row[f"{key}_digits"] = metrics["digits"]
        row[f"{key}_diverged"] = metrics["diverged"]
        if key == "learned":
            row["learned_calls"] = float(learner.last_solve.model_calls.double().median())
    row["construction_cg_digits"] = error_metrics(twin.solve(P.A, P.b, warn=False),
                                                  x_judge)["digits"]
    x_exact, _ = solve(ExactOperator(P.A, P.b), "cg", warn=False)
    row["exact_cg_digits"] = error_metrics(x_exact, x_judge)["digits"]
    print(format_table([row], list(row)).splitlines()[-1], flush=True)
    return row


def _plot_gaps(shifted_rows: list[dict[str, Any]], solvers: dict[str, Any],
               path: Path) -> None:
    fig, ax = figure((7, 4))
    pos = np.arange(len(shifted_rows))
    for i, key in enumerate(solvers):
        ax.bar(pos + 0.4 * i, [max(r[f"{key}_gap"], 1e-300) for r in shifted_rows], 0.4,
               label=key)
    ax.set_yscale("log")
    ax.set_xticks(pos + 0.2, [r["shift"] for r in shifted_rows], rotation=30)
    ax.set(ylabel="OOD MSE / in-distribution MSE", title="generalization gap")
    ax.legend()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    args = parse(NAME, __doc__, argv)
    family = family_from_name("spectrum")
    batch = 256 if args.full else 32
    solvers = train_solvers(args.full, "float64", family, args.seed)
    twin = construction_twin(solvers["learned"]["learner"])
    rows = [_shift_row(name, family.shifted(**change), solvers, twin, batch, args.seed)
            for name, change in SHIFTS.items()]
    ind = rows[0]
    for row in rows:
        for key in solvers:
            base = ind[f"{key}_mse"]
            row[f"{key}_gap"] = row[f"{key}_mse"] / base if base > 0 else math.inf
        lg, eg = row["learned_gap"], row["end_to_end_gap"]
        row["gap_ratio"] = eg / lg if lg > 0 else math.inf
        row["mse_ratio"] = (row["end_to_end_mse"] / row["learned_mse"]
                            if row["learned_mse"] > 0 else math.inf)
    shifted_rows = rows[1:]
    worst = {key: max(r[f"{key}_gap"] for r in shifted_rows) for key in solvers}
    median_ratio = float(np.median([r["gap_ratio"] for r in shifted_rows]))
    min_mse_ratio = min(r["mse_ratio"] for r in rows)
    print(format_table(rows, ["shift", "learned_mse", "learned_gap", "learned_digits",
                              "construction_cg_digits", "exact_cg_digits", "learned_calls",
                              "end_to_end_mse",
                              "end_to_end_gap", "gap_ratio", "mse_ratio"]))
    print("worst gap:", {k: f"{v:.3g}" for k, v in worst.items()},
          f"median gap ratio (end-to-end / learned): {median_ratio:.3g}; smallest OOD MSE "
          f"ratio (end-to-end / learned): {min_mse_ratio:.3g}")
    print("paper:", PAPER["headline"])
    _plot_gaps(shifted_rows, solvers, args.out / "ood_gaps.png")
    payload = {"mode": "full" if args.full else "quick", "problems": batch, "rows": rows,
               "worst_gap": worst, "median_gap_ratio": median_ratio,
               "min_mse_ratio": min_mse_ratio, "paper": PAPER,
               "training": training_summary(solvers)}
    payload["verdicts"] = verdicts(payload)
    for text, met in payload["verdicts"].items():
        print(f"target {'MET' if met else 'not met'}: {text}")
    write_report(args.out, NAME, payload)
    return payload


if __name__ == "__main__":
    run_cli(main)
