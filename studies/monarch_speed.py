"""Monarch vs dense ``nn.Linear``: FLOP ratio beside measured speed-up, and where time goes.

    python -m studies.monarch_speed [--quick|--full] [--out DIR] [--threads T] [--batch B]

For each ``n`` (square, no bias, float32; ``nblocks`` = the largest divisor of ``n`` not
above ``√n``, the classic Monarch where ``n`` is a square: FLOP ratio 32× at 4096) it
times ``MonarchLinear`` against ``nn.Linear`` in three races:

* ``forward`` — ``layer(x)``, no grad, row-major ``x: (batch, n)`` in and out (the
  permutation ``P`` puts the block index innermost in the output, so the second factor
  runs in :func:`kernels.native.interleaved_bmm`, see :mod:`kernels.monarch_reference`);
* ``forward_features_first`` — :func:`structured.mixer.features_first` on ``xᵀ: (n,
  batch)``, no grad (the layout the M2 mixer and GLU run in: dense is one ``mm``, both
  Monarch factors are plain block products);
* ``forward_backward`` — row-major, input and weight gradients.

Each race alternates the two layers so that background load hits both alike (each
timing window repeats the faster layer so that it lasts as long as one dense call), and
the races run in rounds, one window each per round, so that a spell of load on this
shared machine is spread over every size and mode instead of one race's windows.
Reported: the **median** over the alternated repeats (speed-up = median dense time /
median Monarch time, and that speed-up as a percentage of the FLOP ratio); the JSON also
keeps the minimum. It then profiles five row-major Monarch forwards (``torch.profiler``)
and prints each op's share: the native kernels (named ranges), ATen ops, Python.
Speed-ups are given on wall time and on process CPU time (medians too; the latter leaves
out time spent descheduled by other processes, not their cache or core-sharing effects).

Targets (forward at batch 1024, one thread): at least 50% of the FLOP ratio at
n = 2048 and 4096, 40% at 1024, judged in each forward layout; forward+backward at least
33% at every size.

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

from kernels.native import native_status
from neuralnum.core.flags import positive_int
from neuralnum.core.runtime import progress
from structured.layers import MonarchLinear
from structured.mixer import features_first
from studies.markdown import targets_met, targets_table
from studies.study_io import figure, run_cli, save_figure, study_parser, write_report

NAME = "monarch_speed"
PAPER = "Dao et al. 2022: 2n^1.5 vs n^2 multiply-adds, 32x fewer FLOPs at n = 4096"


def _time(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """``(wall, cpu)`` seconds per call over ``calls`` back-to-back calls.

    cpu = this process's CPU time (all threads).
    """
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls


def _forward(layer: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return layer(x)
    return run


def _forward_features_first(layer: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """No-grad :func:`structured.mixer.features_first` on ``xᵀ`` (contiguous ``(n, batch)``)."""
    x_t = x.T.contiguous()

    def run() -> object:
        with torch.no_grad():
            return features_first(layer, x_t)
    return run


def _forward_backward(layer: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    x = x.detach().requires_grad_()

    def run() -> object:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).sum().backward()
        return x.grad
    return run


WARMUP_CALLS = 3


def _race(races: dict[tuple[int, str], dict[str, Callable[[], object]]],
          repeats: int) -> dict[tuple[int, str], dict[str, dict[str, float]]]:
    """Warm up every callable (``WARMUP_CALLS`` each), then run ``repeats`` rounds; in each
    round every race times each of its callables once, races in turn.

    Each timing window loops a callable enough times to last about as long as one call of
    the slowest in its race, so all are exposed alike to background load (a lone short call
    would more often hit a quiet moment and look faster); the rounds spread every race's
    windows over the whole study, so that a spell of load on this shared machine hits all
    races alike instead of all the windows of one. Per race and callable: median and min
    wall seconds per call, median CPU seconds per call, and the calls per window.
    """
    calls = {}
    for key, fns in races.items():
        for fn in fns.values():                  # warm-up: allocator, BLAS kernels, caches
            _time(fn, WARMUP_CALLS)
        single = {name: _time(fn, 1)[0] for name, fn in fns.items()}
        calls[key] = {name: max(1, round(max(single.values()) / t)) for name, t in single.items()}
    times = {key: {name: [] for name in fns} for key, fns in races.items()}
    for _ in progress(range(repeats), desc="rounds"):
        for key, fns in races.items():
            for name, fn in fns.items():
                times[key][name].append(_time(fn, calls[key][name]))
    return {key: {name: {"median_s": statistics.median(w for w, _ in t),
                         "min_s": min(w for w, _ in t),
                         "cpu_median_s": statistics.median(c for _, c in t),
                         "calls_per_window": calls[key][name]}
                  for name, t in by_name.items()}
            for key, by_name in times.items()}


#: Forward calls profiled together (one call alone is at the mercy of a single interruption).
PROFILED_CALLS = 5


def _profile(layer: nn.Module, x: torch.Tensor) -> list[dict[str, float | str]]:
    """Self CPU time per op of ``PROFILED_CALLS`` Monarch forwards (ATen ops and the native
    kernels' ``neuralnum::*`` ranges; those above 1% of the total; ``self_ms`` per call)."""
    run = _forward(layer, x)
    run()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(PROFILED_CALLS):
            run()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    rows = [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3 / PROFILED_CALLS,
             "share": e.self_cpu_time_total / total} for e in events]
    rows.sort(key=lambda r: -r["self_ms"])
    return [r for r in rows if r["share"] > 0.01]


#: What is timed, dense against Monarch, each in its own alternated race.
MODES = {"forward": _forward, "forward_features_first": _forward_features_first,
         "forward_backward": _forward_backward}


def run_study(sizes: list[int], batch: int, repeats: int, threads: int) -> dict:
    """Time every size and mode in one set of rounds (:func:`_race`) with ``threads`` torch
    threads (restored afterwards), then profile each size's Monarch forward."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        setups = {n: _setup(n, batch) for n in sizes}
        timings = _race({(n, mode): {"dense": make(dense, x), "monarch": make(monarch, x)}
                         for n, (_, dense, monarch, x) in setups.items()
                         for mode, make in MODES.items()}, repeats)
        results = [_result(row, {mode: timings[n, mode] for mode in MODES}, monarch, x)
                   for n, (row, _, monarch, x) in setups.items()]
    finally:
        torch.set_num_threads(previous)
    return {"study": NAME, "threads": threads, "repeats": repeats,
            "load_average_1min": os.getloadavg()[0], "torch": torch.__version__,
            "native": native_status(), "paper": PAPER, "results": results}


def _setup(n: int, batch: int) -> tuple[dict, nn.Linear, MonarchLinear, torch.Tensor]:
    """One size's result row (``n``, ``nblocks``, batch, FLOP ratio), its dense and Monarch
    layers and its input."""
    gen = torch.Generator().manual_seed(0)
    nblocks = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    torch.manual_seed(n)
    dense = nn.Linear(n, n, bias=False)
    monarch = MonarchLinear(n, n, nblocks, bias=False)
    x = torch.randn(batch, n, generator=gen)
    flop_ratio = dense.weight.numel() / monarch.monarch.num_params()
    return {"n": n, "nblocks": nblocks, "batch": batch, "flop_ratio": flop_ratio}, dense, monarch, x


def _result(row: dict, timings: dict[str, dict], monarch: MonarchLinear,
            x: torch.Tensor) -> dict:
    """``row`` with each mode's timings, speed-up (ratio of the medians) and its share of the
    FLOP ratio, and the Monarch forward's op profile."""
    row = dict(row)
    for mode, t in timings.items():
        speedup = t["dense"]["median_s"] / t["monarch"]["median_s"]
        row[mode] = {**t, "speedup": speedup,
                     "pct_of_flop_ratio": 100 * speedup / row["flop_ratio"],
                     "cpu_speedup": t["dense"]["cpu_median_s"] / t["monarch"]["cpu_median_s"]}
    row["profile_forward"] = _profile(monarch, x)
    return row


def _print(report: dict) -> None:
    print(f"threads={report['threads']} repeats={report['repeats']} "
          f"load_avg_1min={report['load_average_1min']:.1f} (shared machine: timings are "
          f"contaminated by other processes; cpu = process CPU time, which leaves out "
          f"time spent descheduled but not cache or core sharing); median of "
          f"{report['repeats']} alternated repeats; %F = speed-up as % of the FLOP ratio; "
          f"CPU kernels: {report['native']}")
    print(f"{'':>19} | " + " | ".join(f"{LABELS[mode]:^37}" for mode in MODES))
    print(f"{'n':>5} {'blocks':>6} {'FLOPs':>6} " + "".join(
        f"| {'dense':>9} {'monarch':>8} {'wall':>5} {'%F':>4} {'cpu':>5} " for _ in MODES))
    for r in report["results"]:
        cells = []
        for mode in MODES:
            m = r[mode]
            dense_ms, monarch_ms = m["dense"]["median_s"] * 1e3, m["monarch"]["median_s"] * 1e3
            cells.append(f"{dense_ms:>7.1f}ms {monarch_ms:>6.1f}ms {m['speedup']:>4.1f}x "
                         f"{m['pct_of_flop_ratio']:>3.0f}% {m['cpu_speedup']:>4.1f}x")
        print(f"{r['n']:>5} {r['nblocks']:>6} {r['flop_ratio']:>5.1f}x | " + " | ".join(cells))
    for r in report["results"]:
        ops = ", ".join(f"{p['op']} {100 * p['share']:.0f}%" for p in r["profile_forward"])
        print(f"n={r['n']} Monarch forward (row-major) time by op: {ops}")
    print(f"paper: {report['paper']}")
    for target, met in report["verdicts"].items():
        print(f"{'MET' if met else 'NOT MET'}: {target}")


#: Minimum forward speed-up as a percentage of the FLOP ratio, per size.
FORWARD_TARGETS = {1024: 40.0, 2048: 50.0, 4096: 50.0}
FORWARD_BACKWARD_TARGET = 33.0
#: How each mode is named in tables and verdicts.
LABELS = {"forward": "forward (row-major)", "forward_features_first": "forward (features-first)",
          "forward_backward": "forward+backward"}


def verdicts(result: dict) -> dict[str, bool]:
    """Target name → met, from the median speed-ups as % of the FLOP ratio.

    Forward, in each layout: ``FORWARD_TARGETS`` at the sizes it names (missing size →
    not met); forward+backward: ``FORWARD_BACKWARD_TARGET`` at every measured size.
    """
    rows = {r["n"]: r for r in result["results"]}
    out = {}
    for mode in ("forward", "forward_features_first"):
        for n, pct in FORWARD_TARGETS.items():
            got = rows[n][mode]["pct_of_flop_ratio"] if n in rows else float("-inf")
            out[f"{LABELS[mode]} at n={n} >= {pct:g}% of the FLOP ratio"] = got >= pct
    out[f"forward+backward >= {FORWARD_BACKWARD_TARGET:g}% of the FLOP ratio at every size"] = \
        bool(rows) and all(r["forward_backward"]["pct_of_flop_ratio"] >= FORWARD_BACKWARD_TARGET
                           for r in rows.values())
    return out


def headline(result: dict) -> str:
    """The results-index line: the row-major forward speed-up over dense per size, its
    range as a share of the FLOP ratio, and the targets met."""
    rows = result["results"]
    share = [r["forward"]["pct_of_flop_ratio"] for r in rows]
    return ("Monarch forward " + " / ".join(f"{r['forward']['speedup']:.1f}×" for r in rows)
            + " faster than dense at n = " + " / ".join(str(r["n"]) for r in rows)
            + f" ({min(share):.0f}–{max(share):.0f}% of the FLOP ratio); "
            + targets_met(result["verdicts"]))


def tables(result: dict) -> str:
    """Results block: speed-ups (median of the alternated repeats) beside the FLOP ratio."""
    repeats = result["repeats"]
    lines = [f"`python -m studies.monarch_speed` — batch {result['results'][0]['batch']}, "
             f"{result['threads']} thread(s), 1-min load average "
             f"{result['load_average_1min']:.1f} (shared machine); speed-up = median dense "
             f"time / median Monarch time over {repeats} alternated repeats; block "
             f"products by {_native_backend(result)}", "",
             "| n | nblocks | FLOP ratio | " + " | ".join(
                 f"{LABELS[mode]} speed-up | % of FLOP ratio" for mode in MODES) + " |",
             "|---:|---:|---:|" + "---:|---:|" * len(MODES)]
    for r in result["results"]:
        lines.append(f"| {r['n']} | {r['nblocks']} | {r['flop_ratio']:.1f}x | " + " | ".join(
            f"{r[mode]['speedup']:.1f}x | {r[mode]['pct_of_flop_ratio']:.0f}%"
            for mode in MODES) + " |")
    lines += ["", "Where a row-major Monarch forward spends its time (self CPU time per "
              f"profiled op, {PROFILED_CALLS} calls; `neuralnum::monarch_rows` runs both "
              "factors' products, chunk after chunk, `neuralnum::transpose` re-lays out the "
              "small `R` and `L` once per call):", ""]
    lines += [f"- n = {r['n']}: " + ", ".join(f"`{p['op']}` {100 * p['share']:.0f}%"
                                            for p in r["profile_forward"])
              for r in result["results"]]
    lines += ["", targets_table(result["verdicts"])]
    return "\n".join(lines)


def _native_backend(result: dict) -> str:
    """The block products' implementation, for the results block (no machine paths)."""
    status = result.get("native", "torch: not recorded")
    return ("the compiled kernels (`kernels.native`)" if status.startswith("native")
            else f"torch ({status.removeprefix('torch: ')})")


def _plot(report: dict, path: Path) -> None:
    """Wall-clock speed-ups (medians) per mode beside the FLOP ratio; the CPU-time
    speed-ups are in the JSON and the printed table."""
    rows = report["results"]
    ns = [r["n"] for r in rows]
    fig, ax = figure()
    ax.plot(ns, [r["flop_ratio"] for r in rows], "k--o", label="FLOP ratio")
    for mode, marker in zip(MODES, "o^s", strict=True):
        ax.plot(ns, [r[mode]["speedup"] for r in rows], "-" + marker, label=LABELS[mode])
    ax.set(xscale="log", yscale="log", xlabel="n (nblocks ≈ √n)", ylabel="dense / Monarch",
           title=f"Monarch vs dense, batch {rows[0]['batch']}, {report['threads']} thread(s), "
                 f"median of {report['repeats']}")
    ax.set_xticks(ns, [str(n) for n in ns], minor=False)
    ax.set_xticks([], minor=True)
    ax.legend(loc="lower right")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    parser = study_parser(NAME, __doc__, quick_help="7 repeats (default: 9)",
                          full_help="15 repeats, n up to 8192")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads (default 1: the machine is shared)")
    parser.add_argument("--batch", type=positive_int, default=1024)
    args = parser.parse_args(argv)
    sizes = [1024, 2048, 4096] + ([8192] if args.full else [])
    repeats = 7 if args.quick else 15 if args.full else 9
    report = run_study(sizes, args.batch, repeats, args.threads)
    report["verdicts"] = verdicts(report)
    _print(report)
    write_report(args.out, NAME, report)
    _plot(report, args.out / f"{NAME}.png")
    return report


if __name__ == "__main__":
    run_cli(main)
