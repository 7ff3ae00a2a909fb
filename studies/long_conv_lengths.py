"""Accuracy of the Monarch-DFT long convolution over ``L``, both plans, on CPU.

    python -m studies.long_conv_lengths [--quick | --full] [--out DIR]

Runs the Triton kernels under Triton's interpreter (``TRITON_INTERPRET=1``, set here
before the kernel modules load; NumPy dots in the kernels' own fp32/fp64 arithmetic) for
one ``(batch, channel)`` row with both gates, and compares the output and the four
gradients with the ``torch.fft`` reference in the same dtype (the GPU check of
``studies.kernel_bench``, at other sizes). ``--quick``: ``L = 256, 8192`` (one pass) and
``16384`` (three passes), about a minute on 2 cores; ``--full`` adds ``L = 32768, 65536``
(three passes up to ``MAX_LENGTH``; several minutes). Writes
``DIR/long_conv_lengths.json`` and ``DIR/long_conv_lengths.png``, prints a table.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before kernels.long_conv_triton is imported

import torch

from kernels.long_conv_triton import plan
from studies import markdown as md
from studies.kernel_bench import check_correctness
from studies.study_io import figure, run_cli, save_figure, study_parser, write_report

NAME = "long_conv_lengths"
LENGTHS = {"quick": (256, 8192, 16384), "full": (256, 8192, 16384, 32768, 65536)}
DTYPES = (torch.float32, torch.float64)


def run(lengths: tuple[int, ...]) -> list[dict]:
    """One row per ``(L, dtype)``: plan, max relative error over ``y`` and the gradients."""
    cases = [("conv", dtype, (1, 1, length)) for length in lengths for dtype in DTYPES]
    errors: list[str] = []
    rows = check_correctness(torch.device("cpu"), errors, cases)
    for row, (_, dtype, (_, _, length)) in zip(rows, cases, strict=True):
        p = plan(length, dtype)
        row.update(L=length, passes=1 if p.one_pass else 3, N1=p.n1, N2=p.n2)
    if errors:
        raise RuntimeError("; ".join(errors))
    return rows


def plot(rows: list[dict], path: Path) -> None:
    fig, ax = figure((6, 4))
    for dtype in sorted({r["dtype"] for r in rows}):
        pts = [(r["L"], r["max_rel_err"]) for r in rows if r["dtype"] == dtype]
        ax.loglog(*zip(*pts, strict=True), "o-", base=2, label=f"{dtype} (Triton vs torch.fft)")
        ax.axhline(rows[[r["dtype"] for r in rows].index(dtype)]["tol"], ls="--", lw=0.8)
    ax.set(xlabel="L", ylabel="max relative error (y and gradients)",
           title="Monarch-DFT long convolution, interpreter")
    ax.legend()
    save_figure(fig, path)


def verdicts(result: dict) -> dict[str, bool]:
    """``all_within_tolerance``: at every length and dtype the largest relative error of
    ``y`` and the gradients is below the dtype's tolerance (1e-5 fp32, 1e-12 fp64)."""
    return {"all_within_tolerance": all(r["max_rel_err"] < r["tol"] for r in result["rows"])}


def headline(result: dict) -> str:
    """The results-index line: the largest relative error per dtype over all lengths."""
    rows = result["rows"]
    errors = ", ".join(
        f"{md.sci(max(r['max_rel_err'] for r in rows if r['dtype'] == d), 1)} "
        f"({d.removeprefix('torch.')})" for d in dict.fromkeys(r["dtype"] for r in rows))
    return (f"Monarch-DFT convolution vs `torch.fft` up to L = {max(r['L'] for r in rows)}: "
            f"max relative error {errors}")


def tables(result: dict) -> str:
    """Results block: max relative error per length and dtype, with the plan each ran."""
    rows = result["rows"]
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    cell = {(r["L"], r["dtype"]): r for r in rows}
    lines = []
    for length in dict.fromkeys(r["L"] for r in rows):
        plans = {d: "one pass" if cell[length, d]["passes"] == 1 else "three passes"
                 for d in dtypes}
        plan = (next(iter(plans.values())) if len(set(plans.values())) == 1 else
                " / ".join(f"{p} ({d.removeprefix('torch.')})" for d, p in plans.items()))
        lines.append([str(length), plan, *(md.sci(cell[length, d]["max_rel_err"], 1)
                                           for d in dtypes)])
    met = verdicts(result)["all_within_tolerance"]
    return "\n".join([
        md.command(result, "Triton (interpreter) vs `torch.fft`, one gated row, output and "
                           "the four gradients"), "",
        md.table(["L", "plan", *(f"{d.removeprefix('torch.')}: max relative error"
                                 for d in dtypes)], lines), "",
        f"Target — every error below its dtype's tolerance "
        f"({', '.join(dict.fromkeys(md.sci(r['tol'], 0) for r in rows))}): "
        f"**{'met' if met else 'not met'}**."])


def main(argv: list[str] | None = None) -> dict:
    parser = study_parser(NAME, __doc__, quick_help="L = 256, 8192, 16384 (default)",
                          full_help="also L = 32768, 65536")
    args = parser.parse_args(argv)
    rows = run(LENGTHS["full" if args.full else "quick"])
    result = {"command": md.study_command(NAME, argv), "rows": rows}
    result["verdicts"] = verdicts(result)
    write_report(args.out, NAME, result)
    plot(rows, args.out / "long_conv_lengths.png")
    cols = ("L", "dtype", "passes", "N1", "N2", "max_rel_err", "tol", "ok")
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(f"{row[c]:.2e}" if c == "max_rel_err" else str(row[c]) for c in cols))
    return result


if __name__ == "__main__":
    run_cli(main)
