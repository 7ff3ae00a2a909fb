"""M2-ViT vs ViT on scikit-learn's 8×8 digits: test accuracy and parameter count.

    python -m studies.m2_vision [--quick|--full] [--out DIR] [--threads T]

Both models have the same width and depth and see the same images (same seed, steps,
batch and schedule); M2-ViT replaces attention by the bidirectional gated long
convolution and the dense MLP by a Monarch GLU, so it has fewer parameters. Each pair is
trained with several seeds; the table gives mean ± spread of test accuracy on the
held-out 20% (360 images).

Target (after the paper): equal or better accuracy with fewer parameters. The
paper (Fu et al. 2023) reports on ImageNet-1k: M2-ViT-b 79.5% with 45M parameters vs
ViT-b 78.5% with 86M.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import replace

from structured.models import ModelConfig
from structured.train import TrainConfig
from studies import markdown as md
from studies.m2_common import plot_curves, study_args, train_run
from studies.study_io import format_table, run_cli, write_report

NAME = "m2_vision"
PAPER = {"M2-ViT-b": {"imagenet_top1": 79.5, "params_M": 45},
         "ViT-b": {"imagenet_top1": 78.5, "params_M": 86}}


def verdicts(result: dict) -> dict[str, bool]:
    """``M2-ViT:accuracy_with_fewer_params``: M2-ViT's mean test accuracy is at least
    ViT's, with strictly fewer parameters."""
    by_model = {r["model"]: r for r in result["rows"]}
    vit, m2 = by_model["ViT"], by_model["M2-ViT"]
    return {"M2-ViT:accuracy_with_fewer_params":
            m2["test_acc_mean"] >= vit["test_acc_mean"] and m2["params"] < vit["params"]}


def headline(result: dict) -> str:
    """The results-index line: mean test accuracy and parameters of M2-ViT and ViT."""
    by_model = {r["model"]: r for r in result["rows"]}
    m2, vit = by_model["M2-ViT"], by_model["ViT"]
    return (f"M2-ViT {md.percent(m2['test_acc_mean'])} vs ViT "
            f"{md.percent(vit['test_acc_mean'])} test accuracy with {md.count(m2['params'])} "
            f"vs {md.count(vit['params'])} parameters (8×8 digits)")


def tables(result: dict) -> str:
    """Results block: parameters and test accuracy (mean, min–max over seeds) per model."""
    seeds = result["rows"][0]["seeds"]
    rows = [[r["model"], md.count(r["params"]), md.percent(r["test_acc_mean"]),
             f"{md.percent(r['test_acc_min'])} – {md.percent(r['test_acc_max'])}"]
            for r in result["rows"]]
    met = verdicts(result)["M2-ViT:accuracy_with_fewer_params"]
    return "\n".join([
        md.command(result, f"scikit-learn's 8×8 digits, {result['steps']} steps, "
                           f"{seeds} seeds"), "",
        md.table(["model", "params", f"test accuracy (mean of {seeds} seeds)",
                  "min – max over seeds"], rows), "",
        f"Target — M2-ViT at least as accurate as ViT with fewer parameters: "
        f"**{'met' if met else 'not met'}**."])


def main(argv: Sequence[str] | None = None) -> dict:
    args = study_args(NAME, __doc__.split("\n\n")[0], argv)
    full = args.full
    seeds = range(5) if full else range(2)
    model = ModelConfig(d_model=128 if full else 64, n_layers=4 if full else 2, n_heads=4,
                        patch_size=2)
    base = TrainConfig(task="vision", model=model, steps=3000 if full else 300,
                       batch_size=64, lr=3e-3, warmup=30, eval_every=100 if full else 50,
                       plot=False)
    results: dict[str, list[dict]] = {"ViT": [], "M2-ViT": []}
    for seed in seeds:
        for label, arch in (("ViT", "transformer"), ("M2-ViT", "m2")):
            cfg = replace(base, model=replace(base.model, arch=arch), seed=seed)
            results[label].append(train_run(cfg, args.out, f"{label}-seed{seed}"))
    rows = []
    for label, runs in results.items():
        accs = [r["val_acc"] for r in runs]
        rows.append({"model": label, "params": runs[0]["params"],
                     "test_acc_mean": statistics.mean(accs),
                     "test_acc_min": min(accs), "test_acc_max": max(accs),
                     "test_loss_mean": statistics.mean(r["val_loss"] for r in runs),
                     "seeds": len(accs)})
    payload = {"command": args.command, "mode": "full" if full else "quick", "paper": PAPER,
               "rows": rows, "steps": base.steps}
    met = verdicts(payload)["M2-ViT:accuracy_with_fewer_params"]
    vit, m2 = rows
    print(f"\nDigits (8x8, 1437 train / 360 test), {len(seeds)} seeds, {base.steps} steps:")
    print(format_table(rows, ["model", "params", "test_acc_mean", "test_acc_min",
                              "test_acc_max", "test_loss_mean", "seeds"]))
    print(f"M2-ViT params / ViT params: {m2['params'] / vit['params']:.3f}; "
          f"target (≥ accuracy with fewer params) met: {met}")
    print(f"paper (ImageNet): {PAPER}")
    plot_curves({label: runs[0] for label, runs in results.items()},
                args.out / "m2_vision_curves.png", title="digits, seed 0",
                key="val_acc", ylabel="test accuracy")
    payload["verdicts"] = verdicts(payload)
    payload["runs"] = {k: [{kk: vv for kk, vv in r.items() if kk != "records"} for r in v]
                       for k, v in results.items()}
    write_report(args.out, NAME, payload)
    return payload


if __name__ == "__main__":
    run_cli(main)
