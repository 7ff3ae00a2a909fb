"""The softmax precision limit: who can learn to multiply to roundoff?

Trains BaseConv, linear attention and a softmax Transformer — the same parameter budget
(the Transformer's width is chosen to match BaseConv's count), the same optimizer (Adam,
ε = 1e-16, cosine LR decay, gradient clipping), the same fresh batches, float64 by
default — on the two smallest tasks that need high-precision products:

* ``product`` — two in-context scalars: tokens ``[p, 0, 0]``, ``[0, q, 0]`` with
  ``p, q ~ N(0, 1)``, target ``p·q`` in channel 2 of the last token (2 layers, width 16);
* ``gd_term`` — one GD step's ``Aᵀ(Ax − b)/n`` on the paper's problems (``n = 20``,
  ``d = 5``, Gaussian ``A``, ``b = A x*``, ``x ~ N(0, I)``): tokens of
  ``TokenLayout(20, 5, width=21)``, target ``x − Aᵀ(Ax − b)/n`` read at the last token,
  so the error is entirely the error of the gradient term (3 layers at width 21 = 4d+1,
  where both polynomial models can represent the step exactly).

It reports each model's MSE floor (the best held-out MSE over the last quarter of
training) and the softmax/polynomial ratio, plots MSE vs step (log scale), and evaluates
hand-built models: the exact GD constructions of :mod:`neuralnum.models.construct` on
``gd_term`` (one step, and iterated from ``x₀ = 0`` to compare with the paper's exact-GD
level) and :class:`~neuralnum.models.construct.SoftmaxProduct` on ``product`` across
its score scale ``ε`` (error ``≈ ε²(pq)³/12 + O(u/ε)``: MSE ``~ε⁴`` against ``~u²/ε²``,
best ``~u^{4/3}`` instead of the polynomial models' ``~u²``).

    python -m studies.multiplication [--quick|--full] [--out DIR] [--dtype float64]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from neuralnum.core.runtime import Distributed, make_generator
from neuralnum.models import TokenConfig, TokenModel, arch_config, build_model, count_parameters
from neuralnum.models.construct import (
    SoftmaxProduct,
    apply_gd_model,
    construct_baseconv_gd,
    construct_linear_attention_gd,
)
from neuralnum.models.tokens import TokenLayout
from neuralnum.problems.families import GaussianFamily
from neuralnum.problems.targets import GDStep, OptimalStep
from neuralnum.training.loop import Loop, LoopConfig
from neuralnum.training.loop import train as run_loop
from neuralnum.training.plugins import GradClip, Schedule, make_scheduler
from neuralnum.training.plugins import Task as LoopTask
from studies import markdown as md
from studies.study_io import figure, figure_row, run_cli, save_figure, study_parser, write_report

ARCHS = ("baseconv", "linear_attention", "transformer")
POLYNOMIAL = ("baseconv", "linear_attention")
PAPER = {  # Liu et al. 2025's reported levels (float32, their scale), for comparison only
    "product": "softmax fails to multiply precisely (no MSE reported)",
    "gd_term": "learned BaseConv/LA single GD iterate ≈ 1e-13; softmax iterates ≈ 1e-2; "
               "exact GD ≈ 5e-15; in-context Transformers plateau ≈ 1e-5",
}


@dataclass(frozen=True)
class Config:
    steps: dict[str, int]  # per task
    batch: dict[str, int]  # per task
    lr: float = 1e-2
    evals: int = 20  # held-out evaluations per run
    eval_batch: int = 512
    gd_problems: int = 16  # problems for the iterated exact constructions
    gd_iters: int = 200
    seed: int = 0


QUICK = Config(steps={"product": 1000, "gd_term": 600}, batch={"product": 256, "gd_term": 64})
FULL = Config(steps={"product": 50000, "gd_term": 50000},
              batch={"product": 1024, "gd_term": 1024}, evals=100, eval_batch=4096,
              gd_problems=256)


# --------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Task:
    """A supervised map ``tokens (B, L, d_model) → target``; ``readout`` picks the output.

    The polynomial models run at ``poly_width`` channels; the Transformer's width is the
    one whose parameter count is closest to BaseConv's.
    """

    name: str
    d_model: int
    seq_len: int
    n_layers: int
    poly_width: int
    sample: Callable[[int, torch.Generator, torch.dtype], tuple[torch.Tensor, torch.Tensor]]
    readout: Callable[[torch.Tensor], torch.Tensor]


def _product_sample(batch, gen, dtype):
    """Two tokens ``[p, 0, 0]``, ``[0, q, 0]``; target ``p·q`` (last token, channel 2)."""
    pq = torch.randn(batch, 2, generator=gen, dtype=torch.float64)
    tokens = torch.zeros(batch, 2, 3, dtype=torch.float64)
    tokens[:, 0, 0], tokens[:, 1, 1] = pq[:, 0], pq[:, 1]
    return tokens.to(dtype), (pq[:, 0] * pq[:, 1]).to(dtype)


GD_LAYOUT = TokenLayout(20, 5, width=21)  # 4d+1: room for the exact BaseConv
GD_FAMILY = GaussianFamily(n=20, d=5)


def _gd_sample(batch, gen, dtype):
    problems = GD_FAMILY.sample(batch, gen, torch.float64)
    x = torch.randn(batch, 5, generator=gen, dtype=torch.float64)
    target = GDStep(1 / 20)(problems.A, problems.b, x)
    return GD_LAYOUT.encode(problems.A, problems.b, x).to(dtype), target.to(dtype)


TASKS = {
    "product": Task("product", 3, 2, 2, 16, _product_sample, lambda out: out[:, -1, 2]),
    "gd_term": Task("gd_term", GD_LAYOUT.width, 20, 3, GD_LAYOUT.width, _gd_sample,
                    lambda out: out[:, -1, GD_LAYOUT.x_slice]),
}


# --------------------------------------------------------------------------- models
def model_config(arch: str, task: Task) -> TokenConfig:
    """Polynomial models at ``task.poly_width``; the Transformer matched to BaseConv's size."""
    shape = {"d_model": task.d_model, "n_layers": task.n_layers, "seq_len": task.seq_len}
    if arch in POLYNOMIAL:
        return arch_config(arch, **shape, width=task.poly_width)
    budget = count_parameters(build_model(model_config("baseconv", task)))
    candidates = (arch_config(arch, **shape, width=w, n_heads=2) for w in range(4, 129, 2))
    return min(candidates, key=lambda c: abs(count_parameters(build_model(c)) - budget))


def make_model(arch: str, task: Task, dtype: torch.dtype, seed: int = 0) -> TokenModel:
    """The model of :func:`model_config`, weights drawn from a generator seeded ``seed``."""
    return build_model(model_config(arch, task), dtype=dtype, generator=make_generator(seed))


def mse(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float((pred.double() - target.double()).square().mean())


class Regression(LoopTask):
    """``task`` as the loop's task: fresh ``dtype`` batches, the readout's mean squared
    error as loss, and the held-out MSE (``mse``) on ``eval_batch`` problems drawn from a
    generator seeded ``seed + 1``."""

    def __init__(self, task: Task, dtype: torch.dtype, eval_batch: int, seed: int):
        self.task, self.dtype = task, dtype
        self.held_out = task.sample(eval_batch, make_generator(seed + 1), dtype)

    def sample(self, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.task.sample(size, gen, self.dtype)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        tokens, target = batch
        return (self.task.readout(model(tokens)) - target).square().mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        tokens, target = self.held_out
        return {"mse": mse(self.task.readout(model(tokens)), target)}


def train(arch: str, task: Task, cfg: Config, dtype: torch.dtype) -> dict:
    """Train one model on the one training loop (Adam, cosine decay to 1e-3 of the LR,
    gradient norm clipped at 1); returns its held-out MSE curve, floor and size."""
    model = make_model(arch, task, dtype, cfg.seed)
    steps = cfg.steps[task.name]
    regression = Regression(task, dtype, cfg.eval_batch, cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-16)
    schedule = Schedule(decay="cosine", horizon=steps, min_factor=1e-3)
    loop = Loop(model, regression, optimizer, make_scheduler(optimizer, schedule),
                hooks=[GradClip(1.0)])
    eval_every = max(1, steps // cfg.evals)
    options = LoopConfig(steps=steps, batch_size=cfg.batch[task.name], seed=cfg.seed,
                         log_every=eval_every, eval_every=eval_every,
                         desc=f"{task.name}/{arch}")
    start = time.perf_counter()
    curve = [(0, regression.evaluate(model)["mse"])]
    curve += [(r["step"], r["mse"]) for r in run_loop(loop, options, Distributed()).records]
    tail = [m for s, m in curve if s >= 0.75 * steps]
    finite = [m for m in tail if math.isfinite(m)]
    return {"arch": arch, "task": task.name, "dtype": str(dtype).removeprefix("torch."),
            "params": count_parameters(model), "width": model.width,
            "floor": min(finite) if finite else float("nan"),
            "seconds": time.perf_counter() - start, "curve": curve}


# --------------------------------------------------------------------------- constructions
def constructed_gd(dtype: torch.dtype, batch: int, seed: int) -> dict[str, float]:
    """MSE of the exact GD constructions on ``gd_term`` (η = 1/n)."""
    tokens, target = _gd_sample(batch, make_generator(seed + 1), torch.float64)
    A, b, x = GD_LAYOUT.decode(tokens)
    A, b, x = A.to(dtype), b.to(dtype), x.to(dtype)
    return {name: mse(apply_gd_model(build(20, 5, 1 / 20, dtype=dtype), A, b, x), target)
            for name, build in (("baseconv", construct_baseconv_gd),
                                ("linear_attention", construct_linear_attention_gd))}


def iterated_gd(dtype: torch.dtype, problems: int, iters: int, seed: int) -> dict[str, float]:
    """MSE against ``x*`` after ``iters`` applications of each exact construction.

    One model per problem with its optimal fixed step ``2/(σ_max² + σ_min²)`` (the paper's
    ``n = 20``, ``d = 5`` Gaussian problems, ``x₀ = 0``); compare the paper's exact GD ≈ 5e-15.
    """
    batch = GD_FAMILY.sample(problems, make_generator(seed + 3), torch.float64)
    etas = OptimalStep()(batch.A).tolist()
    A, b = batch.A.to(dtype), batch.b.to(dtype)
    out = {}
    for name, build in (("baseconv", construct_baseconv_gd),
                        ("linear_attention", construct_linear_attention_gd)):
        finals = []
        for i, eta in enumerate(etas):
            model = build(20, 5, eta, dtype=dtype)
            x = A.new_zeros(1, 5)
            for _ in range(iters):
                x = apply_gd_model(model, A[i : i + 1], b[i : i + 1], x)
            finals.append(x)
        out[name] = mse(torch.cat(finals), batch.x_star)
    return out


def softmax_product_sweep(dtype: torch.dtype, batch: int, seed: int) -> list[tuple[float, float]]:
    """``(ε, MSE)`` of :class:`SoftmaxProduct` on the ``product`` task's ``(p, q)``."""
    tokens, target = _product_sample(batch, make_generator(seed + 2), torch.float64)
    pq = torch.stack([tokens[:, 0, 0], tokens[:, 1, 1]], dim=-1).view(batch, 1, 2).to(dtype)
    return [(eps, mse(SoftmaxProduct(1, eps, dtype=dtype)(pq).view(batch), target))
            for eps in torch.logspace(0, -7, 29, dtype=torch.float64).tolist()]


# --------------------------------------------------------------------------- report
def plot_curves(runs: list[dict], path: Path) -> None:
    fig, axes = figure_row(len(TASKS), (11, 4))
    for ax, task in zip(axes, TASKS, strict=True):
        for run in (r for r in runs if r["task"] == task):
            steps, values = zip(*run["curve"], strict=True)
            ax.semilogy(steps, values, label=f"{run['arch']} ({run['params']} params)")
        ax.set(title=task, xlabel="step", ylabel="held-out MSE")
        ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_sweep(sweeps: dict[str, list], path: Path) -> None:
    fig, ax = figure((5.5, 4))
    for dtype, sweep in sweeps.items():
        eps, values = zip(*sweep, strict=True)
        ax.loglog(eps, values, "o-", ms=3, label=f"softmax product, {dtype}")
        unit = torch.finfo(getattr(torch, dtype)).eps / 2
        ax.axhline(unit**2, ls=":", color=ax.lines[-1].get_color(), lw=1)
    ax.set(xlabel="score scale ε", ylabel="MSE vs exact product",
           title="constructed softmax product (dotted: u²)")
    ax.legend(fontsize=8)
    save_figure(fig, path)


NAME = "multiplication"
#: Target: the softmax Transformer's MSE floor at least this many times the best
#: polynomial model's, on each task ("cannot multiply precisely; polynomial models can").
RATIO_TARGET = 100.0
#: Target: the exact GD constructions' one-step MSE at most this many times u², u the
#: unit roundoff of the dtype (i.e. correct to roundoff).
ROUNDOFF_FACTOR = 100.0
LABELS = {"product": "product", "gd_term": "GD term"}


def result_name(dtype: str) -> str:
    """JSON / results block name of a run in ``dtype`` (float64 is the default run)."""
    return NAME if dtype == "float64" else f"{NAME}_{dtype}"


def verdicts(result: dict) -> dict[str, bool]:
    """``softmax_vs_polynomial:<task>`` — softmax floor / best polynomial floor ≥
    :data:`RATIO_TARGET`; ``construction_at_roundoff:<dtype>`` — both exact GD
    constructions' one-step MSE ≤ :data:`ROUNDOFF_FACTOR` · u² in that dtype."""
    out = {f"softmax_vs_polynomial:{task}": ratio >= RATIO_TARGET
           for task, ratio in result["ratio_softmax_over_polynomial"].items()}
    for dtype, mses in result["constructed_gd_mse"].items():
        unit = torch.finfo(getattr(torch, dtype)).eps / 2
        out[f"construction_at_roundoff:{dtype}"] = max(mses.values()) <= ROUNDOFF_FACTOR * unit**2
    return out


def headline(result: dict) -> str:
    """The results-index line: how much higher softmax attention's MSE floor is than the
    best polynomial model's, per task, in this result's dtype."""
    ratios = result["ratio_softmax_over_polynomial"]
    parts = [f"{task.replace('_', ' ')} {md.num(ratio, 2)}×" for task, ratio in ratios.items()]
    return (f"softmax MSE floor over the best polynomial model's ({result['dtype']}): "
            f"{', '.join(parts)}; {md.targets_met(result['verdicts'])}")


def tables(result: dict) -> str:
    """Results block: MSE floors per task and architecture, the softmax / polynomial
    ratio, and the exact constructions' errors."""
    floors = {(r["task"], r["arch"]): r["floor"] for r in result["runs"]}
    tasks = list(dict.fromkeys(r["task"] for r in result["runs"]))
    rows = [[f"{LABELS.get(t, t)} ({result['dtype']})",
             *(md.sci(floors[t, a], 1) for a in ARCHS),
             md.sci(result["ratio_softmax_over_polynomial"][t], 1)] for t in tasks]
    built = result["constructed_gd_mse"]
    iterated = result["iterated_constructed_gd_mse_vs_xstar"]
    softmax = {d: min(sweep, key=lambda point: point[1])
               for d, sweep in result["softmax_product_sweep"].items()}
    const = [[d, *(md.sci(built[d][a], 1) for a in POLYNOMIAL),
              *(md.sci(iterated[d][a], 1) for a in POLYNOMIAL),
              f"{md.sci(softmax[d][1], 1)} (ε = {md.sci(softmax[d][0], 0)})"] for d in built]
    v = verdicts(result)
    lines = [md.command(result, "same parameter budget and optimizer for every "
                                "architecture; MSE floor = best held-out MSE over the last "
                                "quarter of training"), "",
             md.table(["task", "BaseConv (MSE floor)", "linear attention (MSE floor)",
                       "softmax Transformer (MSE floor)", "softmax / best polynomial"], rows),
             "",
             md.table(["exact construction, dtype", "BaseConv one-step MSE",
                       "linear attention one-step MSE",
                       f"BaseConv iterated {result['config']['gd_iters']}× (MSE vs x*)",
                       f"linear attention iterated {result['config']['gd_iters']}×",
                       "best constructed softmax product (MSE, over ε)"], const),
             ""]
    for key, met in v.items():
        what, arg = key.split(":")
        goal = (f"softmax floor ≥ {RATIO_TARGET:g}× the best polynomial model's on "
                f"{LABELS.get(arg, arg)}" if what == "softmax_vs_polynomial" else
                f"exact GD constructions at roundoff in {arg} (MSE ≤ {ROUNDOFF_FACTOR:g}·u²)")
        lines.append(f"- {goal}: **{'met' if met else 'not met'}**")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = study_parser("multiplication", __doc__)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64",
                        help="training dtype for every architecture")
    args = parser.parse_args(argv)
    cfg = FULL if args.full else QUICK
    dtype = getattr(torch, args.dtype)
    args.out.mkdir(parents=True, exist_ok=True)

    runs = [train(arch, task, cfg, dtype) for task in TASKS.values() for arch in ARCHS]
    floors = {(r["task"], r["arch"]): r["floor"] for r in runs}
    ratios = {task: floors[(task, "transformer")] / min(floors[(task, a)] for a in POLYNOMIAL)
              for task in TASKS}
    constructed = {d: constructed_gd(getattr(torch, d), cfg.eval_batch, cfg.seed)
                   for d in ("float32", "float64")}
    iterated = {d: iterated_gd(getattr(torch, d), cfg.gd_problems, cfg.gd_iters, cfg.seed)
                for d in ("float32", "float64")}
    sweeps = {d: softmax_product_sweep(getattr(torch, d), cfg.eval_batch, cfg.seed)
              for d in ("float32", "float64")}
    best_softmax = {d: min(sweep, key=lambda p: p[1]) for d, sweep in sweeps.items()}

    print(f"\nTrained models ({args.dtype}; steps {cfg.steps}, batch {cfg.batch}; Adam "
          f"lr={cfg.lr} eps=1e-16, cosine decay, clip 1.0; Transformer sized to BaseConv)")
    print(f"{'task':9} {'arch':17} {'params':>7} {'MSE floor':>10} {'sec':>6}  paper")
    for r in runs:
        print(f"{r['task']:9} {r['arch']:17} {r['params']:7d} {r['floor']:10.2e} "
              f"{r['seconds']:6.1f}  {PAPER[r['task']] if r['arch'] == 'transformer' else ''}")
    for task, ratio in ratios.items():
        print(f"softmax / best polynomial floor on {task}: {ratio:.2e}")
    for d, c in constructed.items():
        print(f"constructed GD step ({d}): " + ", ".join(f"{k} MSE {v:.2e}" for k, v in c.items()))
    for d, c in iterated.items():
        print(f"constructed GD iterated {cfg.gd_iters}x from 0 ({d}), MSE vs x*: "
              + ", ".join(f"{k} {v:.2e}" for k, v in c.items()) + "   [paper: exact GD ≈ 5e-15]")
    for d, (eps, value) in best_softmax.items():
        unit = torch.finfo(getattr(torch, d)).eps / 2
        print(f"constructed softmax product ({d}): best MSE {value:.2e} at eps={eps:.1e} "
              f"(u^2 = {unit**2:.1e}, u^(4/3) = {unit**(4 / 3):.1e})")

    plot_curves(runs, args.out / "mse_vs_step.png")
    plot_sweep(sweeps, args.out / "softmax_product_eps.png")
    result = {"command": md.study_command(NAME, argv), "config": asdict(cfg),
              "dtype": args.dtype, "runs": runs,
              "ratio_softmax_over_polynomial": ratios, "constructed_gd_mse": constructed,
              "iterated_constructed_gd_mse_vs_xstar": iterated,
              "softmax_product_sweep": sweeps, "paper": PAPER}
    result["verdicts"] = verdicts(result)
    name = result_name(args.dtype)
    write_report(args.out, name, result)
    print(f"wrote {args.out}/{name}.json, mse_vs_step.png, softmax_product_eps.png")
    return result


if __name__ == "__main__":
    run_cli(main)
