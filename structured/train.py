"""Language-model, vision and MQAR training of M2 and Transformer models.

    python -m structured.train --task lm-causal --arch m2 --steps 200
    python -m structured.train --task vision --arch transformer --precision bfloat16
    python -m torch.distributed.run --nproc_per_node=2 -m structured.train --task lm-masked

Read top to bottom: the config (:class:`TrainConfig`, nesting the
:class:`~structured.models.ModelConfig`), the tasks (data + loss: :class:`Task`), then
:func:`train`, which builds the model, AdamW with warm-up + cosine LR
(:class:`neuralnum.training.loop.Schedule`), gradient clipping and throughput hooks, and runs the
one training loop :func:`neuralnum.training.loop.train` (DDP, metrics, atomic checkpoints, exact
resume). Under ``torchrun`` every rank draws the same global batch from the same seeded
generator and trains on its slice inside ``DistributedDataParallel``; the loss is
normalised by the global number of targets, so the averaged gradient equals the
single-process gradient of the whole batch. The command line is generated from
:class:`TrainConfig` by :mod:`neuralnum.core.flags`.

Outputs in ``out_dir``: ``metrics.jsonl``, ``ckpt.pt``, ``loss.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from neuralnum.core.entry import add_debug_flag, run_main
from neuralnum.core.figures import figure_grid, save_figure
from neuralnum.core.flags import (
    add_dataclass_arguments,
    checked,
    dataclass_from_args,
    nonnegative_int,
)
from neuralnum.core.runtime import (
    CheckpointError,
    Distributed,
    check_output_path,
    init_distributed,
    make_generator,
)
from neuralnum.core.validation import (
    check_config_choices,
    check_nonnegative_int,
    check_positive_int,
    check_range,
    parse_precision,
)
from neuralnum.models import count_parameters
from neuralnum.training.loop import Loop, LoopConfig
from neuralnum.training.loop import train as run_loop
from neuralnum.training.plugins import GradClip, Hook, Schedule, make_scheduler
from neuralnum.training.plugins import Task as LoopTask
from structured.data import IGNORE_INDEX, digits, lm_batch, mask_tokens, mqar_batch, text_splits
from structured.models import ModelConfig, build_model

__all__ = ["FORMAT", "PRECISIONS", "TASKS", "Task", "TrainConfig", "adamw_optimizer",
           "evaluate", "main", "train"]

FORMAT = "structured.train/2"
PROG = "python -m structured.train"
TaskName = Literal["lm-causal", "lm-masked", "vision", "mqar"]
Precision = Literal["float32", "float64", "bfloat16"]  # of neuralnum.core.validation.PRECISIONS
TASKS: tuple[str, ...] = TaskName.__args__
PRECISIONS: tuple[str, ...] = Precision.__args__
_KIND = {"lm-causal": "gpt", "lm-masked": "bert", "vision": "vit", "mqar": "gpt"}


# ----------------------------------------------------------------------------- config
def _default_model() -> ModelConfig:
    return ModelConfig(d_model=64, n_layers=2, seq_len=128)


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a run; validated (``ValueError``) before any work starts.

    ``model``'s ``kind`` and ``vocab_size`` follow the task (set here); its ``seq_len``
    is the LM / MQAR context (M2: a power of two), its ``patch_size`` splits the 8×8
    digits of the vision task.
    """

    task: TaskName = "lm-causal"
    model: ModelConfig = field(default_factory=_default_model)
    # task details
    mask_prob: float = 0.15      # lm-masked
    mqar_num_kv: int = 8
    mqar_vocab: int = 64
    # optimisation
    steps: int = 200
    batch_size: int = 16         # global, split evenly over ranks
    lr: float = 3e-3
    min_lr_factor: float = 0.1   # the cosine ends at min_lr_factor · lr
    warmup: int = 20
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    precision: Precision = "float32"   # bfloat16: autocast, float32 weights
    # evaluation and output
    eval_every: int = 50
    eval_batches: int = 4
    checkpoint_every: int = 100
    out_dir: str = field(default="runs/train", metadata=checked(check_output_path))
    resume: bool = False
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    plot: bool = True

    def __post_init__(self) -> None:
        check_config_choices(self)
        for name in ("steps", "batch_size", "eval_every", "eval_batches", "checkpoint_every"):
            check_positive_int(getattr(self, name), name)
        check_nonnegative_int(self.warmup, "warmup")
        check_range(self.lr, "lr", 0, low_open=True)
        check_range(self.min_lr_factor, "min_lr_factor", 0, 1)
        if not isinstance(self.model, ModelConfig):
            raise TypeError(f"model must be a ModelConfig, got {type(self.model).__name__}")
        if self.task == "mqar" and self.model.seq_len < 4 * self.mqar_num_kv:
            raise ValueError(f"mqar needs seq_len ≥ 4·mqar_num_kv = {4 * self.mqar_num_kv}")
        vocab = {"lm-causal": 256, "lm-masked": 257, "mqar": self.mqar_vocab}.get(self.task, 256)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "model", replace(self.model, kind=_KIND[self.task],
                                                  vocab_size=vocab))

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype (bfloat16 keeps float32 weights and autocasts the forward)."""
        return parse_precision(self.precision, PRECISIONS).param_dtype


# ----------------------------------------------------------------------------- tasks
Batch = tuple[torch.Tensor, torch.Tensor]


class Task(LoopTask):
    """Data and loss of one task: ``sample`` draws a global training batch, ``eval_set``
    the fixed held-out batches, ``loss`` the summed cross-entropy over labelled targets
    divided by the global batch's count of them. Targets use :data:`IGNORE_INDEX` where
    there is no label."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        if cfg.task in ("lm-causal", "lm-masked"):
            self.splits = text_splits()
        elif cfg.task == "vision":
            self.images = {s: digits(s, cfg.dtype) for s in ("train", "test")}

    def _draw(self, split: str, batch: int, gen: torch.Generator) -> Batch:
        cfg = self.cfg
        if cfg.task == "mqar":
            return mqar_batch(batch, cfg.model.seq_len, num_kv=cfg.mqar_num_kv,
                              vocab_size=cfg.mqar_vocab, gen=gen)
        x, y = lm_batch(self.splits[split], batch, cfg.model.seq_len, gen)
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

    def shard(self, batch: Batch, dist: Distributed) -> tuple[Any, ...]:
        """This rank's ``(x, y)`` and the loss scale ``world / labelled targets``."""
        x, y = batch
        local = dist.shard(len(x))
        rows = slice(dist.rank * local, (dist.rank + 1) * local)
        scale = dist.world_size / int((y != IGNORE_INDEX).sum())
        return x[rows].to(dist.device), y[rows].to(dist.device), scale

    def loss(self, model: nn.Module, batch: tuple[Any, ...]) -> torch.Tensor:
        x, y, scale = batch
        with _autocast(self.cfg, x.device):
            logits = model(x)
        return loss_and_correct(logits, y)[0] * scale  # DDP's mean → the global mean

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return evaluate(model, self, self.cfg, next(model.parameters()).device)


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


# ----------------------------------------------------------------------------- hooks
class Throughput(Hook):
    """Logs ``<unit>_per_s``: samples × ``per_sample`` units per wall second of a step."""

    def __init__(self, unit: str, per_sample: int):
        self.unit, self.per_sample = unit, per_sample
        self.start, self.size = 0.0, 0

    def batch_size(self, size: int) -> int:
        self.start, self.size = time.perf_counter(), size
        return size

    def after_step(self, step: int, loss: float) -> dict[str, float]:
        seconds = time.perf_counter() - self.start
        return {f"{self.unit}_per_s": self.size * self.per_sample / seconds}


# ----------------------------------------------------------------------------- the run
def train(cfg: TrainConfig, *, stop_at: int | None = None,
          model: nn.Module | None = None, name: str | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says; returns the last step's metrics (``val_loss``, ``val_acc``, …).

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


def adamw_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """The loop's AdamW for ``model`` at ``cfg``'s LR and betas: weight decay on matrices
    only (not on biases, norms, positions). Public so that studies training models side
    by side (``studies.monarch_gpt``) optimise them exactly as :func:`train` does."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=cfg.betas)


def _check_config(cfg: TrainConfig, path: Path, state: dict[str, Any]) -> None:
    if state["config"] != {**_config_dict(cfg), "resume": state["config"]["resume"]}:
        raise CheckpointError(f"{path} was written by a different config")


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    data = asdict(cfg)
    data["betas"] = list(cfg.betas)
    return data


def _train(cfg: TrainConfig, dist: Distributed, stop_at: int | None,
           model: nn.Module | None, name: str | None) -> dict[str, Any]:
    out = Path(cfg.out_dir)
    if model is None:
        name = name or cfg.model.name
        model = build_model(cfg.model, dtype=cfg.dtype, device=dist.device,
                            generator=make_generator(cfg.seed))
    model = model.to(device=dist.device, dtype=cfg.dtype)
    name = name or type(model).__name__
    n_params = count_parameters(model)
    optimizer = adamw_optimizer(model, cfg)
    schedule = Schedule(warmup=cfg.warmup, decay="cosine", horizon=cfg.steps,
                        min_factor=cfg.min_lr_factor)
    unit, per_sample = ("img", 1) if cfg.task == "vision" else ("tok", cfg.model.seq_len)
    loop = Loop(model, Task(cfg), optimizer, make_scheduler(optimizer, schedule),
                hooks=[Throughput(unit, per_sample), GradClip(cfg.grad_clip)])
    options = LoopConfig(
        steps=cfg.steps, stop_at=stop_at, batch_size=cfg.batch_size, seed=cfg.seed,
        log_every=1, eval_every=cfg.eval_every, metrics=out / "metrics.jsonl",
        checkpoint=out / "ckpt.pt", checkpoint_every=cfg.checkpoint_every,
        resume=cfg.resume, format=FORMAT, config=_config_dict(cfg),
        desc=f"{name} {cfg.task}")
    if dist.is_main:
        print(f"{name}: {n_params:,} parameters, task {cfg.task}, "
              f"{dist.world_size} process(es)")
    result = run_loop(loop, options, dist,
                      check=functools.partial(_check_config, cfg, out / "ckpt.pt"))
    metrics = {k: v for k, v in (result.records or [{}])[-1].items() if k != "step"}
    if dist.is_main and cfg.plot and result.records:
        plot_losses(result.records, out / "loss.png", title=f"{name} on {cfg.task}")
    if dist.is_main and "val_loss" in metrics:
        print(f"step {result.step}: val_loss {metrics['val_loss']:.4f}, "
              f"val_acc {metrics['val_acc']:.4f}")
    return {"step": result.step, "params": n_params, "name": name, **metrics}


def plot_losses(records: list[dict[str, Any]], path: Path, *, title: str) -> Path:
    """Training loss per step and held-out loss at each evaluation, to a PNG."""
    fig, ((ax,),) = figure_grid(1, 1, (6, 4))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], label="train", lw=1)
    evals = [r for r in records if "val_loss" in r]
    ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="held-out")
    ax.set(xlabel="step", ylabel="cross-entropy (nats)", title=title)
    ax.legend()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- CLI
_EXAMPLES = """examples:
  python -m structured.train --task lm-causal --arch m2 --steps 200
  python -m structured.train --task vision --arch transformer --steps 100 --out-dir runs/vit
  python -m structured.train --task mqar --arch m2 --seq-len 64 --steps 100
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     epilog=_EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, TrainConfig, exclude=("kind", "vocab_size"))
    parser.add_argument("--threads", type=nonnegative_int, default=0,
                        help="torch threads (default 0: torch's own choice)")
    add_debug_flag(parser)
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The :class:`TrainConfig` the command line describes (validated)."""
    return dataclass_from_args(TrainConfig, _parser().parse_args(argv))


def main(argv: list[str]) -> dict[str, Any]:
    """Parse and validate the config, then :func:`train`; errors propagate (:func:`run`
    turns a user's error into one line)."""
    args = _parser().parse_args(argv)
    cfg = dataclass_from_args(TrainConfig, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    return train(cfg)


def run(argv: list[str] | None = None) -> None:
    """The ``python -m structured.train`` entry point (:func:`neuralnum.core.entry.run_main`)."""
    run_main(main, PROG, argv)


if __name__ == "__main__":
    run()
