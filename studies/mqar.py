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

Zoology (Arora et al. 2023) reports attention solving MQAR at every width tested while
gated convolutions (H3/Hyena/BaseConv) need widths that grow with the number of
key-value pairs; the question here is where M2's data-dependent gates place it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from neuralnum.arch import build_model as build_arch
from neuralnum.runtime import seeded
from structured.train import TrainConfig
from studies.m2_common import (
    matched,
    param_count,
    plot_curves,
    print_table,
    study_args,
    train_run,
    write_json,
)

NAME = "mqar"


class ArchLM(nn.Module):
    """A :mod:`neuralnum.arch` body as a token model: embed → body → LayerNorm → head."""

    def __init__(self, name: str, vocab: int, d_model: int, n_layers: int, seq_len: int,
                 **options: object):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.body = build_arch(name, d_model, n_layers, seq_len, **options)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.body(self.embed(idx))))


def main(argv: Sequence[str] | None = None) -> dict:
    args = study_args(NAME, __doc__.split("\n\n")[0], argv)
    full = args.full
    base = TrainConfig(task="mqar", seq_len=256 if full else 64, mqar_num_kv=16 if full else 4,
                       mqar_vocab=256 if full else 64, d_model=128 if full else 64,
                       n_layers=2, n_heads=4, steps=4000 if full else 600,
                       batch_size=64 if full else 32, lr=3e-3, warmup_steps=50,
                       dim_mixer="blockdiag", eval_every=500 if full else 200,
                       eval_batches=8, plot=False)
    d, layers, vocab, length = base.d_model, base.n_layers, base.mqar_vocab, base.seq_len
    target = param_count(replace(base, model="transformer").model_config())
    m2 = matched(replace(base, model="m2").model_config(), target)

    def arch_lm(name: str, n_layers: int, **options: object) -> ArchLM:
        with seeded(base.seed):
            return ArchLM(name, vocab, d, n_layers, length, **options)

    baseconv_layers = min(range(1, 17), key=lambda n: abs(
        sum(p.numel() for p in arch_lm("baseconv", n, short_conv=3).parameters()) - target))
    runs = {}
    runs["M2"] = train_run(replace(base, model="m2", mlp_ratio=m2.mlp_ratio), args.out, "M2")
    runs["softmax attention"] = train_run(replace(base, model="transformer"), args.out,
                                          "softmax-attention")
    outside = {"BaseConv": arch_lm("baseconv", baseconv_layers, short_conv=3),
               "linear attention": arch_lm("linear_attention", layers, n_heads=base.n_heads,
                                           mlp=True)}
    for label, model in outside.items():
        runs[label] = train_run(base, args.out, label.replace(" ", "-"), model=model,
                                name=label)
    rows = [{"model": label, "params": r["params"], "val_acc": r["val_acc"],
             "val_loss": r["val_loss"], "train_s": r["wall_s"]} for label, r in runs.items()]
    print(f"\nMQAR: seq_len {length}, {base.mqar_num_kv} key-value pairs, vocab {vocab}, "
          f"d_model {d}, {base.steps} steps x {base.batch_size}:")
    print_table(rows, ["model", "params", "val_acc", "val_loss", "train_s"])
    plot_curves(runs, args.out / "mqar_curves.png", title="MQAR query accuracy",
                key="val_acc", ylabel="held-out query accuracy")
    payload = {"mode": "full" if full else "quick", "rows": rows,
               "runs": {k: {kk: vv for kk, vv in v.items() if kk != "records"}
                        for k, v in runs.items()}}
    write_json(args.out, NAME, payload)
    return payload


if __name__ == "__main__":
    main()
