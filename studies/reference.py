"""Ground truth and plain GD on the least-squares problem suite.

``python -m studies.reference [--quick|--full] [--out DIR] [--seed S]``

For each problem family (float64 unless said otherwise):

* agreement of ``scipy.linalg.lstsq`` and ``numpy.linalg.lstsq`` with the mpmath solution
  (correct significant digits, worst and median over the batch), plus scipy in float32
  against mpmath on the same float32 data;
* gradient descent with the optimal fixed step ``2/(σ_max² + σ_min²)`` from ``x₀ = 0``:
  iterations until the relative error to the mpmath solution is ≤ 1e-12, beside the
  count the contraction bound ``ρ^k ≤ 1e-12`` predicts, and the error floor reached;
  the same GD in float32 gives the final MSE the paper quotes for exact GD.

Writes ``DIR/reference.json`` and ``DIR/reference_gd.png`` (median relative error vs
iteration per family, log scale, the contraction bound ``ρ^k`` dashed).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from neuralnum.core.runtime import make_generator, progress
from neuralnum.problems.families import family_from_name
from neuralnum.problems.reference import (
    condition_number,
    digits,
    lstsq,
    mse,
    relative_error,
)
from neuralnum.problems.targets import GDSteps, OptimalStep, contraction_factor
from studies import markdown as md
from studies.study_io import figure, run_cli, save_figure, study_parser, write_report

NAME = "reference"
FAMILIES = ("gaussian", "spectrum", "noisy", "scaled", "heavy_tailed", "rank_deficient",
            "underdetermined", "ill_conditioned")
TOL = 1e-12
#: Liu et al. (ICLR 2025): exact GD iterated in float32 plateaus near this MSE.
PAPER_EXACT_GD_MSE = 5e-15


@dataclass(frozen=True)
class Config:
    batch: int
    max_iters: int
    dps: int
    seed: int


CONFIGS = {"quick": Config(batch=8, max_iters=1000, dps=40, seed=0),
           "full": Config(batch=64, max_iters=20000, dps=60, seed=0)}


def _iterations_to(err: torch.Tensor, tol: float) -> torch.Tensor:
    """First iteration with ``err ≤ tol`` per problem (``err: (k+1, B)``); -1 if never."""
    hit = err <= tol
    first = hit.double().argmax(dim=0)
    return torch.where(hit.any(dim=0), first, torch.full_like(first, -1))


def study_family(name: str, cfg: Config, gen: torch.Generator) -> dict:
    """All measurements for one family; ``curve`` is the median error per iteration."""
    family = family_from_name(name)
    p = family.sample(cfg.batch, gen, torch.float64)
    x_mp = lstsq(p.A, p.b, "mpmath", dps=cfg.dps)
    d_scipy = digits(lstsq(p.A, p.b, "scipy"), x_mp)
    d_numpy = digits(lstsq(p.A, p.b, "numpy"), x_mp)
    p32 = p.to(torch.float32)
    x_mp32 = lstsq(p32.A, p32.b, "mpmath", dps=cfg.dps)
    d_scipy32 = digits(lstsq(p32.A, p32.b, "scipy"), x_mp32)

    step = OptimalStep()
    rho = contraction_factor(p.A, step(p.A))
    traj = GDSteps(cfg.max_iters, step).trajectory(p.A, p.b)  # (k+1, B, d)
    k1, batch, d = traj.shape
    err = relative_error(traj.reshape(-1, d), x_mp.repeat(k1, 1)).view(k1, batch)
    iters = _iterations_to(err, TOL)
    predicted = torch.ceil(math.log(TOL) / torch.log(rho.clamp(min=1e-300)))
    reached = iters >= 0
    gd32 = GDSteps(cfg.max_iters, step)(p32.A, p32.b)
    return {
        "family": name,
        "fields": asdict(family),
        "kappa_median": float(condition_number(p.A).median()),
        "digits_scipy_min": float(d_scipy.min()),
        "digits_scipy_median": float(d_scipy.median()),
        "digits_numpy_min": float(d_numpy.min()),
        "digits_scipy_f32_min": float(d_scipy32.min()),
        "gd_rho_median": float(rho.median()),
        "gd_reached": int(reached.sum()),
        "gd_iters_median": float(iters[reached].double().median()) if reached.any() else None,
        "gd_iters_max": int(iters[reached].max()) if reached.any() else None,
        "gd_iters_bound_median": float(predicted.median()),
        "gd_within_bound": int((reached & (iters <= predicted)).sum()),
        "gd_final_rel_err_median": float(err[-1].median()),
        "gd_f32_final_mse_mean": float(mse(gd32, x_mp32).mean()),
        "curve": err.median(dim=1).values.tolist(),
    }


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def print_table(rows: list[dict], cfg: Config) -> None:
    head = (f"{'family':<16}{'κ~':>9}{'scipy':>7}{'(med)':>7}{'numpy':>7}{'sp f32':>7}"
            f"{'ρ':>9}{'GD its':>11}{'max':>6}{'bound':>10}{'≤bnd':>6}{'err@end':>10}"
            f"{'f32 MSE':>10}")
    print(f"digits vs mpmath: worst over {cfg.batch} problems (median in brackets); GD: "
          f"optimal step, iterations to rel. err ≤ {TOL:g} (median / max over those that "
          f"reached it within {cfg.max_iters}), bound = ⌈log tol / log ρ⌉ (median), ≤bnd = "
          f"problems that reached tol within their own bound")
    print(head)
    print("-" * len(head))
    for r in rows:
        reached = f"{r['gd_reached']}/{cfg.batch}"
        its = _fmt(r["gd_iters_median"], ".0f") if r["gd_reached"] else f"0/{cfg.batch}"
        if 0 < r["gd_reached"] < cfg.batch:
            its = f"{its}({reached})"
        print(f"{r['family']:<16}{r['kappa_median']:>9.3g}{r['digits_scipy_min']:>7.2f}"
              f"{r['digits_scipy_median']:>7.2f}{r['digits_numpy_min']:>7.2f}"
              f"{r['digits_scipy_f32_min']:>7.2f}{r['gd_rho_median']:>9.5f}{its:>11}"
              f"{_fmt(r['gd_iters_max'], 'd'):>6}{r['gd_iters_bound_median']:>10.3g}"
              f"{r['gd_within_bound']:>6d}"
              f"{r['gd_final_rel_err_median']:>10.2e}{r['gd_f32_final_mse_mean']:>10.2e}")
    print(f"paper (Liu et al. 2025): exact GD in float32 plateaus near MSE "
          f"{PAPER_EXACT_GD_MSE:g} (column 'f32 MSE', our float32 GD after "
          f"{cfg.max_iters} steps)")


def plot(rows: list[dict], path: Path) -> None:
    fig, ax = figure((8, 5))
    for i, r in enumerate(rows):
        color = f"C{i}"
        curve = torch.tensor(r["curve"]).clamp(min=1e-17)
        ks = torch.arange(len(curve))
        ax.semilogy(ks, curve, color=color, label=r["family"])
        ax.semilogy(ks, (r["gd_rho_median"] ** ks.double()).clamp(min=1e-17), "--",
                    color=color, linewidth=0.8)
    ax.axhline(TOL, color="gray", linewidth=0.5)
    ax.set_xlabel("GD iteration k (optimal fixed step, float64)")
    ax.set_ylabel("median ‖x_k − x*‖ / ‖x*‖ (x* from mpmath)")
    ax.set_ylim(1e-17, 10)
    ax.set_title("GD on least squares; dashed: contraction bound ρ^k")
    ax.legend(fontsize=8, ncol=2)
    save_figure(fig, path)


LABELS = {"gaussian": "gaussian", "spectrum": "spectrum (κ = 5)", "noisy": "noisy",
          "scaled": "scaled rows/cols", "heavy_tailed": "heavy-tailed",
          "rank_deficient": "rank-deficient", "underdetermined": "under-determined",
          "ill_conditioned": "ill-conditioned"}


def verdicts(result: dict) -> dict[str, bool]:
    """``gd_within_contraction_bound``: every problem for which GD reached the tolerance
    reached it within its own contraction bound ``⌈log tol / log ρ⌉``."""
    return {"gd_within_contraction_bound": all(
        f["gd_within_bound"] == f["gd_reached"] for f in result["families"])}


def headline(result: dict) -> str:
    """The results-index line: scipy's worst digits over the families, and the GD target."""
    digits = [f["digits_scipy_min"] for f in result["families"]]
    return (f"scipy {md.fixed(min(digits))}–{md.fixed(max(digits))} correct digits vs "
            f"mpmath (worst problem per family, float64); "
            f"{md.targets_met(verdicts(result))}")


def tables(result: dict) -> str:
    """Results block: digits of scipy / numpy against mpmath and GD against its bound."""
    cfg = result["config"]
    batch, max_iters = cfg["batch"], cfg["max_iters"]

    def its(f: dict) -> str:
        if not f["gd_reached"]:
            return f"not within {max_iters}"
        text = f"{f['gd_iters_median']:.0f}"
        return text if f["gd_reached"] == batch else f"{text} ({f['gd_reached']}/{batch})"

    rows = [[LABELS.get(f["family"], f["family"]), md.num(f["kappa_median"]),
             md.fixed(f["digits_scipy_min"]), md.fixed(f["digits_numpy_min"]),
             md.fixed(f["digits_scipy_f32_min"]), its(f),
             md.num(f["gd_iters_bound_median"]), f"{f['gd_within_bound']}/{f['gd_reached']}",
             md.sci(f["gd_f32_final_mse_mean"])] for f in result["families"]]
    met = verdicts(result)["gd_within_contraction_bound"]
    return "\n".join([
        md.command(result, f"worst of {batch} problems per family, float64 unless said"),
        "",
        md.table(["family", "κ (median of " + str(batch) + ")", "scipy digits (worst)",
                  "numpy digits (worst)", "scipy f32 digits (worst)",
                  f"GD iterations to {result['tolerance']:g} (median)", "bound (median)",
                  "within own bound", f"float32 GD MSE after {max_iters} (mean)"], rows),
        "",
        f"Target — every problem that reached the tolerance did so within its own "
        f"contraction bound: **{'met' if met else 'not met'}**."])


def main(argv: list[str] | None = None) -> dict:
    parser = study_parser("reference", __doc__, quick_help="small batch (default)",
                          full_help="larger batch, more GD steps")
    parser.add_argument("--seed", type=int, default=None, help="override the config seed")
    args = parser.parse_args(argv)
    cfg = CONFIGS["full" if args.full else "quick"]
    if args.seed is not None:
        cfg = Config(cfg.batch, cfg.max_iters, cfg.dps, args.seed)

    start = time.perf_counter()
    gen = make_generator(cfg.seed)
    rows = [study_family(name, cfg, gen) for name in progress(FAMILIES, desc="families")]
    elapsed = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    print_table(rows, cfg)
    plot(rows, args.out / "reference_gd.png")
    result = {"command": md.study_command(NAME, argv), "config": asdict(cfg),
              "tolerance": TOL, "seconds": elapsed,
              "paper_exact_gd_mse": PAPER_EXACT_GD_MSE,
              # the per-iteration curves are in the figure; the JSON stays small
              "families": [{k: v for k, v in r.items() if k != "curve"} for r in rows]}
    result["verdicts"] = verdicts(result)
    write_report(args.out, "reference", result)
    print(f"wrote {args.out / 'reference.json'} and {args.out / 'reference_gd.png'} "
          f"({elapsed:.1f} s)")
    return result


if __name__ == "__main__":
    run_cli(main)
