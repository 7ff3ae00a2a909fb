"""Monarch vs dense ``nn.Linear``: FLOP ratio beside measured speed-up, and where time goes.

    python -m studies.monarch_speed [--quick|--full] [--out DIR] [--threads T] [--batch B]

For each ``n`` (square, no bias, float32; ``nblocks`` = the largest divisor of ``n`` not
above ``√n``, the classic Monarch where ``n`` is a square: FLOP ratio 32× at 4096) it
times the forward pass (no grad) and forward+backward (input and weight gradients) of
``MonarchLinear`` and of ``nn.Linear``, alternating the two so that background load hits
both alike. Reported: the minimum over repeats (least contaminated); the JSON also keeps
the median. It then profiles one Monarch forward (``torch.profiler``) and prints each
ATen op's share: batched matmuls versus the permutes/copies of the reference path.

Timings on a shared machine are contaminated by other processes: the study records the
thread count and the 1-minute load average beside the numbers.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from neuralnum.runtime import progress
from structured.layers import MonarchLinear
from studies.study_io import figure, save_figure, study_parser, write_report

NAME = "monarch_speed"
PAPER = "Dao et al. 2022: 2n^1.5 vs n^2 multiply-adds, 32x fewer FLOPs at n = 4096"


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _forward(layer: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return layer(x)
    return run


def _forward_backward(layer: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    x = x.detach().requires_grad_()

    def run() -> object:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).sum().backward()
        return x.grad
    return run


def _race(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, float]]:
    """Warm up once, then alternate the callables ``repeats`` times; min and median seconds."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_time(fn))
    return {name: {"min_s": min(t), "median_s": statistics.median(t)} for name, t in times.items()}


def _profile(layer: nn.Module, x: torch.Tensor) -> list[dict[str, float | str]]:
    """Self CPU time per ATen op of one Monarch forward (ops above 1% of the total)."""
    run = _forward(layer, x)
    run()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    rows = [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3,
             "share": e.self_cpu_time_total / total} for e in events]
    rows.sort(key=lambda r: -r["self_ms"])
    return [r for r in rows if r["share"] > 0.01]


def run_study(sizes: list[int], batch: int, repeats: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    results = []
    for n in progress(sizes, desc="sizes"):
        nblocks = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
        torch.manual_seed(n)
        dense = nn.Linear(n, n, bias=False)
        monarch = MonarchLinear(n, n, nblocks, bias=False)
        x = torch.randn(batch, n, generator=gen)
        flop_ratio = dense.weight.numel() / monarch.monarch.num_params()
        row: dict = {"n": n, "nblocks": nblocks, "batch": batch, "flop_ratio": flop_ratio}
        for mode, make in (("forward", _forward), ("forward_backward", _forward_backward)):
            t = _race({"dense": make(dense, x), "monarch": make(monarch, x)}, repeats)
            row[mode] = {**t, "speedup": t["dense"]["min_s"] / t["monarch"]["min_s"]}
        row["profile_forward"] = _profile(monarch, x)
        results.append(row)
    return {"study": NAME, "threads": threads, "repeats": repeats,
            "load_average_1min": os.getloadavg()[0], "torch": torch.__version__,
            "paper": PAPER, "results": results}


def _print(report: dict) -> None:
    print(f"threads={report['threads']} repeats={report['repeats']} "
          f"load_avg_1min={report['load_average_1min']:.1f} (shared machine: timings "
          f"contaminated by other processes)")
    print(f"{'n':>5} {'blocks':>6} {'FLOP ratio':>10} | {'fwd dense':>10} {'fwd monarch':>11} "
          f"{'speedup':>7} | {'f+b dense':>10} {'f+b monarch':>11} {'speedup':>7}")
    for r in report["results"]:
        f, fb = r["forward"], r["forward_backward"]
        print(f"{r['n']:>5} {r['nblocks']:>6} {r['flop_ratio']:>9.1f}x | "
              f"{f['dense']['min_s'] * 1e3:>8.1f}ms {f['monarch']['min_s'] * 1e3:>9.1f}ms "
              f"{f['speedup']:>6.1f}x | {fb['dense']['min_s'] * 1e3:>8.1f}ms "
              f"{fb['monarch']['min_s'] * 1e3:>9.1f}ms {fb['speedup']:>6.1f}x")
    for r in report["results"]:
        ops = ", ".join(f"{p['op']} {100 * p['share']:.0f}%" for p in r["profile_forward"])
        print(f"n={r['n']} Monarch forward time by op: {ops}")
    print(f"paper: {report['paper']}")


def _plot(report: dict, path: Path) -> None:
    rows = report["results"]
    ns = [r["n"] for r in rows]
    fig, ax = figure()
    ax.plot(ns, [r["flop_ratio"] for r in rows], "k--o", label="FLOP ratio")
    ax.plot(ns, [r["forward"]["speedup"] for r in rows], "-o", label="forward speed-up")
    ax.plot(ns, [r["forward_backward"]["speedup"] for r in rows], "-s",
            label="forward+backward speed-up")
    ax.set(xscale="log", yscale="log", xlabel="n (nblocks ≈ √n)", ylabel="dense / Monarch",
           title=f"Monarch vs dense, batch {rows[0]['batch']}, {report['threads']} thread(s)")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.legend()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    parser = study_parser(NAME, __doc__, quick_help="3 repeats (default: 7)",
                          full_help="15 repeats, n up to 8192")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the machine is shared)")
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args(argv)
    sizes = [1024, 2048, 4096] + ([8192] if args.full else [])
    repeats = 3 if args.quick else 15 if args.full else 7
    report = run_study(sizes, args.batch, repeats, args.threads)
    _print(report)
    write_report(args.out, NAME, report)
    _plot(report, args.out / f"{NAME}.png")
    return report


if __name__ == "__main__":
    main()
