"""Multi-query associative recall (MQAR): accuracy vs model width, Zoology's separation.

    python -m studies.mqar [--quick|--full] [--out DIR] [--threads T]

Task (:func:`structured.data.mqar_batch`, fresh examples every step): ``num_kv`` key-value
pairs, then each key queried once at a random later position; loss and accuracy on the
queried positions only. For each (sequence length, pairs) setting and each model width
``d_model`` every model is trained at every learning rate of a small grid; the rate is
chosen on the validation draw (the one :func:`structured.train.evaluate` logs, seed + 1)
and the reported accuracy is measured on a separate test draw (seed + 1001) that played
no part in the choice, with its binomial standard error over the test queries (not a
seed-to-seed spread: one seed per cell).

Models, all with the same width and two layers of sequence mixing:

* softmax attention — the GPT of :mod:`structured.models` (attention + MLP blocks);
* linear attention — :mod:`neuralnum.models`'s, with its MLP;
* BaseConv — :mod:`neuralnum.models`'s gated convolution (long filter + short conv), as
  many layers as bring its parameter count nearest the GPT's (it has no MLP);
* M2 / M2 slow decay — M2-GPT with the block-diagonal GLU width matching the GPT's size;
  "slow decay" rebuilds its implicit filters to decay to 1% between 1.5·L and 6·L (the
  default decays between 0.3·L and 1.5·L, so half the channels barely reach keys more
  than L/2 back).

Both attention models get a causal depthwise convolution of kernel 3 on their token
embeddings (:class:`ShortConv`): BaseConv and M2 have one inside every layer, and it
hands attention the previous token, which plain attention must otherwise learn through
its positional embeddings first (a long plateau at 1/num_kv accuracy on CPU budgets).

Zoology (Arora et al. 2023) shows attention solving MQAR at every width tested while
gated convolutions need widths that grow with the sequence length and number of pairs;
the figure (accuracy vs width, one panel per setting) is its layout, and the question is
where M2's data-dependent gates place it.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from neuralnum.core.runtime import make_generator, progress_shown, show_progress
from neuralnum.models import TokenConfig, arch_config, drawing_from
from neuralnum.models import build_model as build_arch
from structured.mixer import ImplicitFilter, SequenceMixer
from structured.models import ModelConfig, build_model
from structured.train import Task, TrainConfig, evaluate
from studies.m2_common import load_note, matched, param_count, study_args, train_run
from studies.markdown import targets_table
from studies.study_io import figure_row, format_table, run_cli, save_figure, write_report

NAME = "mqar"
TEST_SEED_OFFSET = 1000      # the test draw uses generator seed + 1 + this
TEST_BATCHES = 4             # test draw = this many × the validation draw
SLOW_DECAY = (1.5, 6.0)      # M2 ablation: filters decay to 1% at 1.5·L … 6·L, not 0.3 … 1.5
SOLVED = 0.99                # "solves MQAR": test accuracy at least this
SEPARATION = 0.10            # attention minus BaseConv at the smallest width, at least


@dataclass(frozen=True)
class Grid:
    """What one mode sweeps: (seq_len, num_kv) settings, widths, learning rates, training."""

    settings: tuple[tuple[int, int], ...]
    widths: tuple[int, ...]
    lrs: tuple[float, ...]
    steps: int
    batch_size: int
    vocab: int
    eval_batches: int


GRIDS = {
    # quick: one rate, one cell (~1 min); default: a three-rate grid chosen on validation
    # (a single rate measures the rate, not the architecture: at 3e-3 softmax attention
    # stays on the plateau at width 32, at 1e-2 it solves the task)
    "quick": Grid(settings=((32, 4),), widths=(64,), lrs=(3e-3,), steps=1000,
                  batch_size=64, vocab=64, eval_batches=4),
    "default": Grid(settings=((32, 4), (16, 4)), widths=(64, 32), lrs=(1e-3, 3e-3, 1e-2),
                    steps=1000, batch_size=64, vocab=64, eval_batches=4),
    # Zoology-scale (Arora et al. 2023: vocab 8192, 64 epochs of 100k examples): a GPU.
    "full": Grid(settings=((64, 4), (128, 8), (256, 16), (512, 64)),
                 widths=(64, 128, 256, 512), lrs=(1e-4, 4.6e-4, 2.2e-3, 1e-2), steps=20000,
                 batch_size=256, vocab=8192, eval_batches=16),
}


def config(grid: Grid, seq_len: int, num_kv: int, width: int, lr: float) -> TrainConfig:
    """The training every model of one cell shares (GPT shape: 2 layers, 4 heads)."""
    model = ModelConfig(arch="transformer", seq_len=seq_len, d_model=width, n_layers=2,
                        n_heads=4 if width >= 32 else 2, dim_mixer="blockdiag")
    return TrainConfig(task="mqar", model=model, mqar_num_kv=num_kv, mqar_vocab=grid.vocab,
                       steps=grid.steps, batch_size=grid.batch_size, lr=lr, warmup=50,
                       eval_every=max(1, grid.steps // 6), eval_batches=grid.eval_batches,
                       checkpoint_every=grid.steps, plot=False)


class ShortConv(nn.Module):
    """``embed`` followed by ``e + conv(e)``, a causal depthwise convolution of ``kernel``.

    ``idx: (B, L) int64 → (B, L, d)``; keeps the wrapped embedding's ``weight`` (so a head
    tied to it stays tied).
    """

    def __init__(self, embed: nn.Embedding, kernel: int = 3):
        super().__init__()
        self.embed = embed
        d = embed.embedding_dim
        self.conv = nn.Conv1d(d, d, kernel, groups=d, padding=kernel - 1,
                              dtype=embed.weight.dtype)

    @property
    def weight(self) -> torch.Tensor:
        return self.embed.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        e = self.embed(idx)
        return e + self.conv(e.transpose(1, 2))[..., : e.shape[1]].transpose(1, 2)


class ArchLM(nn.Module):
    """A :mod:`neuralnum.models` body as a token model: embed (→ :class:`ShortConv`) → body
    → LayerNorm → head, weights drawn from ``generator`` (``None``: seed 0)."""

    def __init__(self, config: TokenConfig, vocab: int, *, front_conv: bool = False,
                 generator: torch.Generator | None = None):
        super().__init__()
        with drawing_from(generator) as gen:
            embed = nn.Embedding(vocab, config.d_model)
            self.embed = ShortConv(embed) if front_conv else embed
            self.body = build_arch(config, generator=gen)
            self.norm = nn.LayerNorm(config.d_model)
            self.head = nn.Linear(config.d_model, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.body(self.embed(idx))))


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


def _gpt(cfg: ModelConfig, generator: torch.Generator | None) -> nn.Module:
    """The one place the study builds a :mod:`structured.models` model."""
    return build_model(cfg, generator=generator)


def builders(base: TrainConfig) -> dict[str, Builder]:
    """A constructor of each model, all matched to the GPT's size."""
    d, layers, vocab, length = (base.model.d_model, base.model.n_layers, base.mqar_vocab,
                                base.model.seq_len)
    gpt = replace(base.model, arch="transformer")
    target = param_count(gpt)
    m2 = matched(replace(base.model, arch="m2"), target)

    def arch_lm(name: str, n_layers: int, front_conv: bool = False,
                **options: object) -> Builder:
        config = arch_config(name, d_model=d, n_layers=n_layers, seq_len=length, **options)
        return lambda generator=None: ArchLM(config, vocab, front_conv=front_conv,
                                             generator=generator)

    def size(make: Builder) -> int:
        return sum(p.numel() for p in make().parameters())

    baseconv_layers = min(range(1, 17), key=lambda n: abs(
        size(arch_lm("baseconv", n, short_conv=3)) - target))

    def attention(generator: torch.Generator | None = None) -> nn.Module:
        with drawing_from(generator) as gen:
            model = _gpt(gpt, gen)
            model.embed = ShortConv(model.embed)
        return model

    def m2_slow(generator: torch.Generator | None = None) -> nn.Module:
        with drawing_from(generator) as gen:
            return with_filter_decay(_gpt(m2, gen), *SLOW_DECAY, generator=gen)

    return {"softmax attention": attention,
            "linear attention": arch_lm("linear_attention", layers, front_conv=True,
                                        n_heads=base.model.n_heads, mlp=True),
            "BaseConv": arch_lm("baseconv", baseconv_layers, short_conv=3),
            "M2": lambda generator=None: _gpt(m2, generator),
            "M2 slow decay": m2_slow}


def test_accuracy(model: nn.Module, cfg: TrainConfig) -> dict[str, float]:
    """Loss, accuracy and its binomial standard error on the test draw (generator seed
    distinct from validation's; ``TEST_BATCHES`` × as many examples)."""
    test_cfg = replace(cfg, seed=cfg.seed + TEST_SEED_OFFSET,
                       eval_batches=TEST_BATCHES * cfg.eval_batches)
    metrics = evaluate(model, Task(test_cfg), test_cfg, next(model.parameters()).device)
    queries = test_cfg.eval_batches * test_cfg.batch_size * cfg.mqar_num_kv
    acc = metrics["val_acc"]
    return {"test_loss": metrics["val_loss"], "test_acc": acc,
            "test_se": math.sqrt(max(acc * (1 - acc), 0.0) / queries), "test_queries": queries}


def sweep_cell(grid: Grid, seq_len: int, num_kv: int, width: int, label: str, out: Path,
               threads: int = 1) -> tuple[list[dict], dict]:
    """One model at every rate in one (setting, width) cell: (all runs, the best on val)."""
    torch.set_num_threads(threads)
    make = builders(config(grid, seq_len, num_kv, width, grid.lrs[0]))[label]
    runs = []
    for lr in grid.lrs:
        cfg = config(grid, seq_len, num_kv, width, lr)
        model = make(make_generator(cfg.seed))
        tag = f"L{seq_len}-kv{num_kv}-d{width}-{label.replace(' ', '-')}-lr{lr:g}"
        run = train_run(cfg, out / "runs", tag, model=model, name=tag)
        runs.append({"seq_len": seq_len, "num_kv": num_kv, "width": width, "model": label,
                     "lr": lr, "params": run["params"], "val_acc": run["val_acc"],
                     **test_accuracy(model, cfg), "train_s": run["wall_s"]})
    return runs, max(runs, key=lambda r: r["val_acc"])     # first of equals: smaller lr


# ----------------------------------------------------------------------------- verdicts
def _cells(result: dict) -> dict[tuple[int, int], dict[str, dict[int, dict]]]:
    """(seq_len, num_kv) → model → width → best row."""
    cells: dict = {}
    for row in result["rows"]:
        key = (row["seq_len"], row["num_kv"])
        cells.setdefault(key, {}).setdefault(row["model"], {})[row["width"]] = row
    return cells


def verdicts(result: dict) -> dict[str, bool]:
    """Target name → met, from the best-LR rows (test accuracies):

    * softmax attention solves MQAR (≥ ``SOLVED``) at its largest width in every setting;
    * Zoology's separation: at the smallest width of every setting softmax attention is
      at least ``SEPARATION`` above BaseConv.
    """
    cells = _cells(result)
    solved = separated = bool(cells)
    for models in cells.values():
        attn, conv = models.get("softmax attention", {}), models.get("BaseConv", {})
        if not attn or not conv:
            return {f"softmax attention >= {SOLVED:.0%} test accuracy at its largest width "
                    "in every setting": False,
                    f"softmax attention >= BaseConv + {SEPARATION:.0%} at the smallest "
                    "width in every setting": False}
        solved &= attn[max(attn)]["test_acc"] >= SOLVED
        small = min(attn)
        separated &= small in conv and (
            attn[small]["test_acc"] - conv[small]["test_acc"] >= SEPARATION)
    return {f"softmax attention >= {SOLVED:.0%} test accuracy at its largest width in every "
            "setting": solved,
            f"softmax attention >= BaseConv + {SEPARATION:.0%} at the smallest width in every "
            "setting": separated}


def headline(result: dict) -> str:
    """The results-index line: each model's range of test accuracy over the settings and
    widths (at its best learning rate)."""
    accuracy: dict[str, list[float]] = {}
    for row in result["rows"]:
        accuracy.setdefault(row["model"], []).append(row["test_acc"])
    return "test accuracy " + ", ".join(f"{model} {min(a):.3f}–{max(a):.3f}"
                                        for model, a in accuracy.items())


def tables(result: dict) -> str:
    """Results block: test accuracy ± s.e. per model and width, one table per setting."""
    flag = "" if result["mode"] == "default" else f" --{result['mode']}"
    grid = result["grid"]
    lines = [f"`python -m studies.mqar{flag}` — vocab {grid['vocab']}, {grid['steps']} steps × "
             f"{result['grid']['batch_size']} fresh examples, learning rate chosen on "
             "validation from " + ", ".join(f"{lr:g}" for lr in result["grid"]["lrs"]) +
             "; test accuracy on a separate draw ± binomial standard error (one seed)"]
    for (seq_len, num_kv), models in _cells(result).items():
        widths = sorted({w for m in models.values() for w in m})
        lines += ["", f"Sequence length {seq_len}, {num_kv} key-value pairs — test accuracy "
                  "at the best learning rate:", "",
                  "| model | " + " | ".join(f"d = {w}" for w in widths) + " |",
                  "|---|" + "---:|" * len(widths)]
        for label, by_width in models.items():
            cells = [f"{by_width[w]['test_acc']:.3f} ± {by_width[w]['test_se']:.3f}"
                     if w in by_width else "" for w in widths]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", targets_table(result["verdicts"])]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> Path:
    """Accuracy vs width, one panel per setting, error bars = test standard errors."""
    cells = _cells(result)
    fig, axes = figure_row(len(cells), (4.5 * len(cells), 4))
    for ax, ((seq_len, num_kv), models) in zip(axes, cells.items(), strict=True):
        for label, by_width in models.items():
            widths = sorted(by_width)
            ax.errorbar(widths, [by_width[w]["test_acc"] for w in widths],
                        yerr=[by_width[w]["test_se"] for w in widths], marker="o",
                        capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({w for m in models.values() for w in m}))
        ax.set_xticklabels([str(w) for w in sorted({w for m in models.values() for w in m})])
        ax.set(xlabel="model width d_model", ylabel="MQAR test accuracy", ylim=(0, 1.02),
               title=f"seq {seq_len}, {num_kv} pairs")
    axes[0].legend(fontsize=8)
    save_figure(fig, path)
    return path


def _workers_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=1,
                        help="cells (setting, width, model) trained in parallel processes")


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[Callable]:
    """``starmap``-like ordered iterator over cells: in-process, or ``workers`` processes
    (results come back in order as each cell finishes; the JSON is rewritten after each)."""
    if workers <= 1:
        yield lambda fn, cells: (fn(*cell) for cell in cells)
        return
    context = torch.multiprocessing.get_context("spawn")
    shown = progress_shown()  # a spawned worker does not inherit the setting: hand it over
    with context.Pool(workers) as pool:
        yield lambda fn, cells: pool.imap(_star, [(fn, cell, shown) for cell in cells])


def _star(job: tuple[Callable, tuple, bool]) -> object:
    fn, cell, shown = job
    with show_progress(shown):
        return fn(*cell)


def main(argv: Sequence[str] | None = None) -> dict:
    args = study_args(NAME, __doc__.split("\n\n")[0], argv, extra=_workers_option)
    mode = "quick" if args.quick else "full" if args.full else "default"
    grid = GRIDS[mode]
    labels = list(builders(config(grid, *grid.settings[0], grid.widths[0], grid.lrs[0])))
    cells = [(grid, seq_len, num_kv, width, label, args.out, args.threads)
             for seq_len, num_kv in grid.settings for width in grid.widths for label in labels]
    result = {"mode": mode, "grid": {"settings": grid.settings, "widths": grid.widths,
                                     "lrs": grid.lrs, "steps": grid.steps,
                                     "batch_size": grid.batch_size, "vocab": grid.vocab},
              "chance": 1 / (grid.vocab - grid.vocab // 2), "rows": [], "sweep": [],
              "load_note": load_note(args.threads)}
    with _pool(args.workers) as pool:
        for runs, best in pool(sweep_cell, cells):
            result["sweep"] += runs
            result["rows"].append(best)
            print(format_table([best], ["seq_len", "num_kv", "width", "model", "lr", "params",
                                      "val_acc", "test_acc", "test_se"]), flush=True)
            write_report(args.out, NAME, {**result, "partial": True})
    result["load_note"] = load_note(args.threads)
    result["verdicts"] = verdicts(result)
    print("\nAll runs (learning rate chosen on val_acc; test draw unseen by the choice):")
    print(format_table(result["sweep"], ["seq_len", "num_kv", "width", "model", "lr", "val_acc",
                               "test_acc", "train_s"]))
    print(f"({result['load_note']})\n")
    print(tables(result))
    plot(result, args.out / "mqar_accuracy_vs_width.png")
    write_report(args.out, NAME, result)
    return result


if __name__ == "__main__":
    run_cli(main)
