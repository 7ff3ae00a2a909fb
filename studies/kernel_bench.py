"""Kernel benchmark: fused Monarch multiply and Monarch-DFT long convolution, side by side.

    python -m studies.kernel_bench [--quick | --full] [--gpu] [--out DIR]

Monarch multiply ``y = P L Pᵀ R x`` (square, ``n = m²``): fused Triton kernel vs the
two-``bmm`` reference vs a dense ``nn.Linear`` (cuBLAS / MKL). Long convolution: Triton
Monarch-DFT vs the ``torch.fft`` reference, ungated and gated. On CPU only the reference
paths run (Triton needs a GPU; the interpreter is for tests), and the output says so.

``--gpu`` (CUDA required) is one short run, a few minutes on an H100/H200: it first checks
the Triton kernels against the references (forward and backward, fp64/fp32 at small
sizes and at ``L = 16384`` (the three-pass convolution plan), bf16 at benchmark size), then
times at the target sizes (``n = 4096``, batch 8192, bf16; ``L = 4096``; also
``L = 16384``) and prints the speedups next to the targets: fused ≥ 1.5×
the two-``bmm`` reference, ≥ 60% of the dense/Monarch FLOP ratio as real speedup over
cuBLAS dense, Monarch-DFT convolution ≥ 2× ``torch.fft``. Every measurement is guarded:
a failing row is recorded with its error and the run continues. Writes
``DIR/kernel_bench.json``, ``DIR/kernel_bench.md`` (the table) and ``DIR/kernel_bench.png``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

import kernels
from kernels import long_conv_reference, monarch_matmul_reference, use_backend
from neuralnum.core.runtime import make_generator, progress
from studies import markdown as md
from studies.study_io import figure_row, run_cli, save_figure, study_parser, write_report

NAME = "kernel_bench"
TARGETS = {"fused_vs_bmm": 1.5, "fraction_of_flop_ratio": 0.6, "conv_vs_fft": 2.0}


@dataclass(frozen=True)
class Sizes:
    """Benchmark grid: Monarch widths and batch, conv lengths and (batch, channels)."""

    monarch_n: tuple[int, ...]
    monarch_batch: int
    conv_len: tuple[int, ...]
    conv_batch: int
    conv_channels: int
    dtype: torch.dtype
    repeats: int


SIZES = {
    "quick": Sizes((256, 1024, 4096), 256, (256, 1024, 4096), 4, 32, torch.float32, 3),
    "full": Sizes((256, 1024, 4096), 2048, (256, 1024, 4096, 16384), 8, 64,
                  torch.float32, 5),
    # target sizes first: results are saved after every section, so a cut-off run keeps them
    "gpu": Sizes((4096, 1024), 8192, (4096, 1024, 8192, 16384), 8, 768, torch.bfloat16, 0),
}


def time_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms (``triton.testing.do_bench`` on CUDA)."""
    fn()  # warm-up: compilation, autotuning, allocator
    if device.type == "cuda":
        import triton.testing  # optional: triton, on CUDA only

        return float(triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median"))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(1e3 * (time.perf_counter() - start))
    return statistics.median(samples)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _guard(errors: list[str], what: str, fn: Callable[[], object]):
    """Run ``fn``; on failure record ``what`` and the error, return ``None``."""
    try:
        return fn()
    except Exception as exc:  # a benchmark row must never abort the run
        errors.append(f"{what}: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        return None


def _measure(errors: list[str], what: str, fn: Callable[[], object], device,
             repeats: int) -> float | None:
    """Guarded :func:`time_ms`: ``None`` (and the error recorded) if ``fn`` fails."""
    return _guard(errors, what, partial(time_ms, fn, device, repeats))


def _forward_backward(fn, leaves, gy):
    return torch.autograd.grad(fn(*leaves), leaves, gy)


def _monarch_inputs(n: int, batch: int, dtype, device, seed: int = 0):
    m = math.isqrt(n)
    g = make_generator(seed, device)
    x = torch.randn(batch, n, generator=g, device=device, dtype=dtype)
    R = torch.randn(m, m, m, generator=g, device=device, dtype=dtype) / math.sqrt(m)
    L = torch.randn(m, m, m, generator=g, device=device, dtype=dtype) / math.sqrt(m)
    return x, R, L


def _conv_inputs(batch: int, channels: int, length: int, dtype, device, seed: int = 0):
    g = make_generator(seed, device)

    def rand(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=dtype)

    k = rand(channels, length) / math.sqrt(length)
    return rand(batch, channels, length), k, rand(batch, channels, length), rand(
        batch, channels, length)


def _triton(fn, *args):
    with use_backend("triton"):
        return fn(*args)


def bench_monarch(sizes: Sizes, device, gpu: bool, errors: list[str]) -> list[dict]:
    rows = []
    for n in progress(sizes.monarch_n, desc="monarch"):
        x, R, L = _monarch_inputs(n, sizes.monarch_batch, sizes.dtype, device)
        dense = torch.nn.Linear(n, n, bias=False, device=device, dtype=sizes.dtype)
        row = {"n": n, "batch": sizes.monarch_batch, "dtype": str(sizes.dtype),
               "flop_ratio": n * n / (2 * n**1.5)}
        forward = {"bmm_ms": partial(monarch_matmul_reference, x, R, L),
                   "dense_ms": partial(dense, x)}
        if gpu:
            forward["triton_ms"] = partial(_triton, kernels.monarch_matmul, x, R, L)
        with torch.no_grad():
            for name, fn in forward.items():
                row[name] = _measure(errors, f"monarch {name} n={n}", fn, device, sizes.repeats)
        if gpu:  # forward + backward (x, R, L all need gradients)
            leaves = [t.clone().requires_grad_() for t in (x, R, L)]
            gy = torch.randn_like(x)
            for name, fn in (("bmm_train_ms", monarch_matmul_reference),
                             ("triton_train_ms", partial(_triton, kernels.monarch_matmul))):
                row[name] = _measure(errors, f"monarch {name} n={n}", partial(
                    _forward_backward, fn, leaves, gy), device, sizes.repeats)
        rows.append(_ratios(row, "triton_ms", ("bmm_ms", "dense_ms")))
    return rows


def bench_conv(sizes: Sizes, device, gpu: bool, errors: list[str]) -> list[dict]:
    rows = []
    for length in progress(sizes.conv_len, desc="long conv"):
        u, k, pre, post = _conv_inputs(sizes.conv_batch, sizes.conv_channels, length,
                                       sizes.dtype, device)
        for gated in (False, True):
            args = (u, k, pre, post) if gated else (u, k)
            row = {"L": length, "batch": sizes.conv_batch, "channels": sizes.conv_channels,
                   "gated": gated, "dtype": str(sizes.dtype)}
            forward = {"fft_ms": partial(long_conv_reference, *args)}
            if gpu:
                forward["triton_ms"] = partial(_triton, kernels.long_conv, *args)
            with torch.no_grad():
                for name, fn in forward.items():
                    row[name] = _measure(errors, f"conv {name} L={length} gated={gated}", fn,
                                         device, sizes.repeats)
            rows.append(_ratios(row, "triton_ms", ("fft_ms",)))
    return rows


def _ratios(row: dict, ours: str, others: tuple[str, ...]) -> dict:
    """Add ``speedup_vs_<other>`` = other time / our time where both were measured."""
    for other in others:
        if row.get(ours) and row.get(other):
            row[f"speedup_vs_{other[:-3]}"] = row[other] / row[ours]
    return row


# (kernel, dtype, shape): Monarch (n, batch), conv (batch, channels, L)
GPU_CHECKS = (
    ("monarch", torch.float64, (64, 333)), ("monarch", torch.float32, (64, 333)),
    ("conv", torch.float64, (3, 5, 1024)), ("conv", torch.float32, (3, 5, 1024)),
    # L = 16384 runs the three-pass plan
    ("conv", torch.float64, (2, 3, 16384)), ("conv", torch.float32, (2, 3, 16384)),
    ("monarch", torch.bfloat16, (4096, 8192)), ("conv", torch.bfloat16, (8, 768, 4096)),
)


def check_correctness(device, errors: list[str], cases=GPU_CHECKS) -> list[dict]:
    """Triton vs reference, forward and backward: fp64/fp32 small, bf16 at bench size."""
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}
    results = []
    for kind, dtype, shape in cases:
        def run(kind=kind, dtype=dtype, shape=shape):
            if kind == "monarch":
                inputs, fn, ref = _monarch_inputs(shape[0], shape[1], dtype, device), \
                    kernels.monarch_matmul, monarch_matmul_reference
            else:
                inputs, fn, ref = _conv_inputs(*shape, dtype, device), kernels.long_conv, \
                    long_conv_reference
            # bf16: compare both against the fp32 reference of the same (rounded) inputs
            exact = [t.float() if dtype == torch.bfloat16 else t for t in inputs]
            got = _value_and_grads(lambda *a: _triton(fn, *a), inputs)
            want = _value_and_grads(ref, exact)
            errs = [rel_err(a, b) for a, b in zip(got, want, strict=True)]
            return {"kernel": kind, "dtype": str(dtype), "shape": list(shape),
                    "max_rel_err": max(errs), "tol": tol[dtype], "ok": max(errs) < tol[dtype]}
        result = _guard(errors, f"correctness {kind} {dtype}", run)
        results.append(result or {"kernel": kind, "dtype": str(dtype), "ok": False})
    return results


def _value_and_grads(fn, inputs):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*leaves)
    gy = torch.ones_like(y).div_(math.sqrt(y.numel()))
    return (y, *torch.autograd.grad(y, leaves, gy))


def target_lines(monarch: list[dict], conv: list[dict]) -> list[dict]:
    """The three GPU targets (:data:`TARGETS`), measured (``None`` when a row is missing)."""
    at_n = next((r for r in monarch if r["n"] == 4096), {})
    at_l = next((r for r in conv if r["L"] == 4096 and not r["gated"]), {})
    vs_dense = at_n.get("speedup_vs_dense")
    fraction = vs_dense / at_n["flop_ratio"] if vs_dense else None
    measured = [
        ("fused Monarch vs two-bmm, n=4096", at_n.get("speedup_vs_bmm"), "fused_vs_bmm"),
        ("fused Monarch vs dense, as fraction of FLOP ratio", fraction, "fraction_of_flop_ratio"),
        ("Monarch-DFT conv vs torch.fft, L=4096", at_l.get("speedup_vs_fft"), "conv_vs_fft"),
    ]
    return [{"target": name, "key": key, "measured": value, "goal": TARGETS[key],
             "met": None if value is None else value >= TARGETS[key]}
            for name, value, key in measured]


def verdicts(result: dict) -> dict[str, bool]:
    """The GPU targets (:data:`TARGETS`: measured speed-up ≥ goal) for each target that
    was measured, and ``correctness`` (every Triton-vs-reference check within tolerance)
    when the checks ran; a CPU run measures none of them and has no verdicts."""
    out = {line["key"]: line["measured"] >= TARGETS[line["key"]]
           for line in result.get("targets") or [] if line["measured"] is not None}
    if result.get("correctness"):
        out["correctness"] = all(c.get("ok") and c["max_rel_err"] < c["tol"]
                                 for c in result["correctness"])
    return out


def headline(result: dict) -> str:
    """The results-index line: the GPU targets measured (or that none was) and the device."""
    measured = [t for t in result.get("targets") or [] if t["measured"] is not None]
    if not measured:
        return (f"GPU targets not measured (no GPU in this run; reference timings on "
                f"{result['device']})")
    return "; ".join(f"{t['target']}: {md.num(t['measured'])} (goal ≥ {t['goal']:g})"
                     for t in measured) + f" on {result['device']}"


def tables(result: dict) -> str:
    """Results block: the GPU targets (or that they were not measured) and the timings,
    each header naming its statistic."""
    stat = ("median of triton.testing.do_bench" if result["mode"] == "gpu" else
            f"median of {result.get('repeats', '?')}")
    v = verdicts(result)
    lines = [md.command(result, f"on {result['device']}"), ""]
    if result.get("targets"):
        lines += [md.table(["GPU target", "measured", "goal", "met"], [
            [t["target"], md.num(t["measured"]), f"≥ {t['goal']:g}",
             "—" if t["key"] not in v else ("**met**" if v[t["key"]] else "**not met**")]
            for t in result["targets"]]), ""]
    else:
        lines += ["GPU targets (fused multiply ≥ 1.5× two-`bmm` at n = 4096, ≥ 60% of the "
                  "FLOP ratio over dense, Monarch-DFT convolution ≥ 2× `torch.fft` at "
                  "L = 4096): **not measured** (no GPU in this run).", ""]
    mon_cols = [("n", str), ("batch", md.count), ("flop_ratio", md.num),
                ("triton_ms", md.num), ("bmm_ms", md.num), ("dense_ms", md.num),
                ("speedup_vs_bmm", md.times), ("speedup_vs_dense", md.times)]
    conv_cols = [("L", str), ("batch", md.count), ("channels", md.count), ("gated", str),
                 ("triton_ms", md.num), ("fft_ms", md.num), ("speedup_vs_fft", md.times)]
    for rows, cols in ((result["monarch"], mon_cols), (result["conv"], conv_cols)):
        cols = [(c, f) for c, f in cols if any(c in r for r in rows)]
        header = [c.replace("_ms", f" ms ({stat})") for c, _ in cols]
        lines += [md.table(header, [[f(r.get(c)) for c, f in cols] for r in rows]), ""]
    if result.get("correctness"):
        lines += [f"Triton vs reference (forward and backward): "
                  f"**{'met' if v['correctness'] else 'not met'}**."]
    return "\n".join(lines).rstrip("\n")


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def markdown(result: dict) -> str:
    """The run as Markdown tables (also printed)."""
    lines = [f"# kernel_bench ({result['mode']}) on {result['device']}", "", result["note"], ""]
    for section, cols in (("monarch", ["n", "batch", "dtype", "triton_ms", "bmm_ms",
                                       "dense_ms", "speedup_vs_bmm", "speedup_vs_dense",
                                       "flop_ratio", "triton_train_ms", "bmm_train_ms"]),
                          ("conv", ["L", "batch", "channels", "gated", "dtype", "triton_ms",
                                    "fft_ms", "speedup_vs_fft"]),
                          ("correctness", ["kernel", "dtype", "shape", "max_rel_err", "tol", "ok"]),
                          ("targets", ["target", "measured", "goal", "met"])):
        rows = result.get(section) or []
        if not rows:
            continue
        cols = [c for c in cols if any(c in r for r in rows)]
        lines += [f"## {section}", "", "| " + " | ".join(cols) + " |",
                  "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
        lines.append("")
    if result["errors"]:
        lines += ["## errors", ""] + [f"- {e}" for e in result["errors"]]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    fig, axes = figure_row(2, (10, 4))
    panels = ((axes[0], result["monarch"], "n", ("triton_ms", "bmm_ms", "dense_ms"),
               "Monarch multiply (forward)"),
              (axes[1], [r for r in result["conv"] if not r["gated"]], "L",
               ("triton_ms", "fft_ms"), "long convolution (ungated)"))
    for ax, rows, x, keys, title in panels:
        for key in keys:
            pts = sorted((r[x], r[key]) for r in rows if r.get(key))
            if pts:
                ax.loglog(*zip(*pts, strict=True), "o-", label=key[:-3], base=2)
        ax.set(xlabel=x, ylabel="ms (median)", title=title)
        ax.legend()
    fig.suptitle(f"{result['mode']}: {result['device']}")
    save_figure(fig, path)


def _save(result: dict, out: Path) -> str:
    """Write ``kernel_bench.json`` and ``kernel_bench.md``; return the Markdown."""
    write_report(out, "kernel_bench", result)
    table = markdown(result)
    (out / "kernel_bench.md").write_text(table)
    return table


def main(argv: list[str] | None = None) -> dict:
    parser = study_parser("kernel_bench", __doc__, quick_help="small CPU grid (default)",
                          full_help="larger CPU grid",
                          modes={"gpu": "correctness + timing on CUDA"})
    args = parser.parse_args(argv)
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu needs a CUDA device (torch.cuda.is_available() is False)")
    mode = "gpu" if args.gpu else "full" if args.full else "quick"
    device = torch.device("cuda" if args.gpu else "cpu")
    result = {
        "command": md.study_command(NAME, argv), "repeats": SIZES[mode].repeats,
        "mode": mode,
        "device": torch.cuda.get_device_name() if args.gpu else "CPU",
        "torch": torch.__version__,
        "note": ("GPU run: Triton kernels vs references, medians of triton.testing.do_bench."
                 if args.gpu else
                 "CPU run: reference paths only (two-bmm, dense nn.Linear, torch.fft); the "
                 "Triton kernels need a GPU (run with --gpu). One CPU thread; CPU timings on "
                 "a shared machine are indicative only."),
    }
    threads = torch.get_num_threads()
    if not args.gpu:
        torch.set_num_threads(1)  # steadier medians on a busy machine
    try:
        return _run(args, mode, device, result)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, mode: str, device: torch.device, result: dict) -> dict:
    """The measurements of :func:`main`, then the JSON, Markdown and PNG outputs."""
    sizes = SIZES[mode]
    errors: list[str] = []
    print(result["note"])
    result.update(errors=errors, monarch=[], conv=[])
    args.out.mkdir(parents=True, exist_ok=True)
    if args.gpu:
        result["correctness"] = check_correctness(device, errors)
        _save(result, args.out)
    result["monarch"] = bench_monarch(sizes, device, args.gpu, errors)
    _save(result, args.out)
    result["conv"] = bench_conv(sizes, device, args.gpu, errors)
    if args.gpu:
        result["targets"] = target_lines(result["monarch"], result["conv"])
    result["verdicts"] = verdicts(result)
    _guard(errors, "plot", lambda: plot(result, args.out / "kernel_bench.png"))
    table = _save(result, args.out)
    print(table)
    print(f"wrote {args.out}/kernel_bench.json, .md, .png")
    return result


if __name__ == "__main__":
    run_cli(main)
