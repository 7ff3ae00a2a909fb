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

import argparse
import json
import os
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before kernels.long_conv_triton is imported

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from studies.kernel_bench import check_correctness

LENGTHS = {"quick": (256, 8192, 16384), "full": (256, 8192, 16384, 32768, 65536)}
DTYPES = (torch.float32, torch.float64)


def run(lengths: tuple[int, ...]) -> list[dict]:
    """One row per ``(L, dtype)``: plan, max relative error over ``y`` and the gradients."""
    from kernels.long_conv_triton import plan

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
    fig, ax = plt.subplots(figsize=(6, 4))
    for dtype in sorted({r["dtype"] for r in rows}):
        pts = [(r["L"], r["max_rel_err"]) for r in rows if r["dtype"] == dtype]
        ax.loglog(*zip(*pts, strict=True), "o-", base=2, label=f"{dtype} (Triton vs torch.fft)")
        ax.axhline(rows[[r["dtype"] for r in rows].index(dtype)]["tol"], ls="--", lw=0.8)
    ax.set(xlabel="L", ylabel="max relative error (y and gradients)",
           title="Monarch-DFT long convolution, interpreter")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="L = 256, 8192, 16384 (default)")
    size.add_argument("--full", action="store_true", help="also L = 32768, 65536")
    parser.add_argument("--out", type=Path, default=Path("runs/long_conv_lengths"))
    args = parser.parse_args(argv)
    rows = run(LENGTHS["full" if args.full else "quick"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "long_conv_lengths.json").write_text(json.dumps(rows, indent=2))
    plot(rows, args.out / "long_conv_lengths.png")
    cols = ("L", "dtype", "passes", "N1", "N2", "max_rel_err", "tol", "ok")
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(f"{row[c]:.2e}" if c == "max_rel_err" else str(row[c]) for c in cols))
    return rows


if __name__ == "__main__":
    main()
