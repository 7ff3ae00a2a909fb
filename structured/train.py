"""One training loop for M2 and Transformer models on LM, vision and MQAR tasks.

    python -m structured.train --task lm-causal --model m2 --steps 200
    python -m structured.train --task vision --model transformer --precision bfloat16
    torchrun --nproc_per_node=2 -m structured.train --task lm-masked --model m2

Read top to bottom: the config, the tasks (data + loss), then :func:`train` — build,
resume, loop (AdamW, warm-up + cosine LR, gradient clipping, bfloat16 autocast or float32/float64),
evaluate on the held-out split, log JSON lines, checkpoint atomically, plot. Under
``torchrun`` every rank draws the same global batch from the same seeded generator and
trains on its slice inside ``DistributedDataParallel`` (gloo on CPU, NCCL on CUDA); the
loss is normalised by the global number of targets, so the averaged gradient equals the
single-process gradient of the whole batch. Everything shared with other loops (seeding,
progress bar, metrics log, checkpoints, exact resume, DDP set-up) is in
:mod:`neuralnum.runtime`.

Outputs in ``out_dir``: ``metrics.jsonl``, ``ckpt.pt``, ``loss.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from neuralnum.arch import count_parameters
from neuralnum.runtime import (
    CheckpointError,
    Distributed,
    MetricsLog,
    cli_defaults,
    init_distributed,
    load_checkpoint,
    make_generator,
    progress,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from neuralnum.validation import parse_precision
from structured.data import IGNORE_INDEX, digits, lm_batch, mask_tokens, mqar_batch, text_splits
from structured.mixer import LINEAR_KINDS
from structured.models import ModelConfig, build_model

__all__ = ["MODELS", "PRECISIONS", "TASKS", "TrainConfig", "lr_at", "main", "train"]

TASKS = ("lm-causal", "lm-masked", "vision", "mqar")
MODELS = ("m2", "transformer")
PRECISIONS = ("float32", "float64", "bfloat16")  # names of neuralnum.validation.PRECISIONS
DEVICES = ("auto", "cpu", "cuda")
_CHOICES = {"task": TASKS, "model": MODELS, "precision": PRECISIONS, "device": DEVICES,
            "dim_mixer": LINEAR_KINDS}
_KIND = {"lm-causal": "gpt", "lm-masked": "bert", "vision": "vit", "mqar": "gpt"}


# ----------------------------------------------------------------------------- config
@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a run; validated (``ValueError``) before any work starts."""

    task: str = "lm-causal"      # lm-causal | lm-masked | vision | mqar
    model: str = "m2"            # m2 | transformer
    # model shape
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: float = 4.0
    dim_mixer: str = "monarch"   # M2 GLU projections: monarch | blockdiag | dense
    nblocks: int = 4
    seq_len: int = 128           # LM / MQAR context (M2: a power of two)
    patch_size: int = 2          # vision: 8×8 digits → (8 / patch)² tokens
    # task details
    mask_prob: float = 0.15      # lm-masked
    mqar_num_kv: int = 8
    mqar_vocab: int = 64
    # optimisation
    steps: int = 200
    batch_size: int = 16         # global, split evenly over ranks
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    precision: str = "float32"   # float32 | float64 | bfloat16 (autocast, float32 weights)
    # evaluation and output
    eval_every: int = 50
    eval_batches: int = 4
    ckpt_every: int = 100
    out_dir: str = "runs/train"
    resume: bool = False
    seed: int = 0
    device: str = "auto"         # auto | cpu | cuda
    plot: bool = True

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("steps", "batch_size", "eval_every", "eval_batches", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("need warmup_steps ≥ 0, lr > 0 and 0 ≤ min_lr_ratio ≤ 1")
        if self.task == "mqar" and self.seq_len < 4 * self.mqar_num_kv:
            raise ValueError(f"mqar needs seq_len ≥ 4·mqar_num_kv = {4 * self.mqar_num_kv}")
        self.model_config()  # validates shapes (e.g. M2's power-of-two length)

    def model_config(self) -> ModelConfig:
        vocab = {"lm-causal": 256, "lm-masked": 257, "mqar": self.mqar_vocab}.get(self.task, 256)
        return ModelConfig(
            kind=_KIND[self.task], arch=self.model, seq_len=self.seq_len, vocab_size=vocab,
            d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
            mlp_ratio=self.mlp_ratio, dim_mixer=self.dim_mixer, nblocks=self.nblocks,
            patch_size=self.patch_size)

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype (bfloat16 keeps float32 weights and autocasts the forward pass)."""
        return parse_precision(self.precision, PRECISIONS).param_dtype


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine to ``min_lr_ratio · lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress_frac = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.min_lr_ratio * cfg.lr
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress_frac))


# ----------------------------------------------------------------------------- tasks
Batch = tuple[torch.Tensor, torch.Tensor]


class Task:
    """Data of one task: ``sample`` draws a global training batch, ``eval_set`` the
    fixed held-out batches. Targets use :data:`IGNORE_INDEX` where there is no label."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        if cfg.task in ("lm-causal", "lm-masked"):
            self.splits = text_splits()
        elif cfg.task == "vision":
            self.images = {s: digits(s, cfg.dtype) for s in ("train", "test")}

    def _draw(self, split: str, batch: int, gen: torch.Generator) -> Batch:
        cfg = self.cfg
        if cfg.task == "mqar":
            return mqar_batch(batch, cfg.seq_len, num_kv=cfg.mqar_num_kv,
                              vocab_size=cfg.mqar_vocab, gen=gen)
        x, y = lm_batch(self.splits[split], batch, cfg.seq_len, gen)
        if cfg.task == "lm-masked":
            return mask_tokens(x, mask_id=256, vocab_size=256, prob=cfg.mask_prob, gen=gen)
        return x, y

    def sample(self, batch: int, gen: torch.Generator) -> Batch:
        if self.cfg.task == "vision":
            data = self.images["train"]
            index = torch.randint(0, len(data.labels), (batch,), generator=gen)
            return data.images[index], data.labels[index]
        return self._draw("train", batch, gen)

    def eval_set(self) -> list[Batch]:
        if self.cfg.task == "vision":
            data = self.images["test"]
            return list(zip(data.images.split(512), data.labels.split(512), strict=True))
        gen = make_generator(self.cfg.seed + 1)
        return [self._draw("val", self.cfg.batch_size, gen) for _ in range(self.cfg.eval_batches)]


def loss_and_correct(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over labelled targets and the number predicted correctly."""
    if logits.dtype == torch.bfloat16:
        logits = logits.float()
    logits = logits.reshape(-1, logits.shape[-1])
    targets = targets.reshape(-1)
    loss = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    labelled = targets != IGNORE_INDEX
    correct = int((logits.argmax(-1)[labelled] == targets[labelled]).sum())
    return loss, correct


def _autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    autocast = parse_precision(cfg.precision, PRECISIONS).autocast
    if autocast is not None:
        return torch.autocast(device.type, dtype=autocast)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, cfg: TrainConfig, device: torch.device
             ) -> dict[str, float]:
    """Mean loss and accuracy over the held-out batches (every rank computes all of it)."""
    model.eval()
    total_loss, total_correct, total = 0.0, 0, 0
    for x, y in task.eval_set():
        with _autocast(cfg, device):
            logits = model(x.to(device))
        loss, correct = loss_and_correct(logits, y.to(device))
        total_loss += float(loss)
        total_correct += correct
        total += int((y != IGNORE_INDEX).sum())
    model.train()
    return {"val_loss": total_loss / total, "val_acc": total_correct / total}


# ----------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig, *, stop_at: int | None = None,
          model: nn.Module | None = None, name: str | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says; returns the final metrics (``val_loss``, ``val_acc``, …).

    ``stop_at`` ends the run after that many steps (checkpointing there) as an
    interruption would, while the LR schedule still spans ``cfg.steps``; a later call with
    ``resume=True`` continues bit-for-bit. ``model`` replaces the model ``cfg`` describes,
    for studies of other architectures: it must map the task's inputs to logits, and its
    initial weights are the caller's (seeded) choice. ``name`` is the display name
    (default: the config's, e.g. ``"M2-GPT"``).
    """
    dist = init_distributed(None if cfg.device == "auto" else cfg.device)
    try:
        return _train(cfg, dist, stop_at, model, name)
    finally:
        dist.close()


def _train(cfg: TrainConfig, dist: Distributed, stop_at: int | None,
           model: nn.Module | None, name: str | None) -> dict[str, Any]:
    local_batch = dist.shard(cfg.batch_size)
    lo, hi = dist.rank * local_batch, (dist.rank + 1) * local_batch
    out = Path(cfg.out_dir)
    ckpt_path = out / "ckpt.pt"
    task = Task(cfg)

    if model is None:
        name = name or cfg.model_config().name
        model = build_model(cfg.model_config(), dtype=cfg.dtype, device=dist.device,
                            generator=make_generator(cfg.seed))
    raw_model = model.to(device=dist.device, dtype=cfg.dtype)
    name = name or type(model).__name__
    n_params = count_parameters(raw_model)
    decay = [p for p in raw_model.parameters() if p.ndim >= 2]
    no_decay = [p for p in raw_model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    gen = make_generator(cfg.seed)

    step = 0
    if cfg.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=dist.device)
        if state["config"] != {**asdict(cfg), "resume": state["config"]["resume"]}:
            raise CheckpointError(f"{ckpt_path} was written by a different config")
        step = restore_training_state(state, model=raw_model, optimizer=optimizer,
                                      generators={"train": gen})
    log = MetricsLog(out / "metrics.jsonl" if dist.is_main else None,
                     resume_step=step if cfg.resume else None)
    model = DistributedDataParallel(raw_model) if dist.enabled else raw_model
    if dist.is_main:
        print(f"{name}: {n_params:,} parameters, task {cfg.task}, "
              f"{dist.world_size} process(es)")

    unit = "img" if cfg.task == "vision" else "tok"
    last = stop_at if stop_at is not None else cfg.steps
    bar = progress(total=last, initial=step, desc=f"{name} {cfg.task}",
                   enabled=dist.is_main)
    metrics: dict[str, Any] = {}
    while step < last:
        t0 = time.perf_counter()
        lr = lr_at(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = task.sample(cfg.batch_size, gen)                    # the global batch
        n_labelled = int((y != IGNORE_INDEX).sum())
        x, y = x[lo:hi].to(dist.device), y[lo:hi].to(dist.device)  # this rank's slice
        with _autocast(cfg, dist.device):
            logits = model(x)
        loss_sum, _ = loss_and_correct(logits, y)
        loss = loss_sum * (dist.world_size / n_labelled)  # DDP's mean → global mean
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1

        train_loss = float(dist.all_reduce_mean(loss.detach().clone()))
        per_s = (len(x) if cfg.task == "vision" else x.numel()) * dist.world_size \
            / (time.perf_counter() - t0)
        metrics = {"loss": train_loss, "lr": lr, "grad_norm": float(grad_norm),
                   f"{unit}_per_s": per_s}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            metrics.update(evaluate(model, task, cfg, dist.device))
        log.log(step, **metrics)
        bar.set_postfix(loss=f"{train_loss:.3f}", **{f"{unit}/s": f"{per_s:,.0f}"})
        bar.update(1)
        if dist.is_main and (step % cfg.ckpt_every == 0 or step == last):
            save_checkpoint(ckpt_path, training_state(
                step=step, model=raw_model, optimizer=optimizer, generators={"train": gen},
                config=asdict(cfg)))
    bar.close()
    dist.barrier()
    if dist.is_main and cfg.plot and log.records:
        plot_losses(log.records, out / "loss.png", title=f"{name} on {cfg.task}")
    if dist.is_main and "val_loss" in metrics:
        print(f"step {step}: val_loss {metrics['val_loss']:.4f}, "
              f"val_acc {metrics['val_acc']:.4f}")
    return {"step": step, "params": n_params, "name": name, **metrics}


def plot_losses(records: list[dict[str, Any]], path: Path, *, title: str) -> Path:
    """Training loss per step and held-out loss at each evaluation, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], label="train", lw=1)
    evals = [r for r in records if "val_loss" in r]
    ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="held-out")
    ax.set(xlabel="step", ylabel="cross-entropy (nats)", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif f.name in _CHOICES:  # validated by TrainConfig, listed here for --help
            parser.add_argument(flag, default=f.default,
                                help=f"one of {', '.join(_CHOICES[f.name])} "
                                     f"(default {f.default})")
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default,
                                help=f"default {f.default}")
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The :class:`TrainConfig` the command line describes (validated)."""
    return TrainConfig(**vars(_parser().parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: parse and validate the config, then :func:`train`."""
    try:
        cfg = parse_config(argv)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    with cli_defaults():
        train(cfg)


if __name__ == "__main__":
    main()
