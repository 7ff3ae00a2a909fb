"""Monarch time-to-quality: the same byte-level GPT with dense vs Monarch MLPs.

    python -m studies.monarch_gpt [--quick|--full] [--out DIR] [--threads T]

One GPT (:mod:`structured.models`, Transformer kind, byte-level on the package's corpus,
:mod:`structured.data`) is built four ways from one seed: dense MLPs; Monarch MLPs
(:class:`~structured.layers.MonarchLinear`, ``nblocks`` 2 and 4, freshly initialised);
and reverse sparsification (Monarch ``nblocks`` 4 for the first ``DENSIFY_AT`` of the
steps, then :func:`structured.densify` — exact — and dense training to the end). All see
the same batches in the same order with the same schedule (AdamW, warm-up + cosine, the
optimiser of :mod:`structured.train`). Each model trains at its own best peak learning
rate, chosen by final validation loss from ``LEARNING_RATES`` (one lockstep run per rate);
the comparison is one lockstep run with every model at its chosen rate (the grid's own run
at that rate where all chose the same).

The models are trained **in lockstep**: each step is taken by every model in turn (order
rotated every step), so that load from other processes on this shared machine hits all of
them alike; training wall-clock is the sum of each model's own step times (evaluation
excluded), process CPU time is kept beside it. Every model trains on the one training loop
(:func:`neuralnum.training.loop.train`): its :class:`Lane` keeps its loop — model, AdamW,
schedule, gradient clipping and a batch generator seeded as every other lane's, so all
draw the same batches — and each of its steps is one call of the loop continued in memory
(``LoopConfig.start`` / ``stop_at``), timed whole; at the switch the model is densified in
place and gets a fresh optimizer whose schedule starts at that step.

Reported: validation loss against steps and against training seconds; the wall-clock (and
step) ratio at which each Monarch variant reaches the dense model's final validation loss
— :func:`time_to_quality`, linear interpolation between evaluations — or, when it never
does, how far it stays above; parameter counts and training FLOPs per token with the MLPs'
share. To show why a speed-up is or is not met, a profile times one training step of each
model and the MLPs inside it (median of alternated repeats), and the Amdahl bound the
non-MLP time sets.

Target: Monarch-GPT reaches the dense GPT's final validation loss ≥ 1.5× sooner in
wall-clock at a size where the MLPs carry most of the FLOPs.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from neuralnum.core.runtime import Distributed, make_generator, progress
from neuralnum.models import drawing_from
from neuralnum.training.loop import Loop, LoopConfig
from neuralnum.training.loop import train as run_loop
from neuralnum.training.plugins import GradClip, Schedule, make_scheduler
from structured.conversion import densify, sparsify
from structured.layers import MonarchLinear
from structured.models import ModelConfig, build_model, count_parameters
from structured.train import (
    Task,
    TrainConfig,
    adamw_optimizer,
    evaluate,
    loss_and_correct,
)
from studies import markdown as md
from studies.m2_common import load_note, study_args
from studies.study_io import figure_row, format_table, run_cli, save_figure, write_report

NAME = "monarch_gpt"
TARGET_SPEEDUP = 1.5
MLP_SHARE_TARGET = 0.5          # "a size where the MLP dominates the FLOPs"
DENSIFY_AT = 0.75               # reverse sparsification: fraction of steps trained Monarch
#: Peak learning rates each model chooses from (by final validation loss), per mode.
LEARNING_RATES = {"quick": (3e-3,), "default": (5e-4, 1e-3, 2e-3), "full": (3e-4, 6e-4, 1.2e-3)}
PAPER = ("Dao et al. 2022: Monarch MLPs train GPT-2 about 2x faster to the same "
         "perplexity (GPUs); reverse sparsification: Monarch, then densify")


# ----------------------------------------------------------------------------- config
def base_config(mode: str) -> TrainConfig:
    """The GPT and training every variant shares (``mode``: quick | default | full)."""
    def gpt(d_model: int, n_layers: int, n_heads: int, seq_len: int) -> ModelConfig:
        return ModelConfig(arch="transformer", d_model=d_model, n_layers=n_layers,
                           n_heads=n_heads, seq_len=seq_len, mlp_ratio=4.0)

    common = {"task": "lm-causal", "warmup": 20, "lr": 3e-3, "plot": False}
    if mode == "quick":
        return TrainConfig(**common, model=gpt(64, 1, 2, 16), batch_size=4, steps=6,
                           eval_every=3, eval_batches=1)
    if mode == "full":
        return TrainConfig(**{**common, "lr": 6e-4, "warmup": 200}, model=gpt(768, 12, 12, 256),
                           batch_size=32, steps=5000, eval_every=250, eval_batches=16)
    return TrainConfig(**common, model=gpt(256, 2, 4, 64), batch_size=8, steps=400,
                       eval_every=25, eval_batches=8)


def _is_mlp(name: str, _linear: nn.Linear) -> bool:
    return ".mlp." in f".{name}."


def build(cfg: TrainConfig, nblocks: int | None = None) -> nn.Module:
    """The GPT ``cfg`` describes, its MLP linears Monarch (``nblocks``) or dense (None).

    The one place models are built (:func:`structured.models.build_model`). Monarch
    layers get :class:`MonarchLinear`'s own fan-in initialisation (not the projection of
    the dense initial weights, whose norm would shrink by the discarded rank).
    """
    model = build_model(cfg.model, dtype=cfg.dtype, generator=make_generator(cfg.seed))
    if nblocks is None:
        return model
    sparsify(model, nblocks, filter=_is_mlp)
    with drawing_from(make_generator(cfg.seed + 1)):
        for layer in model.modules():
            if isinstance(layer, MonarchLinear):
                layer.reset_parameters()
    return model


def variants(cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    """Label → ``{"nblocks": int | None, "densify_at": step | None}``."""
    switch = int(DENSIFY_AT * cfg.steps)
    return {"dense": {"nblocks": None, "densify_at": None},
            "monarch-2": {"nblocks": 2, "densify_at": None},
            "monarch-4": {"nblocks": 4, "densify_at": None},
            "monarch-4 -> dense": {"nblocks": 4, "densify_at": switch}}


# ----------------------------------------------------------------------------- counts
def linear_weights(model: nn.Module) -> tuple[int, int]:
    """Multiply-adds per token of all linear maps, and of those inside MLPs.

    ``nn.Linear``: ``in·out``; :class:`MonarchLinear`: its factor entries; the tied LM
    head counts as a ``d × vocab`` map.
    """
    total = mlp = 0
    for name, layer in model.named_modules():
        if isinstance(layer, MonarchLinear):
            macs = layer.monarch.num_params()
        elif isinstance(layer, nn.Linear):
            macs = layer.in_features * layer.out_features
        else:
            continue
        total += macs
        mlp += macs if ".mlp." in f".{name}." else 0
    return total, mlp


def flops_per_token(model: nn.Module, cfg: TrainConfig) -> dict[str, float]:
    """Training FLOPs per token (3 × forward: 2 per multiply-add, attention scores and
    values at ``2·seq_len·d`` multiply-adds per layer) and the MLPs' share."""
    total, mlp = linear_weights(model)
    attention = 2 * cfg.model.seq_len * cfg.model.d_model * cfg.model.n_layers
    forward = 2 * (total + attention)
    return {"train_flops_per_token": 3.0 * forward, "mlp_share": 2 * mlp / forward}


# ----------------------------------------------------------------------------- quality
def _crossing(times: Sequence[float], losses: Sequence[float], target: float) -> float | None:
    """First time the piecewise-linear curve reaches ``loss ≤ target`` (None if never)."""
    for i, (t, loss) in enumerate(zip(times, losses, strict=True)):
        if loss <= target:
            if i == 0:
                return float(t)
            t0, l0 = times[i - 1], losses[i - 1]
            return float(t0 + (t - t0) * (l0 - target) / (l0 - loss))
    return None


def time_to_quality(reference: Sequence[tuple[float, float]],
                    candidate: Sequence[tuple[float, float]]) -> dict[str, float | None]:
    """When ``candidate`` reaches the reference's final loss, relative to the reference.

    Both curves are ``[(time, loss), …]`` in increasing time (any time axis: seconds or
    steps). The target is the reference's last loss; each curve's reaching time is its
    first crossing, linearly interpolated between points. Returns ``target``,
    ``reference_time``, ``candidate_time`` (None if never reached), ``speedup`` =
    reference_time / candidate_time (None if never reached) and ``gap`` = the
    candidate's lowest loss minus the target (≤ 0 once reached). ``ValueError`` on empty
    or unsorted curves.
    """
    for name, curve in (("reference", reference), ("candidate", candidate)):
        if not curve:
            raise ValueError(f"{name} curve is empty")
        times = [t for t, _ in curve]
        if any(b < a for a, b in itertools.pairwise(times)):
            raise ValueError(f"{name} curve's times must be non-decreasing")
    target = reference[-1][1]
    t_ref = _crossing([t for t, _ in reference], [v for _, v in reference], target)
    t_cand = _crossing([t for t, _ in candidate], [v for _, v in candidate], target)
    speedup = None if t_cand is None else (float("inf") if t_cand == 0 else t_ref / t_cand)
    return {"target": target, "reference_time": t_ref, "candidate_time": t_cand,
            "speedup": speedup, "gap": min(loss for _, loss in candidate) - target}


# ----------------------------------------------------------------------------- training
class LockstepTask(Task):
    """:mod:`structured.train`'s task with no held-out metrics inside the loop: the
    lockstep evaluates every model itself, outside the timed steps."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {}


@dataclass
class Lane:
    """One model of the lockstep: its loop (model, optimizer, schedule, clipping and its
    own batch generator, seeded as every other lane's: all draw the same batches), the
    step it densifies at (and its size after), its clocks and its training losses."""

    loop: Loop
    densify_at: int | None
    params_final: int | None = None
    wall: float = 0.0
    cpu: float = 0.0
    losses: list[float] = field(default_factory=list)


def _optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """:func:`structured.train.adamw_optimizer` at peak learning rate ``lr``."""
    optimizer = adamw_optimizer(model, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return optimizer


def _lane(cfg: TrainConfig, spec: dict[str, Any], task: Task, schedule: Schedule) -> Lane:
    model = build(cfg, spec["nblocks"])
    optimizer = _optimizer(model, cfg, spec.get("lr", cfg.lr))
    loop = Loop(model, task, optimizer, make_scheduler(optimizer, schedule),
                hooks=[GradClip(cfg.grad_clip)], generator=make_generator(cfg.seed))
    return Lane(loop, spec["densify_at"])


def _densify(lane: Lane, cfg: TrainConfig, schedule: Schedule, step: int) -> None:
    """Densify the lane's model (exact, in place) and give it a fresh optimizer at the
    same peak learning rate, its schedule continuing at ``step``."""
    loop = lane.loop
    densify(loop.model)
    assert loop.scheduler is not None
    loop.optimizer = _optimizer(loop.model, cfg, loop.scheduler.base_lrs[0])
    loop.scheduler = make_scheduler(loop.optimizer, schedule, start=step)
    lane.params_final = count_parameters(loop.model)


def _take_step(lane: Lane, options: LoopConfig, step: int, cfg: TrainConfig,
               schedule: Schedule) -> None:
    """Step ``step`` of one lane on the one loop (a run continued in memory for one
    step), timed in wall-clock and process CPU time (a densification included)."""
    wall, cpu = time.perf_counter(), time.process_time()
    if lane.densify_at == step:
        _densify(lane, cfg, schedule, step)
    run = run_loop(lane.loop, replace(options, start=step, stop_at=step + 1), Distributed())
    lane.wall += time.perf_counter() - wall
    lane.cpu += time.process_time() - cpu
    lane.losses.append(run.records[-1]["loss"])


def train_lockstep(cfg: TrainConfig, specs: dict[str, dict[str, Any]]
                   ) -> dict[str, dict[str, Any]]:
    """Train every variant on the same batches, alternating per step; see the docstring.
    A spec's ``"lr"`` is its peak learning rate (default ``cfg.lr``).

    Returns label → ``{"params", "records": [{step, train_s, cpu_s, val_loss}], ...}``
    (``params`` at the start; after densifying, ``params_final``).
    """
    task = LockstepTask(cfg)
    schedule = Schedule(warmup=cfg.warmup, decay="cosine", horizon=cfg.steps,
                        min_factor=cfg.min_lr_factor)          # structured.train's schedule
    lanes = {label: _lane(cfg, spec, task, schedule) for label, spec in specs.items()}
    out = {label: {"params": count_parameters(lane.loop.model),
                   **flops_per_token(lane.loop.model, cfg), "records": []}
           for label, lane in lanes.items()}
    options = LoopConfig(steps=cfg.steps, batch_size=cfg.batch_size, seed=cfg.seed,
                         log_every=1, show_progress=False)

    def log(step: int) -> None:
        for label, lane in lanes.items():
            val = evaluate(lane.loop.model, task, cfg, torch.device("cpu"))["val_loss"]
            out[label]["records"].append({"step": step, "train_s": lane.wall,
                                          "cpu_s": lane.cpu, "val_loss": val})

    labels = list(lanes)
    log(0)
    for step in progress(range(cfg.steps), desc="lockstep"):
        shift = step % len(labels)
        for label in labels[shift:] + labels[:shift]:
            _take_step(lanes[label], options, step, cfg, schedule)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            log(step + 1)
    for label, run in out.items():
        losses = lanes[label].losses
        run["final_train_loss"] = statistics.fmean(losses[-max(1, len(losses) // 10):])
        run["final_val_loss"] = run["records"][-1]["val_loss"]
        run["train_s"], run["cpu_s"] = lanes[label].wall, lanes[label].cpu
        if lanes[label].params_final is not None:
            run["params_final"] = lanes[label].params_final
    return out


# ----------------------------------------------------------------------------- profile
def profile_steps(cfg: TrainConfig, specs: dict[str, dict[str, Any]], repeats: int
                  ) -> dict[str, dict[str, float]]:
    """Median seconds of one training step (forward+backward, no optimiser) of each
    non-switching variant and of its MLPs alone on the same activations, alternated."""
    labels = [label for label, s in specs.items() if s["densify_at"] is None]
    models = {label: build(cfg, specs[label]["nblocks"]) for label in labels}
    x, y = Task(cfg).sample(cfg.batch_size, make_generator(cfg.seed))
    hidden = torch.randn(cfg.batch_size, cfg.model.seq_len, cfg.model.d_model,
                         generator=make_generator(cfg.seed))

    def whole(model: nn.Module) -> None:
        model.zero_grad(set_to_none=True)
        loss_and_correct(model(x), y)[0].backward()

    def mlps(model: nn.Module) -> None:
        h = hidden.detach().requires_grad_()
        total = sum(block.mlp(h).sum() for block in model.backbone.blocks)
        total.backward()

    times: dict[str, dict[str, list[float]]] = {
        label: {"step_s": [], "mlp_s": []} for label in labels}
    for label in labels:                                   # warm-up
        whole(models[label])
        mlps(models[label])
    for _ in range(repeats):
        for label in labels:
            for key, fn in (("step_s", whole), ("mlp_s", mlps)):
                start = time.perf_counter()
                fn(models[label])
                times[label][key].append(time.perf_counter() - start)
    prof = {label: {k: statistics.median(v) for k, v in t.items()} for label, t in times.items()}
    dense = prof["dense"]
    for p in prof.values():
        p["mlp_share"] = p["mlp_s"] / p["step_s"]
        p["step_speedup"] = dense["step_s"] / p["step_s"]
        p["mlp_speedup"] = dense["mlp_s"] / p["mlp_s"]
    # Amdahl: even free MLPs leave the dense step's non-MLP time.
    prof["dense"]["amdahl_bound"] = dense["step_s"] / max(1e-12, dense["step_s"] - dense["mlp_s"])
    return prof


# ----------------------------------------------------------------------------- verdicts
def verdicts(result: dict) -> dict[str, bool]:
    """Target name → met: the MLPs carry most FLOPs, and each Monarch variant reaches the
    dense final validation loss ≥ ``TARGET_SPEEDUP``× sooner in wall-clock."""
    out = {f"dense MLPs carry >= {MLP_SHARE_TARGET:.0%} of the FLOPs":
           result["runs"]["dense"]["mlp_share"] >= MLP_SHARE_TARGET}
    for label, q in result["quality"].items():
        s = q["wall"]["speedup"]
        out[f"{label} reaches the dense final val loss >= {TARGET_SPEEDUP:g}x sooner "
            "(wall-clock)"] = s is not None and s >= TARGET_SPEEDUP
    return out


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "never" if value is None else format(value, spec) + suffix


def headline(result: dict) -> str:
    """The results-index line: each Monarch variant's final validation loss above the
    dense model's, and the MLP speed-up of the fastest."""
    dense = result["runs"]["dense"]["final_val_loss"]
    gaps = [f"{label} +{run['final_val_loss'] - dense:.3f}" for label, run in
            result["runs"].items() if label != "dense"]
    return (f"final val loss above dense (nats): {', '.join(gaps)}; "
            f"{md.targets_met(result['verdicts'])}")


def tables(result: dict) -> str:
    """README Markdown: sizes, FLOPs, time-to-quality, the profile, and the verdicts."""
    cfg = result["config"]
    lines = [f"`python -m studies.monarch_gpt` — GPT d_model {cfg['d_model']}, "
             f"{cfg['n_layers']} layers, seq {cfg['seq_len']}, batch {cfg['batch_size']}, "
             f"{cfg['steps']} steps, byte-level corpus; models trained in lockstep "
             f"(alternating steps); {result['load_note']}", "",
             "| model | params | train FLOPs/token | MLP share of FLOPs | peak lr "
             "| final val loss | train wall s (sum of steps) "
             "| reaches dense final loss at (wall s) | wall-clock speed-up | step ratio "
             "| gap above target (nats) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, run in result["runs"].items():
        q = result["quality"].get(label)
        cells = ["", "", "", ""] if q is None else [
            _fmt(q["wall"]["candidate_time"], ".0f"), _fmt(q["wall"]["speedup"], suffix="x"),
            _fmt(q["steps"]["speedup"], suffix="x"), f"{max(0.0, q['wall']['gap']):.3f}"]
        lines.append(f"| {label} | {run['params']:,} | {run['train_flops_per_token']:.3g} | "
                     f"{run['mlp_share']:.0%} | {run['lr']:g} | {run['final_val_loss']:.3f} | "
                     f"{run['train_s']:.0f} | " + " | ".join(cells) + " |")
    if result["lr_grid"]:
        rates = list(result["lr_grid"])
        lines += ["", "Final validation loss per peak learning rate (one lockstep run each; "
                  "each model trains at its lowest):", "",
                  "| model | " + " | ".join(f"lr {float(r):g}" for r in rates) + " |",
                  "|---|" + "---:|" * len(rates)]
        lines += [f"| {label} | " + " | ".join(f"{result['lr_grid'][r][label]:.3f}"
                                                for r in rates) + " |"
                  for label in result["runs"]]
    lines += ["", "How close each variant gets: the loss it ends at, when it first reaches it, "
              "and when the dense model does (wall-clock, same lockstep run):", "",
              "| model | final val loss | reaches it at (wall s) | dense reaches it at (wall s) "
              "| reached sooner than dense by |", "|---|---:|---:|---:|---:|"]
    for label, q in result["quality"].items():
        own = q["dense_to_own_loss"]
        dense_at, own_at = own["candidate_time"], own["reference_time"]
        sooner = None if dense_at is None else dense_at / max(own_at, 1e-12)
        lines.append(f"| {label} | {own['target']:.3f} | {own_at:.0f} | "
                     f"{_fmt(dense_at, '.0f')} | {_fmt(sooner, suffix='x')} |")
    prof = result["profile"]
    lines += ["", f"Profile (median of {result['profile_repeats']} alternated repeats, "
              "forward+backward of one batch):", "",
              "| model | step ms | MLPs ms | MLP share of step | step speed-up vs dense "
              "| MLP speed-up vs dense |", "|---|---:|---:|---:|---:|---:|"]
    for label, p in prof.items():
        lines.append(f"| {label} | {1e3 * p['step_s']:.1f} | {1e3 * p['mlp_s']:.1f} | "
                     f"{p['mlp_share']:.0%} | {p['step_speedup']:.2f}x | "
                     f"{p['mlp_speedup']:.2f}x |")
    lines += ["", f"Amdahl bound from the dense step's non-MLP time: "
              f"{prof['dense']['amdahl_bound']:.2f}x", "", md.targets_table(result["verdicts"])]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- output
def _plot(result: dict, path) -> None:
    fig, (by_step, by_time) = figure_row(2, (11, 4))
    for label, run in result["runs"].items():
        recs = run["records"]
        by_step.plot([r["step"] for r in recs], [r["val_loss"] for r in recs], "o-", ms=3,
                     label=label)
        by_time.plot([r["train_s"] for r in recs], [r["val_loss"] for r in recs], "o-", ms=3,
                     label=label)
    target = result["runs"]["dense"]["final_val_loss"]
    spread = max(run["final_val_loss"] for run in result["runs"].values()) - target
    for ax, xlabel in ((by_step, "step"), (by_time, "training wall-clock (s, lockstep)")):
        ax.axhline(target, color="k", ls=":", lw=1, label="dense final loss")
        # zoomed on the finish, where the curves part: the early drop is common to all
        ax.set_ylim(target - max(0.05, spread), target + max(0.5, 10 * spread))
        ax.set(xlabel=xlabel, ylabel="validation loss (nats/byte)")
        ax.legend()
    by_step.set_title("GPT: dense vs Monarch MLPs")
    save_figure(fig, path)


def choose_learning_rates(cfg: TrainConfig, specs: dict[str, dict[str, Any]],
                          rates: Sequence[float]) -> tuple[dict[str, float], dict]:
    """Each variant's peak learning rate from ``rates``: the one whose lockstep run (all
    variants at that rate) ends at the lowest validation loss. Returns label → rate and
    the runs (rate → :func:`train_lockstep`'s result); no run for a single rate."""
    if len(rates) == 1:
        return {label: rates[0] for label in specs}, {}
    runs = {rate: train_lockstep(replace(cfg, lr=rate), specs)
            for rate in progress(rates, desc="learning rates")}
    return {label: min(rates, key=lambda r: runs[r][label]["final_val_loss"])
            for label in specs}, runs


def run_study(cfg: TrainConfig, profile_repeats: int,
              rates: Sequence[float] | None = None) -> dict:
    """Choose each variant's learning rate (:func:`choose_learning_rates`; default: just
    ``cfg.lr``) and compare the variants trained in one lockstep run at their rates: the
    chosen rate's own run where every variant chose the same, else one more run."""
    specs = variants(cfg)
    chosen, runs_by_rate = choose_learning_rates(cfg, specs, rates or (cfg.lr,))
    specs = {label: {**spec, "lr": chosen[label]} for label, spec in specs.items()}
    same = set(chosen.values())
    if len(same) == 1 and (rate := same.pop()) in runs_by_rate:
        runs = runs_by_rate[rate]        # that rate's run trained every variant at its rate
    else:
        runs = train_lockstep(cfg, specs)
    quality = {}
    dense = runs["dense"]["records"]
    for label, run in runs.items():
        run["lr"] = chosen[label]
        if label == "dense":
            continue
        curves = {axis: ([(r[key], r["val_loss"]) for r in dense],
                         [(r[key], r["val_loss"]) for r in run["records"]])
                  for axis, key in (("wall", "train_s"), ("cpu", "cpu_s"), ("steps", "step"))}
        quality[label] = {axis: time_to_quality(*pair) for axis, pair in curves.items()}
        # how close it gets: the dense model chasing this variant's own final loss
        quality[label]["dense_to_own_loss"] = time_to_quality(*reversed(curves["wall"]))
    config = {k: getattr(cfg.model, k) for k in ("d_model", "n_layers", "n_heads", "seq_len",
                                                  "mlp_ratio")}
    config.update({k: getattr(cfg, k) for k in ("batch_size", "steps", "seed")})
    config["learning_rates"] = list(rates or (cfg.lr,))
    return {"study": NAME, "paper": PAPER, "config": config, "densify_at": DENSIFY_AT,
            "runs": runs, "lr_grid": {str(rate): {label: run["final_val_loss"]
                                                  for label, run in by_label.items()}
                                      for rate, by_label in runs_by_rate.items()},
            "quality": quality, "profile": profile_steps(cfg, specs, profile_repeats),
            "profile_repeats": profile_repeats}


def main(argv: Sequence[str] | None = None) -> dict:
    args = study_args(NAME, __doc__.split("\n\n")[0], argv)
    mode = "quick" if args.quick else "full" if args.full else "default"
    cfg = replace(base_config(mode), out_dir=str(args.out))
    result = run_study(cfg, profile_repeats=3 if args.quick else 7,
                       rates=LEARNING_RATES[mode])
    result["load_note"] = load_note(args.threads)
    result["verdicts"] = verdicts(result)
    rows = [{"model": label, "params": run["params"], "mlp_share": run["mlp_share"],
             "final_val": run["final_val_loss"], "train_s": run["train_s"],
             "cpu_s": run["cpu_s"],
             "reach_s": (result["quality"].get(label) or {}).get("wall", {}).get(
                 "candidate_time"),
             "speedup": (result["quality"].get(label) or {}).get("wall", {}).get("speedup")}
            for label, run in result["runs"].items()]
    print(format_table(rows, ["model", "params", "mlp_share", "final_val", "train_s", "cpu_s",
                              "reach_s", "speedup"]))
    print(tables(result))
    print(f"({result['load_note']})")
    write_report(args.out, NAME, result)
    _plot(result, args.out / f"{NAME}.png")
    return result


if __name__ == "__main__":
    run_cli(main)
