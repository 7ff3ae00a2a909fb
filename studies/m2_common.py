"""What the M2 studies share: CLI, parameter matching, training runs, throughput, output.

Not a study itself; ``studies.m2_lm``, ``m2_bert``, ``m2_vision`` and ``mqar`` use it.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from neuralnum.core.flags import positive_int
from neuralnum.core.runtime import MetricsLog, make_generator, progress
from neuralnum.models import count_parameters
from structured.mixer import GLUMixer, cached_filters
from structured.models import ModelConfig, build_model
from structured.train import TrainConfig, train
from studies import markdown as md
from studies.markdown import study_command
from studies.study_io import (
    figure,
    figure_row,
    format_table,
    save_figure,
    study_parser,
    write_report,
)

__all__ = [
    "QUALITY_TARGET",
    "SPEEDUP_TARGET",
    "compare_language_models",
    "forward_throughput",
    "lm_base_config",
    "lm_tables",
    "lm_verdicts",
    "load_note",
    "matched",
    "param_count",
    "plot_curves",
    "plot_throughput",
    "study_args",
    "train_run",
]


#: LM targets (after the paper's claim): M2's held-out loss ≤ 1.05 × the Transformer's at
#: equal tokens, and ≥ 3 × its forward throughput at L = 4096.
QUALITY_TARGET, SPEEDUP_TARGET = 1.05, 3.0
#: Forward passes per model and length; tokens/s is the best (fastest) of them.
THROUGHPUT_REPEATS = 10


def study_args(name: str, doc: str, argv: Sequence[str] | None = None,
               extra: Callable[[argparse.ArgumentParser], object] | None = None
               ) -> argparse.Namespace:
    """``--quick`` (default) | ``--full``, ``--out DIR`` (``runs/<name>``), ``--threads``;
    ``extra(parser)`` adds a study's own options."""
    parser = study_parser(name, doc)
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads (1 is least disturbed on a shared machine)")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    args.command = study_command(name, argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def load_note(threads: int) -> str:
    """Thread count and 1-minute load average, to print beside any timing."""
    return (f"torch threads {threads}, 1-min load average {os.getloadavg()[0]:.1f} on "
            f"{os.cpu_count()} CPUs (timings on a shared machine are contaminated)")


def param_count(cfg: ModelConfig) -> int:
    """Parameters of the model ``cfg`` describes."""
    return count_parameters(build_model(cfg))


def matched(cfg: ModelConfig, target: int) -> ModelConfig:
    """``cfg`` with the valid ``mlp_ratio`` (steps of 1/8) whose parameter count is nearest
    ``target``."""
    candidates = []
    for ratio in (r / 8 for r in range(2, 129)):
        try:
            candidates.append(cfg.replace(mlp_ratio=ratio))
        except ValueError:  # a hidden width the Monarch layout cannot tile
            continue
    return min(candidates, key=lambda c: abs(param_count(c) - target))


def train_run(cfg: TrainConfig, out: Path, label: str, **kwargs: Any) -> dict[str, Any]:
    """One :func:`structured.train.train` run in ``out/label``; adds wall seconds and the
    logged records."""
    cfg = replace(cfg, out_dir=str(out / label))
    start = time.perf_counter()
    result = train(cfg, **{"name": label, **kwargs})
    result["wall_s"] = time.perf_counter() - start
    result["records"] = MetricsLog.read(Path(cfg.out_dir) / "metrics.jsonl")
    result["config"] = asdict(cfg)
    return result


def forward_throughput(configs: dict[str, ModelConfig], lengths: Sequence[int], *,
                       batch: int = 1, repeats: int = 2,
                       uncached: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Inference tokens/s of each model at each length (best of ``repeats``, alternated).

    Every model is rebuilt with ``seq_len = L`` and runs inside
    :func:`structured.mixer.cached_filters`; the models named in ``uncached`` are also
    timed without it (keys ``"<label> (no filter cache)_…"``). The calls alternate
    between models so that background load hits all of them alike. Returns one row per
    length.
    """
    rows = []
    for length in progress(lengths, desc="throughput"):
        runs: dict[str, tuple[torch.nn.Module, torch.Tensor]] = {}
        with contextlib.ExitStack() as caches:
            for label, cfg in configs.items():
                cfg = cfg.replace(seq_len=length)
                gen = torch.Generator().manual_seed(length)
                idx = torch.randint(0, cfg.vocab_size, (batch, length), generator=gen)
                model = build_model(cfg, generator=make_generator(0)).eval()
                runs[label] = (caches.enter_context(cached_filters(model)), idx)
                if label in uncached:
                    runs[f"{label} (no filter cache)"] = (
                        build_model(cfg, generator=make_generator(0)).eval(), idx)
            times: dict[str, list[float]] = {label: [] for label in runs}
            with torch.no_grad():
                for _ in range(repeats + 1):                # the first round warms up
                    for label, (model, idx) in runs.items():
                        start = time.perf_counter()
                        model(idx)
                        times[label].append(time.perf_counter() - start)
        row: dict[str, Any] = {"seq_len": length}
        for label, t in times.items():
            row[f"{label}_tok_per_s"] = batch * length / min(t[1:])
            row[f"{label}_median_s"] = statistics.median(t[1:])
        rows.append(row)
    return rows


def glu_layout_speedup(cfg: ModelConfig, *, length: int = 4096, repeats: int = 10) -> float:
    """Forward speed-up of :class:`structured.mixer.GLUMixer`'s features-first, chunked
    layout over the plain ``down(gelu(gate) · value)`` on ``(1, length, d)`` tokens (best
    of ``repeats``, alternated; the two are equal in value and gradient, see
    ``tests/structured/test_mixer.py``)."""
    mlp = GLUMixer(cfg.d_model, cfg.mlp_hidden, linear=cfg.dim_mixer, nblocks=cfg.nblocks)
    u = torch.randn(1, length, cfg.d_model, generator=make_generator(0))

    def plain() -> torch.Tensor:
        gate, value = mlp.up(u).split(cfg.mlp_hidden, dim=-1)
        return mlp.down(torch.nn.functional.gelu(gate) * value)

    times: dict[str, list[float]] = {"layout": [], "plain": []}
    with torch.no_grad():
        for _ in range(repeats + 1):                        # the first round warms up
            for name, run in (("layout", lambda: mlp(u)), ("plain", plain)):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return min(times["plain"][1:]) / min(times["layout"][1:])


def plot_curves(runs: dict[str, dict[str, Any]], path: Path, *, title: str,
                key: str = "val_loss", ylabel: str = "held-out loss (nats)") -> Path:
    """Training loss (left) and held-out ``key`` (right) of several runs in one PNG."""
    fig, (left, right) = figure_row(2, (10, 4))
    for label, run in runs.items():
        recs = run["records"]
        left.plot([r["step"] for r in recs], [r["loss"] for r in recs], lw=0.8,
                  label=f"{label} ({run['params']:,} params)")
        evals = [r for r in recs if key in r]
        right.plot([r["step"] for r in evals], [r[key] for r in evals], "o-", label=label)
    left.set(xlabel="step", ylabel="training loss (nats)", title=title)
    right.set(xlabel="step", ylabel=ylabel)
    left.legend()
    right.legend()
    save_figure(fig, path)
    return path


def plot_throughput(rows: Sequence[dict[str, Any]], path: Path, labels: Sequence[str]) -> Path:
    """Tokens/s against sequence length (log-log), one line per model."""
    fig, ax = figure((6, 4))
    for label in labels:
        ax.plot([r["seq_len"] for r in rows], [r[f"{label}_tok_per_s"] for r in rows], "o-",
                label=label)
    lengths = [r["seq_len"] for r in rows]
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.minorticks_off()
    ax.set(xlabel="sequence length", ylabel="tokens / s",
           title="forward throughput, batch 1 (CPU)")
    ax.legend()
    save_figure(fig, path)
    return path


def lm_base_config(task: str, full: bool) -> TrainConfig:
    """The Transformer run both LM studies compare against (quick: 2×64, 128-byte context)."""
    model = ModelConfig(arch="transformer", d_model=256 if full else 64,
                        n_layers=4 if full else 2, n_heads=4, seq_len=512 if full else 128)
    return TrainConfig(
        task=task, model=model, steps=3000 if full else 150, batch_size=32 if full else 16,
        lr=3e-3, warmup=100 if full else 15, eval_every=500 if full else 50,
        eval_batches=16 if full else 8, plot=False)


def compare_language_models(args: argparse.Namespace, name: str, base: TrainConfig,
                            labels: tuple[str, str], lengths: Sequence[int],
                            paper: str) -> dict[str, Any]:
    """Transformer ``base`` vs M2 at its parameter budget: quality at equal tokens, then
    forward throughput at ``lengths``; prints tables, writes JSON and PNGs, returns them.

    ``labels`` = (Transformer's name, M2's name). M2 runs twice: with the block-diagonal
    GLU of the public M2-BERT (``<M2>``) and with a dense GLU (``<M2>-dense``); each
    one's MLP width is the one whose parameter count is nearest the Transformer's
    (:func:`matched`).
    """
    tf_label, m2_label = labels
    tf_cfg = base.model
    configs = {tf_label: tf_cfg}
    for label, mixer in ((m2_label, "blockdiag"), (f"{m2_label}-dense", "dense")):
        configs[label] = matched(tf_cfg.replace(arch="m2", dim_mixer=mixer), param_count(tf_cfg))
    runs = {}
    for label, cfg in configs.items():
        run_cfg = base if label == tf_label else replace(base, model=cfg)
        runs[label] = train_run(run_cfg, args.out, label)
    quality = _quality_rows(base, configs, runs, tf_label)
    print(f"\n{name}: quality at equal tokens ({base.task}, {args.out}; target loss_vs_tf ≤ "
          f"1.05):")
    print(format_table(quality, ["model", "params", "mlp_hidden", "tokens", "val_loss",
                                 "loss_vs_tf", "perplexity", "bits_per_byte", "val_acc",
                                 "train_s"]))
    rows = forward_throughput(configs, lengths, repeats=THROUGHPUT_REPEATS,
                              uncached=[m2_label])
    summary = _throughput_summary(rows, configs, runs, labels)
    print(f"\nForward throughput, batch 1 ({load_note(args.threads)}):")
    print(format_table(rows, ["seq_len", *(f"{label}_tok_per_s" for label in configs),
                              *(f"{label}_speedup" for label in summary)]))
    _print_summary(summary, labels)
    print(f"paper: {paper}")

    plot_curves(runs, args.out / f"{name}_loss.png", title=f"{base.task}, equal tokens")
    plot_throughput(rows, args.out / f"{name}_throughput.png", list(configs))
    payload = {
        "command": args.command, "mode": "full" if args.full else "quick",
        "paper": paper, "quality": quality, "labels": list(labels),
        "throughput_repeats": THROUGHPUT_REPEATS,
        "throughput": rows, "summary": summary, "load": load_note(args.threads),
        "model_configs": {k: asdict(v) for k, v in configs.items()},
        "runs": {k: {kk: vv for kk, vv in v.items() if kk != "records"}
                 for k, v in runs.items()},
    }
    payload["verdicts"] = lm_verdicts(payload)
    write_report(args.out, name, payload)
    return payload


def _quality_rows(base: TrainConfig, configs: dict[str, Any], runs: dict[str, Any],
                  tf_label: str) -> list[dict[str, Any]]:
    """Held-out quality of every run at equal tokens, relative to the Transformer's."""
    tokens = base.steps * base.batch_size * base.model.seq_len
    tf_loss = runs[tf_label]["val_loss"]
    return [{"model": label, "params": run["params"], "mlp_hidden": configs[label].mlp_hidden,
             "tokens": tokens, "val_loss": run["val_loss"],
             "loss_vs_tf": run["val_loss"] / tf_loss, "perplexity": math.exp(run["val_loss"]),
             "bits_per_byte": run["val_loss"] / math.log(2), "val_acc": run["val_acc"],
             "train_s": run["wall_s"]} for label, run in runs.items()]


def _throughput_summary(rows: list[dict[str, Any]], configs: dict[str, Any],
                        runs: dict[str, Any], labels: tuple[str, str]) -> dict[str, Any]:
    """Adds each M2 variant's speed-up to ``rows``; per variant: crossover length,
    speed-up at L = 4096 and loss vs the Transformer (plus the filter cache's own
    speed-up for the block-diagonal M2)."""
    tf_label, m2_label = labels
    m2_labels = [label for label in configs if label != tf_label]
    for row in rows:
        for label in m2_labels:
            row[f"{label}_speedup"] = row[f"{label}_tok_per_s"] / row[f"{tf_label}_tok_per_s"]
    summary = {}
    for label in m2_labels:
        summary[label] = {
            "crossover_seq_len": next((r["seq_len"] for r in rows
                                       if r[f"{label}_speedup"] > 1), None),
            "speedup_at_4096": next((r[f"{label}_speedup"] for r in rows
                                     if r["seq_len"] == 4096), None),
            "loss_vs_tf": runs[label]["val_loss"] / runs[tf_label]["val_loss"]}
    row_4096 = next((r for r in rows if r["seq_len"] == 4096), None)
    if row_4096 is not None:
        summary[m2_label]["filter_cache_speedup_at_4096"] = (
            row_4096[f"{m2_label}_tok_per_s"]
            / row_4096[f"{m2_label} (no filter cache)_tok_per_s"])
    summary[m2_label]["glu_layout_speedup_at_4096"] = glu_layout_speedup(configs[m2_label])
    return summary


def _print_summary(summary: dict[str, Any], labels: tuple[str, str]) -> None:
    tf_label, m2_label = labels
    for label, row in summary.items():
        print(f"{label}: crossover L = {row['crossover_seq_len']}, speed-up at L=4096 = "
              f"{row['speedup_at_4096']:.2f}x (target ≥ {SPEEDUP_TARGET:g}x), loss vs {tf_label} "
              f"{row['loss_vs_tf']:.3f} (target ≤ 1.05)")
    print(f"{m2_label}: the features-first, chunked GLU layout speeds the GLU forward at "
          f"L=4096 by {summary[m2_label]['glu_layout_speedup_at_4096']:.2f}x")
    if "filter_cache_speedup_at_4096" in summary[m2_label]:
        print(f"{m2_label}: the inference filter cache (structured.mixer.cached_filters) "
              f"speeds the forward pass at L=4096 by "
              f"{summary[m2_label]['filter_cache_speedup_at_4096']:.2f}x")


def lm_verdicts(result: dict[str, Any]) -> dict[str, bool]:
    """Targets of the LM studies, per M2 variant: ``<M2>:quality`` — held-out loss at most
    :data:`QUALITY_TARGET` × the Transformer's (equal tokens); ``<M2>:throughput`` —
    forward tokens/s at L = 4096 at least :data:`SPEEDUP_TARGET` × the Transformer's
    (missing measurement: not met)."""
    tf_label = result["labels"][0]
    tf_loss = next(q["val_loss"] for q in result["quality"] if q["model"] == tf_label)
    at_4096 = next((r for r in result["throughput"] if r["seq_len"] == 4096), {})
    out = {}
    for q in result["quality"]:
        label = q["model"]
        if label == tf_label:
            continue
        out[f"{label}:quality"] = q["val_loss"] / tf_loss <= QUALITY_TARGET
        tf_speed, speed = at_4096.get(f"{tf_label}_tok_per_s"), at_4096.get(f"{label}_tok_per_s")
        out[f"{label}:throughput"] = bool(tf_speed and speed
                                          and speed / tf_speed >= SPEEDUP_TARGET)
    return out


def lm_headline(result: dict[str, Any]) -> str:
    """The results-index line of an LM study: per M2 model, its held-out loss and its
    forward tokens/s at L = 4096, each relative to the Transformer's."""
    tf_label = result["labels"][0]
    tf_loss = next(q["val_loss"] for q in result["quality"] if q["model"] == tf_label)
    at_4096 = next((r for r in result["throughput"] if r["seq_len"] == 4096), {})
    parts = []
    for q in result["quality"]:
        label = q["model"]
        if label == tf_label:
            continue
        speed = (md.times(at_4096[f"{label}_tok_per_s"] / at_4096[f"{tf_label}_tok_per_s"])
                 if at_4096 else "—")
        parts.append(f"{label}: {md.fixed(q['val_loss'] / tf_loss, 3)}× {tf_label}'s loss, "
                     f"{speed} its tokens/s at L = 4096")
    return "; ".join(parts)


def lm_tables(result: dict[str, Any]) -> str:
    """Results block of an LM study: quality and forward throughput per model."""
    tf_label = result["labels"][0]
    tf_loss = next(q["val_loss"] for q in result["quality"] if q["model"] == tf_label)
    lengths = [r["seq_len"] for r in result["throughput"]]
    shown = [n for n in lengths if n >= 1024] or lengths
    at_4096 = next((r for r in result["throughput"] if r["seq_len"] == 4096), {})
    best = f"best of {result['throughput_repeats']}"
    rows = []
    for q in result["quality"]:
        label = q["model"]
        speeds = {r["seq_len"]: r[f"{label}_tok_per_s"] for r in result["throughput"]}
        ratio = (at_4096[f"{label}_tok_per_s"] / at_4096[f"{tf_label}_tok_per_s"]
                 if at_4096 else None)
        rows.append([label, md.count(q["params"]), md.fixed(q["val_loss"], 3),
                     md.fixed(q["val_loss"] / tf_loss, 3), *(md.count(speeds[n]) for n in shown),
                     md.times(ratio)])
    verdict = lm_verdicts(result)
    lines = [md.command(result, f"{q['tokens']:,} training tokens per model; forward "
                                f"throughput at batch 1, one thread"), "",
             md.table(["model", "params", "val loss (nats/byte)", f"loss vs {tf_label}",
                       *(f"tokens/s L = {n} ({best})" for n in shown),
                       "speed-up at L = 4096"], rows), ""]
    goals = {"quality": f"val loss ≤ {QUALITY_TARGET}× {tf_label}'s",
             "throughput": f"≥ {SPEEDUP_TARGET:g}× {tf_label}'s tokens/s at L = 4096"}
    for key, met in verdict.items():
        label, target = key.split(":")
        lines.append(f"- {label} {target} target ({goals[target]}): "
                     f"**{'met' if met else 'not met'}**")
    return "\n".join(lines)
