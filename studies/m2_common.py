"""What the M2 studies share: CLI, parameter matching, training runs, throughput, output.

Not a study itself; ``studies.m2_lm``, ``m2_bert``, ``m2_vision`` and ``mqar`` use it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from neuralnum.runtime import MetricsLog, progress, seeded
from structured.models import ModelConfig, build_model, count_parameters
from structured.train import TrainConfig, train

__all__ = [
    "forward_throughput",
    "load_note",
    "matched",
    "param_count",
    "plot_curves",
    "print_table",
    "study_args",
    "train_run",
    "write_json",
]


def study_args(name: str, doc: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``--quick`` (default) | ``--full``, ``--out DIR`` (``runs/<name>``), ``--threads``."""
    parser = argparse.ArgumentParser(prog=f"python -m studies.{name}", description=doc)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="minutes on 2 CPU cores (default)")
    mode.add_argument("--full", action="store_true", help="paper-like scale (GPU)")
    parser.add_argument("--out", type=Path, default=Path("runs") / name)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is least disturbed on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def load_note(threads: int) -> str:
    """Thread count and 1-minute load average, to print beside any timing."""
    return (f"torch threads {threads}, 1-min load average {os.getloadavg()[0]:.1f} on "
            f"{os.cpu_count()} CPUs (timings on a shared machine are contaminated)")


def param_count(cfg: ModelConfig) -> int:
    """Parameters of the model ``cfg`` describes."""
    with seeded(0):
        return count_parameters(build_model(cfg))


def matched(cfg: ModelConfig, target: int) -> ModelConfig:
    """``cfg`` with the valid ``mlp_ratio`` (steps of 1/8) whose parameter count is nearest
    ``target``."""
    candidates = []
    for ratio in (r / 8 for r in range(2, 129)):
        try:
            candidates.append(cfg.with_(mlp_ratio=ratio))
        except ValueError:  # a hidden width the Monarch layout cannot tile
            continue
    return min(candidates, key=lambda c: abs(param_count(c) - target))


def train_run(cfg: TrainConfig, out: Path, label: str, **kwargs: Any) -> dict[str, Any]:
    """One :func:`structured.train.train` run in ``out/label``; adds wall seconds and the
    logged records."""
    cfg = replace(cfg, out_dir=str(out / label))
    start = time.perf_counter()
    result = train(cfg, **kwargs)
    result["wall_s"] = time.perf_counter() - start
    result["records"] = MetricsLog.read(Path(cfg.out_dir) / "metrics.jsonl")
    result["config"] = asdict(cfg)
    return result


def forward_throughput(configs: dict[str, ModelConfig], lengths: Sequence[int], *,
                       batch: int = 1, repeats: int = 2) -> list[dict[str, Any]]:
    """Inference tokens/s of each model at each length (best of ``repeats``, alternated).

    Every model is rebuilt with ``seq_len = L``; the calls alternate between models so
    that background load hits all of them alike. Returns one row per length.
    """
    rows = []
    for length in progress(lengths, desc="throughput"):
        models, inputs = {}, {}
        for label, cfg in configs.items():
            cfg = cfg.with_(seq_len=length)
            with seeded(0):
                models[label] = build_model(cfg).eval()
            gen = torch.Generator().manual_seed(length)
            inputs[label] = torch.randint(0, cfg.vocab_size, (batch, length), generator=gen)
        times: dict[str, list[float]] = {label: [] for label in configs}
        with torch.no_grad():
            for label in configs:                                   # warm-up
                models[label](inputs[label])
            for _ in range(repeats):
                for label in configs:
                    start = time.perf_counter()
                    models[label](inputs[label])
                    times[label].append(time.perf_counter() - start)
        row: dict[str, Any] = {"seq_len": length}
        for label, t in times.items():
            row[f"{label}_tok_per_s"] = batch * length / min(t)
            row[f"{label}_median_s"] = statistics.median(t)
        rows.append(row)
    return rows


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A plain fixed-width table of ``columns`` (floats to 4 significant digits)."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
        return str(v)
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def write_json(out: Path, name: str, payload: dict[str, Any]) -> Path:
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def plot_curves(runs: dict[str, dict[str, Any]], path: Path, *, title: str,
                key: str = "val_loss", ylabel: str = "held-out loss (nats)") -> Path:
    """Training loss (thin) and held-out ``key`` (markers) of several runs in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, run in runs.items():
        recs = run["records"]
        line, = ax.plot([r["step"] for r in recs], [r["loss"] for r in recs], lw=0.6,
                        alpha=0.6)
        evals = [r for r in recs if key in r]
        ax.plot([r["step"] for r in evals], [r[key] for r in evals], "o-",
                color=line.get_color(), label=f"{label} ({run['params']:,} params)")
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
