"""Multi-query associative recall (MQAR): M2, BaseConv, linear and softmax attention.

    python -m studies.mqar [--quick|--full] [--out DIR] [--threads T]

Every model gets the same width ``d_model`` and the same training (task ``mqar`` of
:mod:`structured.train`: keys/values in context, each key queried once later, loss and
accuracy on the queried positions only). Softmax attention is the GPT baseline of
:mod:`structured.models` (2 layers, the size every other model is matched to); M2 is
M2-GPT with the block-diagonal GLU width that matches GPT's parameter count; BaseConv and
linear attention come from :mod:`neuralnum.arch` (issue 3), wrapped with the same token
embedding, final LayerNorm and linear head. Linear attention keeps its MLP (then it has
GPT's size); BaseConv has no MLP, so it gets the number of layers whose parameter count
is nearest GPT's. Parameter counts are printed beside the accuracies.

Learning rate: as in Zoology, each model is trained at every rate of a small grid; the
rate is chosen on the validation draw (the one :func:`structured.train.evaluate` logs,
seed + 1) and the reported accuracy is measured on a separate test draw (seed + 1001)
that played no part in the choice. Both are printed.

M2's implicit filters carry Hyena's exponential decay: at the default, channels have
decayed to 1% between 0.3·L and 1.5·L, so half of them barely reach keys more than L/2
back. The row "M2 slow decay" is the same model with decay to 1% between 1.5·L and 6·L.

Zoology (Arora et al. 2023) reports attention solving MQAR at every width tested while
gated convolutions (H3/Hyena/BaseConv) need widths that grow with the number of
key-value pairs; the question here is where M2's data-dependent gates place it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import nn

from neuralnum.arch import TokenConfig, arch_config, drawing_from
from neuralnum.arch import build_model as build_arch
from neuralnum.runtime import make_generator
from structured.mixer import ImplicitFilter, SequenceMixer
from structured.models import ModelConfig, build_model
from structured.train import Task, TrainConfig, evaluate
from studies.m2_common import (
    load_note,
    matched,
    param_count,
    plot_curves,
    study_args,
    train_run,
)
from studies.study_io import format_table, write_report

NAME = "mqar"
TEST_SEED_OFFSET = 1000      # the test draw uses generator seed + 1 + this
SLOW_DECAY = (1.5, 6.0)      # M2 ablation: filters decay to 1% at 1.5·L … 6·L, not 0.3 … 1.5
#: The grid stops at 1e-2: at 3e-2 (quick task) BaseConv diverges to NaN and both M2 rows
#: collapse to chance, while softmax attention gains nothing (0.302 vs 0.306).
LEARNING_RATES = {"quick": (1e-3, 3e-3, 1e-2), "full": (3e-4, 1e-3, 3e-3, 1e-2)}


class ArchLM(nn.Module):
    """A :mod:`neuralnum.arch` body as a token model: embed → body → LayerNorm → head,
    weights drawn from ``generator`` (``None``: seed 0)."""

    def __init__(self, config: TokenConfig, vocab: int, *,
                 generator: torch.Generator | None = None):
        super().__init__()
        with drawing_from(generator) as gen:
            self.embed = nn.Embedding(vocab, config.d_model)
            self.body = build_arch(config, generator=gen)
            self.norm = nn.LayerNorm(config.d_model)
            self.head = nn.Linear(config.d_model, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.body(self.embed(idx))))


def base_config(full: bool) -> TrainConfig:
    """The task and training every model shares (quick: small enough for 2 CPU cores)."""
    if full:   # Zoology-like: 256 tokens, 16 pairs, vocab 256 (Arora et al. 2023 use 8192)
        model = ModelConfig(seq_len=256, d_model=128, n_layers=2, n_heads=4,
                            dim_mixer="blockdiag")
        return TrainConfig(task="mqar", model=model, mqar_num_kv=16, mqar_vocab=256,
                           steps=4000, batch_size=64, warmup=200, eval_every=500,
                           eval_batches=8, plot=False)
    model = ModelConfig(seq_len=32, d_model=32, n_layers=2, n_heads=4, dim_mixer="blockdiag")
    return TrainConfig(task="mqar", model=model, mqar_num_kv=4, mqar_vocab=64, steps=800,
                       batch_size=32, warmup=50, eval_every=200, eval_batches=8, plot=False)


def test_accuracy(model: nn.Module, cfg: TrainConfig) -> dict[str, float]:
    """Loss and accuracy on the test draw (generator seed distinct from validation's)."""
    test_cfg = replace(cfg, seed=cfg.seed + TEST_SEED_OFFSET, eval_batches=2 * cfg.eval_batches)
    metrics = evaluate(model, Task(test_cfg), test_cfg, next(model.parameters()).device)
    return {"test_loss": metrics["val_loss"], "test_acc": metrics["val_acc"]}


def with_filter_decay(model: nn.Module, fast: float, slow: float, *,
                      generator: torch.Generator | None = None) -> nn.Module:
    """``model`` with every M2 filter rebuilt to decay to 1% at ``fast``·L … ``slow``·L
    (new weights drawn from ``generator``)."""
    with drawing_from(generator):
        for mixer in model.modules():
            if isinstance(mixer, SequenceMixer):
                old = mixer.filter
                mixer.filter = ImplicitFilter(mixer.d_model, order=old.mlp[0].out_features,
                                              bands=old.bands, fast_decay=fast,
                                              slow_decay=slow).to(old.mlp[0].weight.dtype)
    return model


#: A model constructor: weights drawn from the generator it is given (``None``: seed 0).
Builder = Callable[..., nn.Module]


def builders(base: TrainConfig) -> dict[str, Builder]:
    """A constructor of each model, all matched to softmax attention's size."""
    d, layers, vocab, length = (base.model.d_model, base.model.n_layers, base.mqar_vocab,
                                base.model.seq_len)
    gpt = replace(base.model, arch="transformer")
    target = param_count(gpt)
    m2 = matched(replace(base.model, arch="m2"), target)

    def arch_lm(name: str, n_layers: int, **options: object) -> Builder:
        config = arch_config(name, d_model=d, n_layers=n_layers, seq_len=length, **options)
        return lambda generator=None: ArchLM(config, vocab, generator=generator)

    def size(make: Builder) -> int:
        return sum(p.numel() for p in make().parameters())

    baseconv_layers = min(range(1, 17), key=lambda n: abs(
        size(arch_lm("baseconv", n, short_conv=3)) - target))
    return {"softmax attention": lambda generator=None: build_model(gpt, generator=generator),
            "M2": lambda generator=None: build_model(m2, generator=generator),
            "M2 slow decay": lambda generator=None: with_filter_decay(
                build_model(m2, generator=generator), *SLOW_DECAY, generator=generator),
            "BaseConv": arch_lm("baseconv", baseconv_layers, short_conv=3),
            "linear attention": arch_lm("linear_attention", layers, n_heads=base.model.n_heads,
                                        mlp=True)}


def main(argv: Sequence[str] | None = None) -> dict:
    args = study_args(NAME, __doc__.split("\n\n")[0], argv)
    base = base_config(args.full)
    lrs = LEARNING_RATES["full" if args.full else "quick"]
    sweep, runs, rows = [], {}, []
    for label, make in builders(base).items():
        best = None
        for lr in lrs:
            cfg = replace(base, lr=lr)
            model = make(make_generator(cfg.seed))
            tag = f"{label.replace(' ', '-')}-lr{lr:g}"
            run = train_run(cfg, args.out, tag, model=model, name=f"{label} lr {lr:g}")
            run.update(test_accuracy(model, cfg), lr=lr)
            sweep.append({"model": label, "lr": lr, "val_acc": run["val_acc"],
                          "test_acc": run["test_acc"], "train_s": run["wall_s"]})
            if best is None or run["val_acc"] > best["val_acc"]:
                best = run
        runs[label] = best
        rows.append({"model": label, "params": best["params"], "best_lr": best["lr"],
                     "val_acc": best["val_acc"], "test_acc": best["test_acc"],
                     "test_loss": best["test_loss"]})
    chance = 1 / (base.mqar_vocab - base.mqar_vocab // 2)
    print(f"\nMQAR: seq_len {base.model.seq_len}, {base.mqar_num_kv} key-value pairs, vocab "
          f"{base.mqar_vocab} (chance {chance:.3f}), d_model {base.model.d_model}, "
          f"{base.steps} steps x {base.batch_size}; learning-rate sweep (chosen on val_acc):")
    print(format_table(sweep, ["model", "lr", "val_acc", "test_acc", "train_s"]))
    print(f"({load_note(args.threads)})\n\nBest learning rate per model (test draw unseen "
          "by the choice):")
    print(format_table(rows, ["model", "params", "best_lr", "val_acc", "test_acc",
                              "test_loss"]))
    plot_curves(runs, args.out / "mqar_curves.png", title="MQAR query accuracy (best lr)",
                key="val_acc", ylabel="validation query accuracy")
    payload = {"mode": "full" if args.full else "quick", "chance": chance, "rows": rows,
               "sweep": sweep,
               "runs": {k: {kk: vv for kk, vv in v.items() if kk != "records"}
                        for k, v in runs.items()}}
    write_report(args.out, NAME, payload)
    return payload


if __name__ == "__main__":
    main()
