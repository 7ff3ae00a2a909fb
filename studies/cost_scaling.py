"""What the shape-general learned solver costs as problems grow, against scipy and torch.

Three measurements, every one a median over alternated repeats in one process (one torch
thread and, in ``--quick``, one BLAS thread for numpy / scipy; the machine's load average
is recorded before and after):

* **Scaling** — wall seconds per solve of one ``gaussian`` problem (κ ≈ 2) at ``n = 10 d``
  from 250 × 25 to 10000 × 1000 (``--full``: to 20000 × 2000): the learned solver's LSQR
  (its default: reorthogonalised; ``atol = btol = eps``, ``iter_lim = 2 d``),
  ``scipy.sparse.linalg.lsqr`` on the exact problem with the same tolerances,
  ``scipy.linalg.lstsq`` (gelsd) and ``torch.linalg.lstsq`` (a batch of one); the
  exponent ``p`` of ``seconds ∝ (n·d)^p`` fitted by least squares in log–log over the
  shapes with ``n·d ≥`` :data:`FIT_FROM` (below it fixed per-call costs dominate).
* **Throughput** — the learned operator's achieved GF/s: a product pair ``A v``, ``Aᵀu``
  through the network (counted as ``2·n·d`` flops each, what the product it replaces
  costs) against the dense products it replaces, ``torch.mv`` with ``A`` and ``Aᵀ``
  (GEMV: the target is defined against these), and a GEMM reference (``A @ X``, ``X: (d,
  64)``), all measured here.
* **Many small problems** — 10 000 problems of 20 × 5 at once: learned LSQR and learned CG
  (each one batched solve), batched ``torch.linalg.lstsq`` and a scipy loop
  (``scipy.linalg.lstsq`` per problem).

Writes ``cost_scaling.json`` and ``cost_scaling.png`` (seconds per solve vs ``n·d``, the
fitted exponents in the legend; GF/s vs ``n·d``).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from neuralnum.core.runtime import make_generator
from neuralnum.problems import reference
from neuralnum.problems.families import family_from_name
from neuralnum.solvers.axial_learner import AxialLearner
from neuralnum.solvers.pretrained import pretrained
from studies import lsq_shapes
from studies.lsq_common import parse
from studies.markdown import (
    fixed,
    num,
    percent,
    study_command,
    table,
    targets_met,
    targets_table,
    times,
)
from studies.study_io import (
    blas_threads,
    figure_row,
    format_table,
    one_blas_thread,
    run_cli,
    save_figure,
    write_report,
)

NAME = "cost_scaling"
SHAPES = {"quick": ((250, 25), (500, 50), (1000, 100), (2000, 200), (5000, 500),
                    (10000, 1000)),
          "full": ((250, 25), (500, 50), (1000, 100), (2000, 200), (5000, 500),
                   (10000, 1000), (20000, 2000))}
REPEATS = {"quick": 5, "full": 9}
PRODUCT_REPEATS = 21
GEMM_COLUMNS = 64
FIT_FROM = 400_000  # n·d from which the fitted exponents use a shape
SOLVERS = ("learned_lsqr", "scipy_lsqr", "scipy_lstsq", "torch_lstsq")
BATCH = (10_000, 20, 5)
BATCH_SOLVERS = ("learned_lsqr", "learned_cg", "torch_lstsq", "scipy_loop")
TARGET_SHAPE = (5000, 500)
LSQR_RATIO = 10.0  # learned LSQR / scipy lsqr wall-clock at TARGET_SHAPE, at most
GEMV_SHARE = 0.25  # learned operator GF/s / dense GEMV GF/s at TARGET_SHAPE, at least
BATCH_RATIO = 5.0  # learned LSQR / batched torch.linalg.lstsq on BATCH, at most


def alternated(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of every function, ``repeats`` rounds, each round calling them all (in
    a rotated order, so none always runs first) after one untimed warm-up call each."""
    for fn in fns.values():
        fn()
    names = list(fns)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for k in range(repeats):
        for name in names[k % len(names):] + names[:k % len(names)]:
            start = time.perf_counter()
            fns[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def loglog_exponent(sizes: list[float], seconds: list[float]) -> float:
    """The least-squares slope ``p`` of ``log seconds = p·log size + c`` (≥ 2 points)."""
    x, y = np.log(np.asarray(sizes, float)), np.log(np.asarray(seconds, float))
    return float(np.polyfit(x, y, 1)[0])


def _solvers(learner: AxialLearner, P: Any, record: dict[str, float]
             ) -> dict[str, Callable[[], Any]]:
    """The scaling part's solvers on one problem; ``record`` gets their iterations."""
    def learned() -> None:
        learner.solve(P.A, P.b, warn=False)
        record["learned_lsqr_iterations"] = float(learner.last_solve.iterations[0])

    def scipy_lsqr() -> None:
        record["scipy_lsqr_iterations"] = float(lsq_shapes.scipy_lsqr(P)[1][0])

    return {"learned_lsqr": learned, "scipy_lsqr": scipy_lsqr,
            "scipy_lstsq": lambda: reference.lstsq(P.A, P.b, method="scipy"),
            "torch_lstsq": lambda: torch.linalg.lstsq(P.A, P.b.unsqueeze(2))}


def _throughput(learner: AxialLearner, P: Any) -> dict[str, float]:
    """GF/s of the learned product pair, the dense GEMV pair and the GEMM reference."""
    n, d = P.n, P.d
    op = learner.operator(P.A, P.b)
    gen = make_generator(1)
    v, u = (torch.randn(1, m, dtype=P.A.dtype, generator=gen) for m in (d, n))
    X = torch.randn(d, GEMM_COLUMNS, dtype=P.A.dtype, generator=gen)
    idx, A = torch.arange(1), op.A[0]
    seconds = alternated({"learned": lambda: (op.matvec(v, idx), op.rmatvec(u, idx)),
                          "gemv": lambda: (torch.mv(A, v[0]), torch.mv(A.T, u[0])),
                          "gemm": lambda: A @ X}, PRODUCT_REPEATS)
    med = {k: statistics.median(s) for k, s in seconds.items()}
    return {"learned_gflops": 4 * n * d / med["learned"] / 1e9,
            "gemv_gflops": 4 * n * d / med["gemv"] / 1e9,
            "gemm_gflops": 2 * n * d * GEMM_COLUMNS / med["gemm"] / 1e9,
            "learned_pair_seconds": med["learned"], "gemv_pair_seconds": med["gemv"]}


def scaling(learner: AxialLearner, mode: str, seed: int) -> list[dict[str, Any]]:
    """One row per shape of :data:`SHAPES`: median seconds per solve of every solver,
    iterations, throughput."""
    rows = []
    for n, d in SHAPES[mode]:
        P = family_from_name("gaussian", n=n, d=d).sample(1, make_generator(seed + n))
        row: dict[str, Any] = {"n": n, "d": d, "nd": n * d}
        seconds = alternated(_solvers(learner, P, row), REPEATS[mode])
        row |= {f"{k}_seconds": statistics.median(s) for k, s in seconds.items()}
        row |= _throughput(learner, P)
        rows.append(row)
        print(format_table([row], ["n", "d", *(f"{s}_seconds" for s in SOLVERS),
                                   "learned_gflops", "gemv_gflops"]).splitlines()[-1],
              flush=True)
    return rows


def exponents(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Per solver, the fitted exponent over the rows with ``n·d ≥`` :data:`FIT_FROM`."""
    fit = [r for r in rows if r["nd"] >= FIT_FROM]
    return {s: loglog_exponent([r["nd"] for r in fit], [r[f"{s}_seconds"] for r in fit])
            if len(fit) >= 2 else None for s in SOLVERS}


def many_small(learner: AxialLearner, mode: str, seed: int) -> dict[str, Any]:
    """:data:`BATCH` problems (float64) at once: median seconds of every solver of
    :data:`BATCH_SOLVERS` over alternated repeats, and learned LSQR's median iterations
    (recorded by its timed calls)."""
    batch, n, d = BATCH
    P = family_from_name("gaussian", n=n, d=d).sample(batch, make_generator(seed + 1))
    out: dict[str, Any] = {"batch": batch, "n": n, "d": d}

    def learned_lsqr() -> None:
        learner.solve(P.A, P.b, warn=False)
        out["learned_lsqr_iterations"] = float(learner.last_solve.iterations.double().median())

    fns = {"learned_lsqr": learned_lsqr,
           "learned_cg": lambda: learner.solve(P.A, P.b, method="cg", warn=False),
           "torch_lstsq": lambda: torch.linalg.lstsq(P.A, P.b.unsqueeze(2)),
           "scipy_loop": lambda: reference.lstsq(P.A, P.b, method="scipy")}
    seconds = alternated(fns, REPEATS[mode])
    return {**out, **{f"{k}_seconds": statistics.median(s) for k, s in seconds.items()},
            **{f"{k}_all": s for k, s in seconds.items()}}


def _target_row(result: dict[str, Any]) -> dict[str, Any] | None:
    return next((r for r in result["scaling"] if (r["n"], r["d"]) == TARGET_SHAPE), None)


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    """The cost targets at 5000 × 500 (wall-clock against scipy's lsqr; GF/s against the
    dense GEMV) and on 10 000 problems of 20 × 5 (against batched torch.linalg.lstsq)."""
    row, small = _target_row(result), result["many_small"]
    return {
        "5000 × 500: learned LSQR ≤ 10× the wall-clock of scipy lsqr (same tolerances)":
            row is not None
            and row["learned_lsqr_seconds"] <= LSQR_RATIO * row["scipy_lsqr_seconds"],
        "5000 × 500: learned operator ≥ 25% of the dense GEMV's GF/s":
            row is not None and row["learned_gflops"] >= GEMV_SHARE * row["gemv_gflops"],
        "10 000 problems of 20 × 5: learned LSQR ≤ 5× batched torch.linalg.lstsq":
            small["learned_lsqr_seconds"] <= BATCH_RATIO * small["torch_lstsq_seconds"],
    }


def headline(result: dict[str, Any]) -> str:
    """The results-index line: the ratios the targets are about, and the targets met."""
    row, small = _target_row(result), result["many_small"]
    lsqr = row["learned_lsqr_seconds"] / row["scipy_lsqr_seconds"] if row else None
    share = row["learned_gflops"] / row["gemv_gflops"] if row else None
    batch = small["learned_lsqr_seconds"] / small["torch_lstsq_seconds"]
    return (f"5000 × 500: learned LSQR {times(lsqr, 1)} scipy lsqr's wall-clock, its operator "
            f"at {percent(share, 0)} of the dense GEMV's GF/s; 10 000 problems of 20 × 5: "
            f"{times(batch, 1)} batched torch.linalg.lstsq; {targets_met(verdicts(result))}")


def tables(result: dict[str, Any]) -> str:
    """Results block: seconds per solve and exponents, throughput, many small problems,
    verdicts."""
    labels = {**lsq_shapes.NAMES, "torch_lstsq": "torch lstsq",
              "scipy_loop": "scipy lstsq loop"}
    env = result["environment"]
    rows = result["scaling"]
    lines = [f"`{result['command']}` — wall-clock medians of {result['repeats']} alternated "
             f"repeats (products: {PRODUCT_REPEATS}); {env['torch_threads']} torch thread, "
             f"BLAS threads {env['blas_threads']}; load average {env['load_before']:.1f} "
             f"before, {env['load_after']:.1f} after (2 shared cores).", "",
             "**Seconds per solve (one gaussian problem, κ ≈ 2), iterations, fitted "
             f"exponent of seconds ∝ (n·d)^p over n·d ≥ {FIT_FROM:,}**", "",
             table(["n × d", "n·d", *(labels[s] for s in SOLVERS), "learned / scipy lsqr",
                    "iterations: learned / scipy lsqr"],
                   [[f"{r['n']} × {r['d']}", f"{r['nd']:,}",
                     *(num(r[f"{s}_seconds"]) for s in SOLVERS),
                     times(r["learned_lsqr_seconds"] / r["scipy_lsqr_seconds"], 1),
                     f"{r['learned_lsqr_iterations']:.0f} / {r['scipy_lsqr_iterations']:.0f}"]
                    for r in rows]
                   + [["exponent p", "", *(fixed(result["exponents"][s]) for s in SOLVERS),
                       "", ""]]), "",
             "**Throughput: GF/s of a product pair A v, Aᵀu (2·n·d flops each); the target is "
             "against the dense GEMV (torch.mv), the product the operator replaces**", "",
             table(["n × d", "learned operator", "dense GEMV", "learned / GEMV",
                    f"GEMM (A @ X, X: d × {GEMM_COLUMNS})"],
                   [[f"{r['n']} × {r['d']}", num(r["learned_gflops"]), num(r["gemv_gflops"]),
                     f"{r['learned_gflops'] / r['gemv_gflops']:.0%}", num(r["gemm_gflops"])]
                    for r in rows]), ""]
    small = result["many_small"]
    lines += [f"**{small['batch']:,} problems of {small['n']} × {small['d']} at once** "
              f"(learned LSQR: {small['learned_lsqr_iterations']:.0f} iterations, median)", "",
              table(["solver", "seconds", "× batched torch.linalg.lstsq"],
                    [[labels[s], num(small[f"{s}_seconds"]),
                      times(small[f"{s}_seconds"] / small["torch_lstsq_seconds"], 1)]
                     for s in BATCH_SOLVERS]), "",
              targets_table(verdicts(result))]
    return "\n".join(lines)


def _figure(result: dict[str, Any], path: Any) -> None:
    rows = result["scaling"]
    fig, (left, right) = figure_row(2, (11, 4))
    nd = np.array([r["nd"] for r in rows], float)
    for solver in SOLVERS:
        seconds = np.array([r[f"{solver}_seconds"] for r in rows])
        p = result["exponents"][solver]
        left.plot(nd, seconds, "o-", label=f"{solver} (p = {p:.2f})" if p else solver)
    left.set(xscale="log", yscale="log", xlabel="n·d", ylabel="seconds per solve",
             title="one problem, n = 10 d")
    left.legend(fontsize=7)
    for key, label in (("learned_gflops", "learned operator"), ("gemv_gflops", "dense GEMV"),
                       ("gemm_gflops", f"GEMM (d × {GEMM_COLUMNS})")):
        right.plot(nd, [r[key] for r in rows], "o-", label=label)
    right.set(xscale="log", yscale="log", xlabel="n·d", ylabel="GF/s", title="throughput")
    right.legend(fontsize=7)
    save_figure(fig, path)


def _environment(load_before: float) -> dict[str, Any]:
    return {"torch_threads": torch.get_num_threads(), "blas_threads": blas_threads(),
            "load_before": load_before, "load_after": os.getloadavg()[0],
            "cpu_count": os.cpu_count()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(NAME, __doc__, argv)
    mode = "full" if args.full else "quick"
    learner = pretrained("float64")
    load_before = os.getloadavg()[0]
    with contextlib.nullcontext() if args.full else one_blas_thread():
        rows = scaling(learner, mode, args.seed)
        small = many_small(learner, mode, args.seed)
        environment = _environment(load_before)
    result = {"command": study_command(NAME, argv), "mode": mode,
              "repeats": REPEATS[mode], "environment": environment, "scaling": rows,
              "exponents": exponents(rows), "many_small": small}
    result["verdicts"] = verdicts(result)
    print(tables(result))
    _figure(result, args.out / f"{NAME}.png")
    write_report(args.out, NAME, result)
    return result


if __name__ == "__main__":
    run_cli(main)
