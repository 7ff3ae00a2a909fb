"""One-step MSE of learned GD iterates per architecture × recipe ablation.

Each row trains a learner on the GD update (``Aᵀ(Ax − b)/n``, spectrum family κ = 5,
n = 20, d = 5) with the full recipe, the plain baseline, the full recipe with one
component switched off (:data:`neuralnum.training.recipe.ABLATIONS`) or with the relative loss
switched on, and reports the held-out one-step MSE. Targets: float32 BaseConv ≤ 1e-12,
float64 ≤ 1e-20, full recipe ≥ 1e4× lower MSE than the baseline.

``--quick`` (one CPU thread, ~8 minutes): every run learns from the default init —
linear attention (float64, every ablation and the relative loss, 3000 steps) and
BaseConv (float64 and float32, full vs baseline, 1500 steps) at the default LR.
``--full`` (GPU): every architecture, dtype and ablation, 200k steps, LR 1e-3, batches
up to 1024. BaseConv's default init is ``"delta_sum"`` (:mod:`neuralnum.models.baseconv`),
which learns orders of magnitude faster than the plain ``"random"`` init, though Adam
alone stays far from the ≤ 1e-20 target at CPU scale (the paper reached it with
~1–2.5M GPU steps).

**Finisher rows.** For BaseConv and linear attention in float64 and float32,
from two starts — the exact construction + 1e-3 noise (``construct``) and the default
init (``scratch``) — an Adam-only run is compared with Adam → Levenberg–Marquardt
(:mod:`neuralnum.training.finisher`; for ``scratch`` the LM phase starts from the Adam run's
weights at ``lm_after`` steps, for ``construct`` at step 0): fresh-problem one-step MSE
per Adam step / LM iteration and per wall-clock second, the rank of ``J`` and the
condition number of ``JᵀJ``, the train-vs-fresh gap, the convergence order estimated
from the MSE sequence (≈1 linear, ≈2 quadratic) and, where a target was not reached
within the budget, the minutes the last five iterations' rate would need (an
extrapolation, marked as such). On the 2-core budget BaseConv's LM phases stop after 6
minutes (``lm_minutes``), so its "within 20 iterations" verdict can fail on the clock
before 20 iterations ran (the table's LM-iterations column shows it). ``--finisher`` runs
only these rows; ``--quick`` runs both groups. ``--rows ARCH/DTYPE/START ...`` picks
finisher rows and ``--lm-minutes M`` sets BaseConv's LM budget (the iteration cap lifted):
the from-scratch targets allow 30 minutes on 2 cores, i.e. ``--finisher --rows
baseconv/float64/scratch --lm-minutes 29 --threads 2``.
Writes ``recipe.json``, ``recipe_mse_vs_step.png`` and ``recipe_finisher.png``.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch

from neuralnum.core.flags import positive_int
from neuralnum.problems.families import family_from_name
from neuralnum.solvers.learner import Learner
from neuralnum.training.finisher import FinisherSettings
from neuralnum.training.levenberg_marquardt import LMSettings
from neuralnum.training.recipe import ABLATIONS, Recipe
from studies.lsq_common import PAPER, parse, train
from studies.markdown import sci, targets_met
from studies.study_io import figure_row, format_table, run_cli, save_figure, write_report

NAME = "recipe"
#: One-step MSE targets for the full recipe, per dtype.
PRECISION_TARGETS = {"float32": 1e-12, "float64": 1e-20}
#: Finisher targets: (start, arch, dtype) → (fresh one-step MSE, budget).
#: The budget is LM iterations for ``construct`` and wall-clock seconds for ``scratch``.
FINISHER_TARGETS = {("construct", "baseconv", "float64"): (1e-28, 20),
                    ("construct", "linear_attention", "float64"): (1e-28, 20),
                    ("scratch", "baseconv", "float64"): (1e-20, 1800.0),
                    ("scratch", "baseconv", "float32"): (1e-13, 1800.0)}
COMMAND = "python3 -m studies.recipe --finisher"


def full_recipe_mse(rows: list[dict], arch: str, dtype: str) -> float | None:
    """The full recipe's one-step MSE of ``arch`` in ``dtype`` (a float64 grid's
    ``-float64`` ablation is the full recipe in float32), or None when not run."""
    for row in rows:
        if row["arch"] == arch and (
                (row["dtype"], row["recipe"]) == (dtype, "full")
                or (dtype == "float32" and row["recipe"] == "-float64")):
            return row["one_step_mse"]
    return None


def variants(dtype: str, ablate: bool, base: dict) -> dict[str, Recipe]:
    full = Recipe(dtype=dtype, **base)
    out = {"full": full, "baseline": Recipe.baseline(dtype=dtype, lr=full.lr)}
    if ablate:
        out.update({f"-{name}": full.ablation(name) for name in ABLATIONS
                    if name != "float64" or dtype == "float64"})
        out["+relative_loss"] = full.replace(relative_loss=True)
    return out


def convergence_order(mses: list[float], floor: float = 1e-30) -> float:
    """Median of ``log(e_{k+1}/e_k) / log(e_k/e_{k−1})`` over consecutive decreasing
    triples of the MSE sequence above ``floor``: ≈1 for linear, ≈2 for quadratic
    convergence (NaN with fewer than three such points)."""
    e = [v for v in mses if v > floor]
    orders = []
    for a, b, c in zip(e, e[1:], e[2:], strict=False):
        if a > b > c:
            orders.append(math.log(c / b) / math.log(b / a))
    orders.sort()
    return orders[len(orders) // 2] if orders else math.nan


def projected_seconds(records: list[dict], target: float, tail: int = 5) -> float:
    """Seconds more the LM phase would need to bring the fresh MSE to ``target`` at the
    mean rate and cost per iteration of its last ``tail`` iterations (an extrapolation;
    0 when already there, inf when the MSE stopped falling)."""
    mses = [r["fresh_mse"] for r in records]
    if mses[-1] <= target:
        return 0.0
    last = records[-tail - 1:]
    if len(last) < 2 or last[-1]["fresh_mse"] >= last[0]["fresh_mse"]:
        return math.inf
    rate = (last[-1]["fresh_mse"] / last[0]["fresh_mse"]) ** (1 / (len(last) - 1))
    per_iteration = (last[-1]["wall"] - last[0]["wall"]) / (len(last) - 1)
    return math.log(target / mses[-1]) / math.log(rate) * per_iteration


def row_name(spec: dict[str, Any]) -> str:
    """A finisher row's name for ``--rows``: ``arch/dtype/start``."""
    return f"{spec['arch']}/{spec['dtype']}/{spec['start']}"


def finisher_grid(full: bool, lm_minutes: float | None = None) -> list[dict[str, Any]]:
    """The finisher rows' settings: arch, dtype, start, Adam steps (Adam-only run), the
    step after which LM takes over, LM iterations (from the construction: the 20 of the
    target, however long they take), LM wall budget (minutes; BaseConv from scratch: 6 on
    a CPU, or ``lm_minutes`` — then also 1000 iterations, so the clock decides) and
    the LM engine's settings. BaseConv from the construction uses the eigh route with 6
    chord corrections per iteration: with its idle channels snapped the problem is
    regular, and the corrections (one residual and one ``Jᵀu`` each, a tenth of a
    linearisation) speed up the convergence per iteration. From scratch: Cholesky,
    which is cheaper per iteration and there no worse per iteration, with geodesic
    acceleration (BaseConv), whose longer steps follow the curved valley of the
    from-scratch tail (:class:`~neuralnum.training.levenberg_marquardt.LMSettings`). The
    float64 BaseConv row also starts LM from an annealed Adam run (``"annealed"``: its own
    800 steps, the cosine schedule ending there, as in the demo) rather than from step 800
    of the 1200-step run, where the learning rate is still a quarter of its peak; from
    there LM stalls short of the float64 target (docs/results.md, "recipe")."""
    rows = []
    for arch in ("baseconv", "linear_attention"):
        for dtype in ("float64", "float32"):
            cheap = arch == "linear_attention"
            rows.append({"arch": arch, "dtype": dtype, "start": "construct",
                         "adam_steps": 200, "lm_after": 0, "lm_iterations": 20,
                         "lm_minutes": 0.0,
                         "lm": {} if cheap else {"solver": "eigh", "corrections": 6}})
            rows.append({"arch": arch, "dtype": dtype, "start": "scratch",
                         "adam_steps": (200_000 if full else 3000 if cheap else 1200),
                         "lm_after": 1000 if cheap else 800, "lm_iterations": 30,
                         "lm_minutes": 0.0 if cheap or full else 6.0,
                         "lm": {} if cheap else {"geodesic": True},
                         **({"annealed": True} if not cheap and dtype == "float64" else {})})
    if lm_minutes is not None:
        for row in rows:
            if row["lm_minutes"]:
                row.update(lm_minutes=lm_minutes, lm_iterations=1000)
    return rows


def _adam_recipe(spec: dict[str, Any]) -> Recipe:
    """A row's first-order recipe: the default one, at LR 1e-4 from the construction."""
    return Recipe(dtype=spec["dtype"], lr=1e-4 if spec["start"] == "construct" else 1e-2)


def _lm_recipe(spec: dict[str, Any], decay: str) -> Recipe:
    """The recipe of a row's LM phase: its first-order recipe (LR decay ``decay``) with
    the LM finisher (``lm_iterations`` iterations, the row's engine settings and budget)."""
    return _adam_recipe(spec).replace(
        lr_decay=decay, finisher="lm", finisher_steps=spec["lm_iterations"],
        lm=FinisherSettings(until=1e-31, minutes=spec["lm_minutes"],
                            engine=LMSettings(**spec["lm"])))


def _adam_only(spec: dict[str, Any], family: Any, seed: int
               ) -> tuple[list[dict], float, dict[int, Any], dict[int, float]]:
    """The Adam-only run of a row: its records and seconds, and the weights (and seconds)
    at step 0 and at ``lm_after``, where a non-annealed row's LM phase starts."""
    learner = Learner(spec["arch"], "gd", _adam_recipe(spec), n=family.n, d=family.d,
                      seed=seed)
    if spec["start"] == "construct":
        learner.init_construction(1e-3, seed=seed)
    snapshot, seconds_at = {0: copy.deepcopy(learner.model.state_dict())}, {0: 0.0}
    clock = time.perf_counter()

    def keep(lrn: Learner, record: dict) -> None:
        if record["step"] == spec["lm_after"]:
            snapshot[record["step"]] = copy.deepcopy(lrn.model.state_dict())
            seconds_at[record["step"]] = time.perf_counter() - clock

    records = learner.fit(family, spec["adam_steps"], seed=seed, log_every=25, eval_batch=256,
                          show_progress=False, callbacks=[keep])
    return records, time.perf_counter() - clock, snapshot, seconds_at


def finisher_row(spec: dict[str, Any], family: Any, seed: int) -> dict[str, Any]:
    """One finisher row: the Adam-only run (snapshotting the weights at ``lm_after``) and
    the LM phase, run as the recipe's finisher through the training loop (on the run's
    held-out problems): from the snapshot (a fit of 0 steps), or, with
    ``spec["annealed"]``, after an Adam run of ``lm_after`` steps whose cosine schedule
    ends there (its time counted before LM). Returns the row with both curves."""
    annealed = spec.get("annealed", False)
    records, adam_seconds, snapshot, seconds_at = _adam_only(spec, family, seed)
    lm_learner = Learner(spec["arch"], "gd", _lm_recipe(spec, "cosine" if annealed else "none"),
                         n=family.n, d=family.d, seed=seed)
    if not annealed:
        lm_learner.model.load_state_dict(snapshot[spec["lm_after"]])
    clock = time.perf_counter()
    run = lm_learner.fit(family, spec["lm_after"] if annealed else 0, seed=seed, log_every=25,
                         eval_batch=256, show_progress=False)
    lm, final = [r["lm"] for r in run if "lm" in r], run[-1]
    offset = (time.perf_counter() - clock - lm[-1]["wall"] if annealed
              else seconds_at[spec["lm_after"]])
    target, budget = FINISHER_TARGETS.get((spec["start"], spec["arch"], spec["dtype"]),
                                          (None, None))
    return {**spec, "adam_only_mse": records[-1]["mse"], "adam_seconds": round(adam_seconds, 1),
            "lm_start_mse": lm[0]["fresh_mse"], "lm_mse": lm[-1]["fresh_mse"],
            "lm_best_mse": min(r["fresh_mse"] for r in lm), "lm_train_mse": lm[-1]["train_mse"],
            "lm_iterations_run": len(lm) - 1, "lm_seconds": round(lm[-1]["wall"], 1),
            "seconds": round(offset + lm[-1]["wall"], 1), "rank": final["lm_rank"],
            "parameters": final["lm_parameters"], "snapped": final["lm_snapped"],
            "cond_jtj": final["lm_cond_jtj"], "problems": final["lm_problems"],
            "order": convergence_order([r["fresh_mse"] for r in lm]),
            "peak_mib": round(max(r["peak_mib"] for r in lm)), "target": target,
            "budget": budget, "projected_extra_seconds": (
                None if target is None else projected_seconds(lm, target)),
            "lm_curve": [{k: r[k] for k in ("iteration", "train_mse", "fresh_mse",
                                              "fresh_mse_train_dtype", "damping",
                                              "step_norm", "wall")} for r in lm],
            "adam_curve": [(r["step"], r["mse"]) for r in records],
            "adam_seconds_at_lm": round(offset, 1)}


def finisher_rows(specs: list[dict[str, Any]], family: Any, seed: int) -> list[dict[str, Any]]:
    rows = []
    columns = ["arch", "dtype", "start", "adam_only_mse", "lm_start_mse", "lm_mse",
               "lm_iterations_run", "seconds", "rank", "order"]
    for spec in specs:
        rows.append(finisher_row(spec, family, seed))
        print(format_table(rows[-1:], columns).splitlines()[-1], flush=True)
    return rows


def finisher_verdicts(rows: list[dict]) -> dict[str, bool]:
    """The finisher targets over the finisher rows present (see :data:`FINISHER_TARGETS`)."""
    out = {}
    for row in rows:
        key = (row["start"], row["arch"], row["dtype"])
        if key not in FINISHER_TARGETS:
            continue
        bound, budget = FINISHER_TARGETS[key]
        if row["start"] == "construct":
            met = any(r["fresh_mse"] <= bound for r in row["lm_curve"]
                      if r["iteration"] <= budget)
            out[f"{row['dtype']} {row['arch']} construction+1e-3 -> LM <= {bound:g} within "
                f"{budget} iterations"] = met
        else:
            total = row["adam_seconds_at_lm"]
            met = any(r["fresh_mse"] <= bound and total + r["wall"] <= budget
                      for r in row["lm_curve"])
            out[f"{row['dtype']} {row['arch']} from scratch Adam -> LM <= {bound:g} within "
                f"{budget / 60:g} minutes"] = met
    return out


def grid_verdicts(rows: list[dict]) -> dict[str, bool]:
    """The recipe targets (:data:`PRECISION_TARGETS`, full vs baseline) over the Adam grid
    rows present."""
    out = {}
    archs = dict.fromkeys(r["arch"] for r in rows)
    for arch in archs:
        for dtype, bound in PRECISION_TARGETS.items():
            mse = full_recipe_mse(rows, arch, dtype)
            if mse is not None:
                out[f"{dtype} {arch} one-step MSE <= {bound:g}"] = mse <= bound
    ratios = []
    for arch, dtype in dict.fromkeys((r["arch"], r["dtype"]) for r in rows):
        get = {r["recipe"]: r["one_step_mse"] for r in rows
               if r["arch"] == arch and r["dtype"] == dtype}
        if "baseline" in get and "full" in get:
            ratios.append(get["baseline"] / get["full"])
    if ratios:
        out["full recipe >= 1e4x lower MSE than baseline"] = all(v >= 1e4 for v in ratios)
    return out


def verdicts(result: dict) -> dict[str, bool]:
    """Target name → met, from a result of :func:`main` (keys only for the rows run)."""
    return {**grid_verdicts(result.get("rows", [])),
            **finisher_verdicts(result.get("finisher_rows", []))}


def _sci(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:.2e}"


def headline(result: dict) -> str:
    """The results-index line: the LM budget of the finisher rows (or the Adam grid), the
    targets met and the lowest one-step MSE reached per dtype."""
    frows = result.get("finisher_rows", [])
    mse = [(r["dtype"], r["lm_mse"]) for r in frows]
    mse += [(r["dtype"], r["one_step_mse"]) for r in result.get("rows", [])]
    lowest = ", ".join(f"{dtype} {sci(min(v for d, v in mse if d == dtype))}"
                       for dtype in sorted(dict.fromkeys(d for d, _ in mse), reverse=True))
    what = (f"Adam → LM (≤ {max(r['lm_minutes'] for r in frows):g} min of LM per row)"
            if frows else "Adam recipe grid")
    return (f"{what}: {targets_met(result.get('verdicts', verdicts(result)))}; lowest "
            f"one-step MSE {lowest}")


def tables(result: dict) -> str:
    """Results block: the command (and the ``rerun`` commands, one or a list, that
    replaced the rows they name), the finisher table, the Adam grid table, verdicts."""
    reruns = result.get("rerun") or []
    reruns = [reruns] if isinstance(reruns, str) else reruns
    rerun = ("; the rows named re-run later, in this order, by " + ", then ".join(
        f"`{command}`" for command in reruns) if reruns else "")
    lines = [f"`{result.get('command', COMMAND)}` (seed {result.get('seed', 0)}; "
             "one-step MSE on 256 fresh problems, n = 20, d = 5, κ = 5; 2 shared CPU "
             f"cores, wall times noisy{rerun})", ""]
    frows = result.get("finisher_rows", [])
    if frows:
        lines += ["| arch | dtype | start | Adam-only MSE (steps) | MSE at LM start | "
                  "Adam → LM MSE | train MSE | LM iterations | total s | rank J / params | "
                  "κ(JᵀJ) | order | channels snapped | extra s to target (extrapolated) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in frows:
            extra = r.get("projected_extra_seconds")
            lines.append(
                f"| {r['arch']} | {r['dtype']} | {r['start']} | {_sci(r['adam_only_mse'])} "
                f"({r['adam_steps']}) | {_sci(r['lm_start_mse'])} (step {r['lm_after']}) | "
                f"{_sci(r['lm_mse'])} | {_sci(r['lm_train_mse'])} | {r['lm_iterations_run']} | "
                f"{r['seconds']:.0f} | {r['rank']} / {r['parameters']} | {_sci(r['cond_jtj'])} | "
                f"{r['order']:.2f} | {r.get('snapped', '–')} | "
                f"{'–' if extra is None else _sci(float(extra))} |")
        lines.append("")
    rows = result.get("rows", [])
    if rows:
        lines += ["| arch | dtype | recipe | steps | one-step MSE (last) | best MSE | digits "
                  "(median) | seconds |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['arch']} | {r['dtype']} | {r['recipe']} | {r['steps']} | "
                  f"{_sci(r['one_step_mse'])} | {_sci(r['best_mse'])} | {r['digits']:.1f} | "
                  f"{r['seconds']:.0f} |" for r in rows]
        lines.append("")
    for text, met in result.get("verdicts", verdicts(result)).items():
        lines.append(f"- target {'**met**' if met else '**not met**'}: {text}")
    return "\n".join(lines) + "\n"


def adam_grid(args: Any, family: Any) -> tuple[list[dict], dict, list]:
    """The Adam rows (architecture × recipe ablation) and their curves."""
    if args.full:
        log_every = 1000
        base = {"lr": 1e-3, "max_batch_size": 1024}
        grid = [(arch, dtype, True, 200_000) for arch in ("baseconv", "linear_attention")
                for dtype in ("float64", "float32")]
    else:
        log_every = 50
        base = {}
        grid = [("linear_attention", "float64", True, 3000),
                ("baseconv", "float64", False, 1500), ("baseconv", "float32", False, 1500)]
    rows, curves = [], {}
    for arch, dtype, ablate, steps in grid:
        for name, recipe in variants(dtype, ablate, base).items():
            _, records, seconds = train(arch, recipe, family, steps=steps,
                                        seed=args.seed, log_every=log_every,
                                        eval_batch=1024 if args.full else 128)
            last = records[-1]
            rows.append({"arch": arch, "dtype": dtype, "recipe": name, "steps": last["step"],
                         "one_step_mse": last["mse"], "best_mse": min(r["mse"] for r in records),
                         "digits": last["digits"], "seconds": round(seconds, 1)})
            curves[f"{arch}/{dtype}/{name}"] = [(r["step"], r["mse"]) for r in records]
            print(format_table(rows[-1:], list(rows[-1])).splitlines()[-1], flush=True)
    fig, axes = figure_row(len(grid), (5 * len(grid), 4))
    for ax, (arch, dtype, _, _) in zip(axes, grid, strict=True):
        for key, pts in curves.items():
            if key.startswith(f"{arch}/{dtype}/"):
                ax.semilogy(*zip(*pts, strict=True), label=key.split("/")[-1])
        ax.set(title=f"{arch} {dtype}", xlabel="step", ylabel="held-out one-step MSE")
        ax.legend(fontsize=7)
    save_figure(fig, args.out / "recipe_mse_vs_step.png")
    return rows, curves, grid


def finisher_figure(rows: list[dict], path: Any) -> None:
    """Fresh MSE vs wall-clock (top) and vs optimizer step / LM iteration (bottom)."""
    fig, axes = figure_row(len(rows), (3.2 * len(rows), 3.2))
    for ax, r in zip(axes, rows, strict=True):
        steps, mses = zip(*r["adam_curve"], strict=True)
        per_step = r["adam_seconds"] / max(r["adam_steps"], 1)
        ax.semilogy([s * per_step for s in steps], mses, label="Adam only")
        ax.semilogy([r["adam_seconds_at_lm"] + c["wall"] for c in r["lm_curve"]],
                    [max(c["fresh_mse"], 1e-35) for c in r["lm_curve"]], "o-", ms=3,
                    label="Adam → LM")
        ax.set(title=f"{r['arch']} {r['dtype']} {r['start']}", xlabel="seconds")
        ax.legend(fontsize=6)
    axes[0].set_ylabel("fresh one-step MSE")
    save_figure(fig, path)


def _finisher_options(parser: Any) -> None:
    names = [row_name(spec) for spec in finisher_grid(False)]
    parser.add_argument("--rows", nargs="+", choices=names, metavar="ARCH/DTYPE/START",
                        help=f"finisher rows to run (default: all): {', '.join(names)}")
    parser.add_argument("--lm-minutes", type=float, default=None,
                        help="LM wall budget of the rows that have one (BaseConv; default 6), "
                             "with the iteration cap lifted: e.g. 29 for the 30-minute "
                             "from-scratch targets")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads (default: 1, or all with --full); the finisher "
                             "targets' budgets are for 2 cores")


def selected_specs(args: Any) -> list[dict[str, Any]]:
    """The finisher rows ``args`` asks for (``--rows``, ``--lm-minutes``), in grid order."""
    specs = finisher_grid(args.full, args.lm_minutes)
    return [s for s in specs if args.rows is None or row_name(s) in args.rows]


def _mode(args: Any) -> str:
    return "full" if args.full else "finisher" if args.finisher else "quick"


def command(args: Any) -> str:
    """The command line that reproduces ``args`` (output directory aside)."""
    parts = [f"python3 -m studies.recipe --{_mode(args)}"]
    if args.rows:
        parts.append("--rows " + " ".join(args.rows))
    if args.lm_minutes is not None:
        parts.append(f"--lm-minutes {args.lm_minutes:g}")
    if args.threads is not None:
        parts.append(f"--threads {args.threads}")
    if args.seed:
        parts.append(f"--seed {args.seed}")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> dict:
    args = parse("recipe", __doc__, argv,
                 modes={"finisher": "only the LM finisher rows"},
                 configure=_finisher_options)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    family = family_from_name("spectrum")
    rows, curves, grid = ([], {}, []) if args.finisher else adam_grid(args, family)
    frows = finisher_rows(selected_specs(args), family, args.seed)
    finisher_figure(frows, args.out / "recipe_finisher.png")
    payload = {"mode": _mode(args), "command": command(args),
               "seed": args.seed, "grid": grid, "rows": rows, "finisher_rows": frows,
               "paper": PAPER, "curves": curves}
    payload["verdicts"] = verdicts(payload)
    print(tables(payload))
    print(f"paper (float32, ~1-2.5M steps on GPU): {PAPER['one_step_learned']}")
    write_report(args.out, NAME, payload)
    return payload


if __name__ == "__main__":
    run_cli(main)
