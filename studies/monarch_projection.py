"""How well do Monarch matrices approximate real weights, and what does sparsify cost?

    python -m studies.monarch_projection [--quick|--full] [--out DIR] [--dtype float32|float64]

Part 1 — projection error ``‖W − project(W)‖_F / ‖W‖_F`` of 256 × 256 matrices for
``nblocks`` ∈ {2, 4, 8, 16, 32} (16 = √n, the classic Monarch) and rank 1: Gaussian noise,
low-rank (rank 16) + 10% noise, and the trained hidden weights of part 2. Beside each, the
error of the best low-rank approximation with the same parameter count (truncated SVD),
so the structure is compared with the obvious alternative.

Part 2 — dense-to-sparse fine-tuning on scikit-learn's digits (8×8 images, 10 classes;
1347 train / 450 test, shipped with scikit-learn): an MLP 64 → 256 → 256 → 10 is trained
dense, then ``sparsify`` replaces its two hidden layers (the 10-way classifier is kept
dense via ``filter``) by their optimal Monarch projections; test accuracy is measured
before, right after projection, after a short fine-tune of the Monarch model, after
``densify`` (must equal the previous: the conversion is exact) and after a short dense
continuation (reverse sparsification). A Monarch MLP trained from scratch for the dense
model's step budget is the baseline. Paper context (Dao et al. 2022): dense-to-sparse
fine-tuning of BERT on GLUE was 1.7× faster at comparable accuracy.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from neuralnum.core.runtime import Distributed, make_generator, progress
from neuralnum.training.loop import Loop, LoopConfig
from neuralnum.training.loop import train as run_loop
from neuralnum.training.plugins import Task
from structured import MonarchLinear, densify, project, sparsify
from studies import markdown as md
from studies.study_io import figure, run_cli, save_figure, study_parser, write_report

NAME = "monarch_projection"
N = 256
NBLOCKS = (2, 4, 8, 16, 32)
PAPER = ("Dao et al. 2022: dense-to-sparse fine-tuning (BERT, GLUE) 1.7x faster at "
         "comparable accuracy; reverse sparsification GPT-2 2x faster")


# ---------------------------------------------------------------------- part 1
def _low_rank_error(W: torch.Tensor, params: int) -> float:
    """Relative error of the best rank-⌊params/(m+n)⌋ approximation of ``W``."""
    rank = max(1, params // sum(W.shape))
    S = torch.linalg.svdvals(W)
    return float(S[rank:].square().sum().sqrt() / S.square().sum().sqrt())


def projection_errors(matrices: dict[str, torch.Tensor]) -> list[dict]:
    rows = []
    for name, W in matrices.items():
        for nb in NBLOCKS:
            P = project(W, nb)
            params = P.monarch.num_params()
            rows.append({"matrix": name, "shape": list(W.shape), "nblocks": nb,
                         "params": params, "dense_params": W.numel(),
                         "monarch_rel_error": P.rel_error,
                         "low_rank_rel_error": _low_rank_error(W, params)})
    return rows


def synthetic_matrices(gen: torch.Generator, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    gauss = torch.randn(N, N, generator=gen, dtype=dtype) / math.sqrt(N)
    U = torch.randn(N, 16, generator=gen, dtype=dtype)
    V = torch.randn(16, N, generator=gen, dtype=dtype)
    low = U @ V / math.sqrt(16 * N)
    noise = torch.randn(N, N, generator=gen, dtype=dtype) / math.sqrt(N)
    low_noisy = low + 0.1 * noise * low.norm() / noise.norm()
    return {"gaussian": gauss, "low_rank16+10%noise": low_noisy}


# ---------------------------------------------------------------------- part 2
def digits(dtype: torch.dtype, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Standardised digits features; a seeded 1347/450 split."""
    from sklearn.datasets import load_digits  # optional: the [data] extra

    data = load_digits()
    X = torch.tensor(data.data, dtype=dtype)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=gen)
    train, test = order[:1347], order[1347:]
    mean, std = X[train].mean(0), X[train].std(0).clamp_min(1e-3)
    X = (X - mean) / std
    return X[train], y[train], X[test], y[test]


def mlp(dtype: torch.dtype, hidden: type[nn.Module] = nn.Linear, **kw) -> nn.Module:
    return nn.Sequential(hidden(64, N, dtype=dtype, **kw), nn.ReLU(),
                         hidden(N, N, dtype=dtype, **kw), nn.ReLU(),
                         nn.Linear(N, 10, dtype=dtype))


class DigitsTask(Task):
    """Minibatches of the training digits, drawn uniformly with replacement; the loss is
    their mean cross-entropy."""

    def __init__(self, data: tuple[torch.Tensor, ...]):
        self.X, self.y = data[0], data[1]

    def sample(self, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.y), (size,), generator=gen)
        return self.X[idx], self.y[idx]

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)


def train(model: nn.Module, data: tuple[torch.Tensor, ...], steps: int, lr: float,
          gen: torch.Generator, desc: str) -> nn.Module:
    """``steps`` Adam steps on minibatches of 128 on the one training loop; returns
    ``model``. The batches come from ``gen``, whose stream the phases of a run continue."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loop = Loop(model, DigitsTask(data), optimizer, generator=gen)
    run_loop(loop, LoopConfig(steps=steps, batch_size=128, desc=desc), Distributed())
    return model


@torch.no_grad()
def accuracy(model: nn.Module, data: tuple[torch.Tensor, ...]) -> float:
    X, y = data[2], data[3]
    return float((model(X).argmax(-1) == y).double().mean())


def _hidden(name: str, layer: nn.Linear) -> bool:
    return layer.out_features != 10


def sparsify_run(nblocks: int, seed: int, steps: int, finetune: int,
                 dtype: torch.dtype) -> tuple[dict, dict[str, torch.Tensor]]:
    gen = make_generator(seed)
    data = digits(dtype, gen)
    torch.manual_seed(seed)
    model = train(mlp(dtype), data, steps, 1e-3, gen, "dense")
    trained = {f"trained_{i}": model[i].weight.detach().clone() for i in (0, 2)}
    row = {"nblocks": nblocks, "seed": seed, "dense": accuracy(model, data)}
    sparsify(model, nblocks, filter=_hidden)
    row["projection_error"] = [model[i].projection_error for i in (0, 2)]
    row["sparsified"] = accuracy(model, data)
    row["finetuned"] = accuracy(train(model, data, finetune, 1e-3, gen, "fine-tune"), data)
    densify(model)
    row["densified"] = accuracy(model, data)
    row["dense_continued"] = accuracy(train(model, data, finetune, 1e-3, gen, "dense"), data)
    torch.manual_seed(seed)
    scratch = mlp(dtype, MonarchLinear, nblocks=nblocks)
    row["monarch_from_scratch"] = accuracy(train(scratch, data, steps, 1e-3, gen, "scratch"),
                                           data)
    return row, trained


def run_study(seeds: list[int], steps: int, finetune: int, dtype: torch.dtype) -> dict:
    gen = make_generator(0)
    runs, trained = [], {}
    for seed in progress(seeds, desc="seeds"):
        for nb in (4, 16):
            row, weights = sparsify_run(nb, seed, steps, finetune, dtype)
            runs.append(row)
            trained = trained or weights
    matrices = {**synthetic_matrices(gen, dtype), "trained 256x256": trained["trained_2"],
                "trained 256x64": trained["trained_0"]}
    return {"study": NAME, "dtype": str(dtype), "seeds": seeds, "steps": steps,
            "finetune_steps": finetune, "paper": PAPER,
            "projection": projection_errors(matrices),
            "sparsify": runs}


# ---------------------------------------------------------------------- output
def _print(report: dict) -> None:
    print(f"Projection error (rank 1, {report['dtype']}); low-rank = truncated SVD with the "
          f"same parameter count")
    print(f"{'matrix':>22} {'nblocks':>7} {'params':>7} {'monarch':>8} {'low-rank':>8}")
    for r in report["projection"]:
        print(f"{r['matrix']:>22} {r['nblocks']:>7} {r['params']:>7} "
              f"{r['monarch_rel_error']:>8.3f} {r['low_rank_rel_error']:>8.3f}")
    stages = ("dense", "sparsified", "finetuned", "densified", "dense_continued",
              "monarch_from_scratch")
    print(f"\nDigits MLP test accuracy ({report['steps']} dense steps, "
          f"{report['finetune_steps']} fine-tune steps)")
    print(f"{'nblocks':>7} {'seed':>4} {'proj.err':>13} " + " ".join(f"{s:>10.10}" for s in stages))
    for r in report["sparsify"]:
        err = "/".join(f"{e:.2f}" for e in r["projection_error"])
        print(f"{r['nblocks']:>7} {r['seed']:>4} {err:>13} "
              + " ".join(f"{r[s]:>10.4f}" for s in stages))
    for nb in dict.fromkeys(r["nblocks"] for r in report["sparsify"]):
        rows = [r for r in report["sparsify"] if r["nblocks"] == nb]
        print(f"{nb:>7} {'mean':>4} {'':>13} "
              + " ".join(f"{sum(r[s] for r in rows) / len(rows):>10.4f}" for s in stages))
    print(f"paper: {report['paper']}")


def _plot(report: dict, path: Path) -> None:
    fig, ax = figure()
    for name in dict.fromkeys(r["matrix"] for r in report["projection"]):
        rows = [r for r in report["projection"] if r["matrix"] == name]
        line, = ax.plot([r["nblocks"] for r in rows], [r["monarch_rel_error"] for r in rows],
                        "-o", label=f"{name} (Monarch)")
        ax.plot([r["nblocks"] for r in rows], [r["low_rank_rel_error"] for r in rows], ":",
                color=line.get_color(), label=f"{name} (low rank, same params)")
    ax.set(xscale="log", xlabel="nblocks", ylabel="relative Frobenius error",
           title="Optimal Monarch projection error")
    ax.legend(fontsize=7)
    save_figure(fig, path)


#: Fine-tuning "recovers" the dense accuracy when the mean over seeds is within this.
RECOVERY_TOLERANCE = 0.01
STAGES = {"dense": "dense", "sparsified": "projected (`sparsify`)",
          "finetuned": "fine-tuned", "densified": "`densify`-ed",
          "monarch_from_scratch": "Monarch from scratch"}


def _mean_by_nblocks(report: dict) -> dict[int, dict[str, float]]:
    """Test accuracy per stage, mean over seeds, for each ``nblocks``."""
    out = {}
    for nb in dict.fromkeys(r["nblocks"] for r in report["sparsify"]):
        rows = [r for r in report["sparsify"] if r["nblocks"] == nb]
        out[nb] = {s: sum(r[s] for r in rows) / len(rows) for s in STAGES}
    return out


def verdicts(report: dict) -> dict[str, bool]:
    """``densify_exact``: every densified model scores exactly what its Monarch model did;
    ``finetune_recovers_dense``: for every ``nblocks``, the fine-tuned Monarch model's mean
    test accuracy is within :data:`RECOVERY_TOLERANCE` of the dense model's (or above)."""
    means = _mean_by_nblocks(report)
    return {
        "densify_exact": all(r["densified"] == r["finetuned"] for r in report["sparsify"]),
        "finetune_recovers_dense": all(m["finetuned"] >= m["dense"] - RECOVERY_TOLERANCE
                                       for m in means.values()),
    }


def headline(report: dict) -> str:
    """The results-index line: fine-tuned accuracy of the sparsified MLP per ``nblocks``
    beside the dense model's (mean over seeds)."""
    means = _mean_by_nblocks(report)
    dense = next(iter(means.values()))["dense"]
    parts = [f"{nb} blocks {md.percent(m['finetuned'])}" for nb, m in means.items()]
    return (f"dense → Monarch, fine-tuned: {', '.join(parts)} vs dense {md.percent(dense)} "
            f"(digits MLP); {md.targets_met(report['verdicts'])}")


def tables(report: dict) -> str:
    """Results block: digits-MLP accuracy per stage, and the projection errors."""
    seeds = len(report["seeds"])
    acc = [[str(nb), *(md.fixed(m[s], 3) for s in STAGES)]
           for nb, m in _mean_by_nblocks(report).items()]
    names = list(dict.fromkeys(r["matrix"] for r in report["projection"]))
    nblocks = list(dict.fromkeys(r["nblocks"] for r in report["projection"]))
    err = {(r["matrix"], r["nblocks"]): r for r in report["projection"]}
    proj = [[name, *(f"{md.fixed(err[name, nb]['monarch_rel_error'], 3)} / "
                     f"{md.fixed(err[name, nb]['low_rank_rel_error'], 3)}" for nb in nblocks)]
            for name in names]
    v = verdicts(report)
    return "\n".join([
        md.command(report, f"an MLP on scikit-learn's digits, both hidden layers projected; "
                           f"{report['steps']} dense steps, {report['finetune_steps']} "
                           f"fine-tune steps"), "",
        md.table(["nblocks", *(f"{label} (test accuracy, mean of {seeds} "
                               f"seed{'s' if seeds > 1 else ''})"
                               if i == 0 else label for i, label in
                               enumerate(STAGES.values()))], acc), "",
        md.table(["matrix", *(f"nblocks {nb}: Monarch / low rank" for nb in nblocks)], proj),
        "",
        "Relative Frobenius error of the optimal rank-1 Monarch projection and of the best "
        "low-rank approximation with the same parameter count.", "",
        f"- `densify` exact (same accuracy as the Monarch model): "
        f"**{'met' if v['densify_exact'] else 'not met'}**",
        f"- fine-tuning recovers the dense accuracy (within {RECOVERY_TOLERANCE:g}): "
        f"**{'met' if v['finetune_recovers_dense'] else 'not met'}**"])


def main(argv: list[str] | None = None) -> dict:
    parser = study_parser(NAME, __doc__, quick_help="1 seed, short training",
                          full_help="5 seeds, longer training")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [0] if args.quick else list(range(5 if args.full else 3))
    steps, finetune = (600, 150) if args.quick else (2000, 500) if args.full else (1200, 300)
    report = {"command": md.study_command(NAME, argv),
              **run_study(seeds, steps, finetune, getattr(torch, args.dtype))}
    report["verdicts"] = verdicts(report)
    _print(report)
    write_report(args.out, NAME, report)
    _plot(report, args.out / f"{NAME}.png")
    return report


if __name__ == "__main__":
    run_cli(main)
