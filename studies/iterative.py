"""Error vs iteration: learned GD, exact GD and the end-to-end Transformer, against mpmath.

Trains the two solvers of :func:`studies.lsq_common.train_solvers` on the spectrum family
(κ = 5, n = 20, d = 5), then on held-out problems records the MSE against the mpmath
minimum-norm solution of every learned-GD iterate and every exact-GD iterate (optimal
fixed step, the same step rule the learned update uses), and the end-to-end prediction.
Targets (issue 4): learned GD ≥ 1e5× lower MSE than the end-to-end Transformer, and
within 10× of exact GD at the same iteration. Writes ``iterative.json`` and
``iterative_error_vs_iteration.png``.
"""

from __future__ import annotations

import math

import torch

from neuralnum import reference
from neuralnum.problems import family_from_name
from neuralnum.runtime import make_generator
from neuralnum.targets import GDSteps, OptimalStep
from studies.lsq_common import PAPER, parse, train_solvers, training_summary
from studies.study_io import figure, format_table, save_figure, write_report


def learned_trajectory(learner, A: torch.Tensor, b: torch.Tensor, iters: int) -> list:
    """Iterates ``x_0 … x_iters`` of the learned step (``inf`` rows once it diverges)."""
    x = A.new_zeros(A.shape[0], A.shape[2])
    out = [x]
    for _ in range(iters):
        try:
            x = learner.step(A, b, x)
        except FloatingPointError:
            x = torch.full_like(x, math.inf)
        out.append(x)
        if not torch.isfinite(x).all():
            out += [x] * (iters + 1 - len(out))
            break
    return out


def mse_or_inf(x: torch.Tensor, x_ref: torch.Tensor) -> float:
    return float(reference.mse(x, x_ref).mean()) if torch.isfinite(x).all() else math.inf


def main(argv: list[str] | None = None) -> dict:
    args = parse("iterative", __doc__, argv)
    dtype_name = "float64"
    family = family_from_name("spectrum")
    iters, batch = (600, 256) if args.full else (400, 32)
    solvers = train_solvers(args.full, dtype_name, family, args.seed)
    dtype = solvers["learned_gd"]["learner"].dtype
    P = family.sample(batch, make_generator(args.seed + 777), dtype)
    x_judge = reference.lstsq(P.A.double(), P.b.double(), method="mpmath")
    learned = [mse_or_inf(x, x_judge.to(dtype))
               for x in learned_trajectory(solvers["learned_gd"]["learner"], P.A, P.b, iters)]
    exact = [mse_or_inf(x, x_judge.to(dtype))
             for x in GDSteps(iters, OptimalStep()).trajectory(P.A, P.b)]
    e2e = mse_or_inf(solvers["end_to_end"]["learner"].solve(P.A, P.b), x_judge.to(dtype))
    scipy_mse = mse_or_inf(reference.lstsq(P.A, P.b), x_judge.to(dtype))
    checkpoints = sorted({k for k in (1, 10, 30, 70, 100, 200, iters) if k <= iters})
    rows = [{"iteration": k, "learned_gd": learned[k], "exact_gd": exact[k],
             "learned/exact": learned[k] / exact[k] if exact[k] > 0 else math.inf,
             "end_to_end/learned": e2e / learned[k] if learned[k] > 0 else math.inf}
            for k in checkpoints]
    final = {"learned_gd": min(learned), "exact_gd": min(exact), "end_to_end": e2e,
             "scipy": scipy_mse}
    within = [k for k in range(iters + 1) if learned[k] <= 10 * max(exact[k], 1e-300)]
    tracks_until = next((k - 1 for k in range(iters + 1) if k not in within), iters)
    targets = {
        "learned GD >= 1e5x lower MSE than end-to-end": e2e >= 1e5 * final["learned_gd"],
        "learned GD within 10x of exact GD at the final iteration":
            learned[iters] <= 10 * max(exact[iters], 1e-300),
    }
    print(format_table(rows, ["iteration", "learned_gd", "exact_gd", "learned/exact",
                       "end_to_end/learned"]))
    print(format_table([{"solver": k, "mse_vs_mpmath": v} for k, v in final.items()],
                ["solver", "mse_vs_mpmath"]))
    for text, met in targets.items():
        print(f"target {'MET' if met else 'not met'}: {text}")
    print(f"learned GD stays within 10x of exact GD through iteration {tracks_until} "
          f"(exact GD MSE there: {exact[tracks_until]:.2e})")
    print("paper (float32):", {k: PAPER[k] for k in ("iterated_learned", "exact_gd",
                                                    "end_to_end_transformer")})
    fig, ax = figure()
    arch = (solvers["learned_gd"]["learner"].arch_config or {}).get("name", "custom")
    ax.semilogy(learned, label=f"learned GD ({arch})")
    ax.semilogy(exact, label="exact GD", linestyle="--")
    ax.axhline(e2e, color="C3", label="end-to-end Transformer")
    ax.axhline(max(scipy_mse, 1e-300), color="k", linestyle=":", label="scipy gelsd")
    ax.set(xlabel="iteration", ylabel=f"MSE vs mpmath ({dtype_name})",
           title="error vs iteration")
    ax.legend()
    save_figure(fig, args.out / "iterative_error_vs_iteration.png")
    payload = {"mode": "full" if args.full else "quick", "dtype": dtype_name, "problems": batch,
               "rows": rows, "final": final, "targets": targets, "paper": PAPER,
               "within_10x_of_exact_through_iteration": tracks_until,
               "curves": {"learned_gd": learned, "exact_gd": exact},
               "training": training_summary(solvers)}
    write_report(args.out, "iterative", payload)
    return payload


if __name__ == "__main__":
    main()
