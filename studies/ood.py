"""Generalization gap (OOD MSE / in-distribution MSE) under shifts in n, κ, scale, noise.

Trains the two solvers of :func:`studies.lsq_common.train_solvers` on the spectrum family
(κ = 5, n = 20, d = 5, scale 1, no noise), then solves held-out problems of shifted
families (:meth:`neuralnum.problems.ProblemFamily.shifted`) and judges every solution
against the mpmath minimum-norm least-squares solution. The learned GD step is applied
iteratively (stopping when its step stagnates, ≤ 3000 iterations); the end-to-end
Transformer predicts once. Both models have a fixed context of n = 20 tokens, so the n
shifts go down (n = 10, 15). Target (issue 4): learned GD's gap ≥ 1e4× smaller than the
end-to-end Transformer's. ``mse_ratio`` (end-to-end MSE / learned MSE per shift) is
printed too: a gap near 1 can also mean a model never fit the training distribution.
Writes ``ood.json`` and ``ood_gaps.png``.
"""

from __future__ import annotations

import math

import numpy as np

from neuralnum.evaluate import error_metrics
from neuralnum.problems import family_from_name
from neuralnum.reference import lstsq
from neuralnum.runtime import make_generator
from studies.lsq_common import PAPER, parse, train_solvers, training_summary
from studies.study_io import figure, format_table, save_figure, write_report

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


def main(argv: list[str] | None = None) -> dict:
    args = parse("ood", __doc__, argv)
    family = family_from_name("spectrum")
    batch = 256 if args.full else 32
    solvers = train_solvers(args.full, "float64", family, args.seed)
    rows = []
    for name, change in SHIFTS.items():
        shifted = family.shifted(**change)
        P = shifted.sample(batch, make_generator(args.seed + 4242), solvers["learned_gd"][
            "learner"].dtype)
        x_judge = lstsq(P.A.double(), P.b.double(), method="mpmath").to(P.A.dtype)
        row = {"shift": name}
        for key, entry in solvers.items():
            learner = entry["learner"]
            x = learner.solve(P.A, P.b, max_iters=3000)
            metrics = error_metrics(x, x_judge)
            row[f"{key}_mse"] = metrics["mse"]
            row[f"{key}_diverged"] = metrics["diverged"]
        rows.append(row)
        print(format_table([row], list(row)).splitlines()[-1], flush=True)
    ind = rows[0]
    for row in rows:
        for key in solvers:
            base = ind[f"{key}_mse"]
            row[f"{key}_gap"] = row[f"{key}_mse"] / base if base > 0 else math.inf
        lg, eg = row["learned_gd_gap"], row["end_to_end_gap"]
        row["gap_ratio"] = eg / lg if lg > 0 else math.inf
        row["mse_ratio"] = (row["end_to_end_mse"] / row["learned_gd_mse"]
                            if row["learned_gd_mse"] > 0 else math.inf)
    shifted_rows = rows[1:]
    worst = {key: max(r[f"{key}_gap"] for r in shifted_rows) for key in solvers}
    median_ratio = float(np.median([r["gap_ratio"] for r in shifted_rows]))
    min_mse_ratio = min(r["mse_ratio"] for r in rows)
    targets = {"learned GD's gap >= 1e4x smaller than the end-to-end Transformer's "
               "(median over shifts)": median_ratio >= 1e4}
    print(format_table(rows, ["shift", "learned_gd_mse", "learned_gd_gap", "end_to_end_mse",
                       "end_to_end_gap", "gap_ratio", "mse_ratio"]))
    print("worst gap:", {k: f"{v:.3g}" for k, v in worst.items()},
          f"median gap ratio (end-to-end / learned): {median_ratio:.3g}; smallest OOD MSE "
          f"ratio (end-to-end / learned): {min_mse_ratio:.3g}")
    for text, met in targets.items():
        print(f"target {'MET' if met else 'not met'}: {text}")
    print("paper:", PAPER["headline"])
    fig, ax = figure((7, 4))
    pos = np.arange(len(shifted_rows))
    for i, key in enumerate(solvers):
        ax.bar(pos + 0.4 * i, [max(r[f"{key}_gap"], 1e-300) for r in shifted_rows], 0.4,
               label=key)
    ax.set_yscale("log")
    ax.set_xticks(pos + 0.2, [r["shift"] for r in shifted_rows], rotation=30)
    ax.set(ylabel="OOD MSE / in-distribution MSE", title="generalization gap")
    ax.legend()
    save_figure(fig, args.out / "ood_gaps.png")
    payload = {"mode": "full" if args.full else "quick", "problems": batch, "rows": rows,
               "worst_gap": worst, "median_gap_ratio": median_ratio,
               "min_mse_ratio": min_mse_ratio, "targets": targets,
               "paper": PAPER,
               "training": training_summary(solvers)}
    write_report(args.out, "ood", payload)
    return payload


if __name__ == "__main__":
    main()
