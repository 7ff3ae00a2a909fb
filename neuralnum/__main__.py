"""Command line: ``python -m neuralnum {train,solve,demo} ...``.

* ``train`` — fit a learner (``--arch``, ``--dtype``, ``--target``, ``--steps`` /
  ``--until-mse``, any recipe field via ``--set name=value``, ``--baseline`` for the plain
  recipe); writes an atomic checkpoint (resumable with ``--resume``) and JSON-lines metrics.
* ``solve`` — load a checkpoint, solve held-out problems of a family iteratively and print
  the MSE and digits of the learned solver next to scipy's, both judged by mpmath.
* ``demo`` — the README's main job: train a linear-attention GD step from a random init
  on the default recipe (6000 steps, under two minutes on a CPU), then ``solve``. ``--arch
  baseconv`` learns far more slowly from scratch on a CPU budget; ``--init construct``
  refines the exact GD construction plus ``--init-noise`` instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from neuralnum.evaluate import solve_report
from neuralnum.learner import ARCHS, Learner
from neuralnum.problems import FAMILIES, family_from_name
from neuralnum.recipe import Recipe

__all__ = ["main", "parse_overrides", "print_report"]


def parse_overrides(pairs: Sequence[str], base: Recipe) -> Recipe:
    """Apply ``name=value`` strings to ``base``; values are parsed by the field's type."""
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    changes: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set expects name=value with name a recipe field "
                             f"({', '.join(sorted(fields))}); got {pair!r}")
        current = getattr(base, name)
        if isinstance(current, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"--set {name} expects true/false, got {raw!r}")
            changes[name] = raw.lower() in ("true", "1")
        elif isinstance(current, tuple):
            changes[name] = tuple(float(v) for v in raw.split(","))
        else:
            changes[name] = type(current)(raw)
    return base.replace(**changes)


def _add_problem_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", default="spectrum", choices=sorted(FAMILIES),
                   help="problem family (default: spectrum, κ=5 as in Liu et al. 2025)")
    p.add_argument("--n", type=int, default=20, help="rows per problem (default 20)")
    p.add_argument("--d", type=int, default=5, help="unknowns per problem (default 5)")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    _add_problem_args(p)
    p.add_argument("--arch", default="baseconv", choices=ARCHS)
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--n-layers", type=int, default=None)
    p.add_argument("--target", default="gd", choices=["gd", "solution"],
                   help="gd: learn the GD update rule; solution: predict x* end-to-end")
    p.add_argument("--dtype", default=None, choices=["float32", "float64", "mixed"])
    p.add_argument("--baseline", action="store_true", help="start from Recipe.baseline()")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="FIELD=VALUE", help="override any recipe field (repeatable)")
    p.add_argument("--init", default="random", choices=["random", "construct"],
                   help="random: seeded default init; construct: the exact GD weights "
                   "(neuralnum.arch.construct) plus --init-noise, to study refinement")
    p.add_argument("--init-noise", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--until-mse", type=float, default=None)
    p.add_argument("--minutes", type=float, default=None, help="stop after this wall time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-batch", type=int, default=256, help="held-out problems for the "
                   "logged one-step metrics")
    p.add_argument("--checkpoint-every", type=int, default=500)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m neuralnum", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a learner")
    _add_train_args(train)
    train.add_argument("--out", default="runs/train/learner.pt", help="checkpoint path")
    train.add_argument("--metrics", default=None, help="JSON-lines metrics (default: "
                       "next to the checkpoint)")
    train.add_argument("--resume", action="store_true")
    solve = sub.add_parser("solve", help="solve held-out problems with a checkpoint")
    solve.add_argument("--checkpoint", required=True)
    _add_problem_args(solve)
    _add_solve_args(solve)
    demo = sub.add_parser("demo", help="learn a GD step from scratch, then solve (main job)")
    _add_train_args(demo)
    _add_solve_args(demo)
    demo.add_argument("--out", default="runs/demo/learner.pt")
    demo.set_defaults(arch="linear_attention", minutes=5.0, steps=6000, log_every=100,
                      problems=32)
    return parser


def _add_solve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--problems", type=int, default=64, help="held-out problems to solve")
    p.add_argument("--solve-seed", type=int, default=12345)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--tol", type=float, default=None)
    p.add_argument("--judge", default="mpmath", choices=["mpmath", "scipy", "numpy"])
    p.add_argument("--method", default=None, choices=["cg", "chebyshev", "gd"],
                   help="learned solver driven only by the learned operator (default cg)")


def _train(args: argparse.Namespace) -> Learner:
    recipe = Recipe.baseline() if args.baseline else Recipe()
    if args.dtype:
        recipe = recipe.replace(dtype=args.dtype)
    recipe = parse_overrides(args.overrides, recipe)
    if args.steps is None and args.until_mse is None and args.minutes is None:
        raise SystemExit("train: give --steps, --until-mse or --minutes")
    if args.steps is None and recipe.lr_decay == "cosine" and not recipe.total_steps:
        raise SystemExit("train: the cosine LR decay runs over --steps; give --steps, or "
                         "--set total_steps=N, or --set lr_decay=none")
    family = family_from_name(args.family, n=args.n, d=args.d)
    learner = Learner(args.arch, args.target, recipe, n=args.n, d=args.d,
                      d_model=args.d_model, n_layers=args.n_layers, seed=args.seed,
                      device=args.device)
    if args.init == "construct":
        learner.init_construction(args.init_noise, seed=args.seed)
    out = Path(args.out)
    metrics = getattr(args, "metrics", None) or out.with_suffix(".jsonl")
    start = time.monotonic()
    callbacks = []
    if args.minutes is not None:
        callbacks.append(lambda _l, _r: time.monotonic() - start > 60 * args.minutes)
    records = learner.fit(family, args.steps, until_mse=args.until_mse, callbacks=callbacks,
                          seed=args.seed, log_every=args.log_every,
                          eval_batch=args.eval_batch, metrics=metrics,
                          checkpoint=out, checkpoint_every=args.checkpoint_every,
                          resume=getattr(args, "resume", False))
    if records:
        last = records[-1]
        print(f"trained {args.arch} ({recipe.dtype}) for {learner.step_count} steps in "
              f"{time.monotonic() - start:.0f}s: one-step MSE {last['mse']:.3e}, "
              f"{last['digits']:.1f} digits -> {out}")
    return learner


def print_report(report: dict[str, dict[str, Any]], judge: str) -> None:
    """Print the learned-vs-scipy table of :func:`neuralnum.evaluate.solve_report`."""
    print(f"{'solver':<10} {'MSE vs ' + judge:>16} {'median rel. err':>16} {'digits':>7} "
          f"{'diverged':>9} {'iters':>6} {'calls':>6}")
    for name, row in report.items():
        print(f"{name:<10} {row['mse']:>16.3e} {row['rel_error']:>16.3e} "
              f"{row['digits']:>7.2f} {row['diverged']:>9.0%} {row.get('iterations', ''):>6} "
              f"{row.get('model_calls', ''):>6}")


def _solve(args: argparse.Namespace, learner: Learner) -> dict[str, dict[str, Any]]:
    family = family_from_name(args.family, n=args.n, d=args.d)
    report = solve_report(learner, family, batch=args.problems, seed=args.solve_seed,
                          iters=args.iters, tol=args.tol, judge=args.judge,
                          method=args.method)
    print(f"{args.problems} held-out {args.family} problems (n={args.n}, d={args.d}, "
          f"{learner.dtype}):")
    print_report(report, args.judge)
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the CLI; returns what was printed as data (used by tests)."""
    args = _build_parser().parse_args(argv)
    torch.set_num_threads(1 if getattr(args, "device", "cpu") == "cpu" else torch.get_num_threads())
    if args.command == "train":
        learner = _train(args)
        return {"steps": learner.step_count}
    if args.command == "solve":
        learner = Learner.load(args.checkpoint)
        return _solve(args, learner)
    learner = _train(args).to("cpu")
    report = _solve(args, learner)
    summary = Path(args.out).with_name("demo.json")
    summary.write_text(json.dumps({"steps": learner.step_count, **report}, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
