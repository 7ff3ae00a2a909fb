"""Ahead-of-time compile of the Triton kernels for a GPU target, on a machine without one.

    python -m studies.kernel_compile [--quick | --full] [--arch 90] [--out DIR]

Compiles the fused Monarch kernel (every autotune config, bf16, ``n = 4096``) and the
Monarch-DFT convolution kernels over ``L`` (the one-pass kernel, bf16, every warp count;
past ``ONE_PASS_MAX_N`` the three pass kernels, bf16, fp32 and fp64, with the module's
warps, ``--full``: 4 and 8) for ``sm_<arch>`` (default 90: H100/H200) and reports, per
variant, registers per thread, stack bytes per thread (spills), shared memory and whether
it fits the SM (227 KB on sm_90). Nothing is run: this checks that the kernels compile for
the GPU and how heavy they are, not speed.
Needs Triton's bundled ``ptxas``/``cuobjdump`` and must run without ``TRITON_INTERPRET``.
Writes ``DIR/kernel_compile.json`` and prints a table. ``--quick``: ``L = 4096, 16384``.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels import _triton_common, long_conv_triton, monarch_triton
from neuralnum.core.runtime import progress
from studies import markdown as md
from studies.study_io import run_cli, study_parser, write_report

NAME = "kernel_compile"
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}  # bytes per block (opt-in)


def _resources(cubin: bytes) -> dict:
    """Registers and stack per thread from ``cuobjdump -res-usage``."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    match = re.search(r"REG:(\d+)\s+STACK:(\d+)", out)
    return {"registers": int(match[1]), "stack_bytes": int(match[2])} if match else {}


def compile_variant(fn, pointers: dict[str, str], constexprs: dict, warps: int, stages: int,
                    arch: int) -> dict:
    """Compile ``fn`` (a JITFunction); ``pointers`` maps pointer args to ``"*bf16"`` etc."""
    names = fn.arg_names
    signature = {n: pointers.get(n) or ("constexpr" if n in constexprs else "i32")
                 for n in names}
    source = ASTSource(fn=fn, signature=signature,
                       constexprs={(names.index(k),): v for k, v in constexprs.items()})
    start = time.perf_counter()
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": warps, "num_stages": stages})
    shared = compiled.metadata.shared
    return {"num_warps": warps, "num_stages": stages, "shared_bytes": shared,
            "fits": shared <= SHARED_LIMIT.get(arch, 101376),
            "compile_s": round(time.perf_counter() - start, 1), **_resources(compiled.asm["cubin"])}


def monarch_variants(arch: int) -> list[dict]:
    ptrs = {n: "*bf16" for n in ("x_ptr", "w1_ptr", "w2_ptr", "z_ptr", "t_ptr")}
    rows = []
    for bn, bm, be, ba, warps, stages in progress(monarch_triton.GPU_CONFIGS, desc="monarch"):
        blocks = {"BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_E": be, "BLOCK_A": ba}
        const = {"B1_PAD": 64, "STORE_T": True, "UPCAST": False, "ACC": tl.float32,
                 "PRECISION": "tf32", **blocks}
        rows.append({"kernel": "monarch n=4096 bf16", **blocks, **compile_variant(
            monarch_triton._fused_two_stage_kernel.fn, ptrs, const, warps, stages, arch)})
    return rows


def _conv_pointers(io: str, compute: str = "*fp32") -> dict[str, str]:
    """Pointer types of the convolution kernels: ``io`` (``"*bf16"``/``"*fp32"``) for the
    activations and gates, ``compute`` for spectra, scratch and DFT factors."""
    ptrs = {n: io for n in ("u_ptr", "x_ptr", "gate_ptr", "pre_ptr", "post_ptr", "y_ptr",
                            "c_ptr")}
    return ptrs | {n: compute for n in ("sr_ptr", "si_ptr", "ar_ptr", "ai_ptr", "cr_ptr",
                                        "ci_ptr", "f1r_ptr", "f1i_ptr", "f2r_ptr", "f2i_ptr",
                                        "tr_ptr", "ti_ptr")}


def _pass_kernels(p: long_conv_triton.Plan, precision: str,
                  compute: tl.dtype = tl.float32) -> list[tuple[str, object, dict]]:
    """The three-pass kernels (name, JITFunction, compile-time constants) for plan ``p``."""
    gated = {"COMPUTE": compute, "PRECISION": precision}
    blocks = {"BLOCK_M": p.block_m, "BLOCK_K": p.block_k, "BLOCK_C": p.block_c}
    sizes = {"N1": p.n1, "N2": p.n2}
    return [
        ("columns_forward", long_conv_triton._columns_forward_kernel,
         {**sizes, **blocks, **gated, "IN_ROWS": p.n1 // 2, "HAS_GATE": True}),
        ("rows", long_conv_triton._rows_kernel,
         {**sizes, "BLOCK_R": p.block_r, "SPECTRUM": False, "PRECISION": precision}),
        ("columns_inverse", long_conv_triton._columns_inverse_kernel,
         {**sizes, **blocks, **gated, "HAS_POST": True, "STORE_C": True, "UPCAST": False}),
    ]


# activation dtype → (torch compute dtype, Triton compute dtype, tl.dot precision)
CONV_DTYPES = {"bf16": (torch.float32, tl.float32, "tf32"),
               "fp32": (torch.float32, tl.float32, "ieee"),
               "fp64": (torch.float64, tl.float64, "ieee")}


def conv_variants(lengths: tuple[int, ...], arch: int, all_warps: bool = False) -> list[dict]:
    """Compile the convolution kernels of each length's plan: the one-pass kernel (bf16
    activations) for every warp count in ``GPU_WARPS``; or each of the three pass kernels,
    for bf16, fp32 and fp64 activations, with the warps the module uses (``all_warps``: 4
    and 8). (fp32/fp64 IEEE dots run on CUDA cores; the one-pass kernel is compiled for
    bf16 only.)"""
    jobs = [(n, io) for n in lengths
            for io in (("bf16",) if long_conv_triton.plan(n).one_pass else CONV_DTYPES)]
    rows = []
    for length, io in progress(jobs, desc="long conv"):
        torch_compute, compute, precision = CONV_DTYPES[io]
        ptrs = _conv_pointers(f"*{io}", "*fp64" if io == "fp64" else "*fp32")
        p = long_conv_triton.plan(length, torch_compute)
        if p.one_pass:
            const = {"N1": p.n1, "N2": p.n2, "HAS_PRE": True, "HAS_POST": True,
                     "STORE_C": False, "COMPUTE": compute, "PRECISION": precision,
                     "UPCAST": False}
            variants = [("one pass", long_conv_triton._conv_kernel, const, w)
                        for w in long_conv_triton.GPU_WARPS]
        else:
            used = long_conv_triton.PASS_WARPS
            variants = [(name, fn, const, w)
                        for name, fn, const in _pass_kernels(p, precision, compute)
                        for w in ((4, 8) if all_warps else (used[name.split("_")[0]],))]
        for name, fn, const, warps in variants:
            rows.append({"kernel": f"long_conv L={length} {io} {name}", "N1": p.n1,
                         "N2": p.n2, **compile_variant(fn, ptrs, const, warps, 1, arch)})
    return rows


def verdicts(result: dict) -> dict[str, bool]:
    """``all_fit``: every compiled variant's shared memory fits the target's SM
    (:data:`SHARED_LIMIT`); a run that compiled nothing does not count as fitting."""
    rows = result["monarch"] + result["conv"]
    limit = SHARED_LIMIT.get(result["arch"], 101376)
    return {"all_fit": bool(rows) and all(r["shared_bytes"] <= limit for r in rows)}


def headline(result: dict) -> str:
    """The results-index line: how many variants were compiled and how many fit."""
    rows = result["monarch"] + result["conv"]
    return (f"{sum(r['fits'] for r in rows)} of {len(rows)} kernel variants fit an "
            f"sm_{result['arch']} SM's shared memory (Triton {result['triton']}, compiled "
            f"ahead of time)")


def tables(result: dict) -> str:
    """Results block: resources per compiled variant (nothing is run)."""
    def name(r: dict) -> str:
        tiles = "×".join(str(r[k]) for k in ("BLOCK_N", "BLOCK_M", "BLOCK_E", "BLOCK_A")
                         if k in r)
        return f"{r['kernel']} (tiles N×M×E×A {tiles})" if tiles else r["kernel"]

    rows = [[name(r), str(r["num_warps"]), str(r["num_stages"]),
             str(r.get("registers", "—")), str(r.get("stack_bytes", "—")),
             f"{r['shared_bytes'] / 1024:.0f}", "yes" if r["fits"] else "**no**"]
            for r in result["monarch"] + result["conv"]]
    met = verdicts(result)["all_fit"]
    limit = SHARED_LIMIT.get(result["arch"], 101376)
    return "\n".join([
        md.command(result, f"ahead-of-time compile for sm_{result['arch']} with Triton "
                           f"{result['triton']}, nothing run"), "",
        md.table(["kernel", "warps", "stages", "registers / thread", "stack (spill) bytes / thread",
                  "shared KB", f"fits ({limit // 1024} KB)"], rows), "",
        f"Target — every variant fits the SM's shared memory: "
        f"**{'met' if met else 'not met'}**."])


def main(argv: list[str] | None = None) -> dict:
    parser = study_parser("kernel_compile", __doc__,
                          quick_help="L = 4096 (one pass) and 16384 (three passes) (default)",
                          full_help="L = 256 … 65536 (several minutes)")
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90")
    args = parser.parse_args(argv)
    if _triton_common.INTERPRETED:
        parser.error("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    lengths = (256, 1024, 4096, 8192, 16384, 65536) if args.full else (4096, 16384)
    result = {"command": md.study_command(NAME, argv), "arch": args.arch,
              "triton": triton.__version__, "monarch": monarch_variants(args.arch),
              "conv": conv_variants(lengths, args.arch, all_warps=args.full)}
    result["verdicts"] = verdicts(result)
    write_report(args.out, "kernel_compile", result)
    cols = ("kernel", "num_warps", "num_stages", "registers", "stack_bytes", "shared_bytes",
            "fits", "compile_s")
    print(f"sm_{args.arch}, Triton {triton.__version__}")
    print(" | ".join(cols))
    for row in result["monarch"] + result["conv"]:
        print(" | ".join(str(row.get(c, "—")) for c in cols))
    return result


if __name__ == "__main__":
    run_cli(main)
