"""Command line: ``python -m neuralnum {train,solve,demo} ...``.

* ``train`` — fit a learner (:class:`TrainCommand`: the problems, the model, the run's
  :class:`~neuralnum.training.fit.FitOptions` and every
  :class:`~neuralnum.training.recipe.Recipe` field as a flag, e.g. ``--dtype mixed
  --lr 1e-3 --betas 0.9 0.99 --no-fresh --lm-minutes 5``; ``--baseline`` starts from the
  plain recipe); writes an atomic checkpoint (resumable with ``--resume``) and JSON-lines
  metrics.
* ``solve`` — solve held-out problems of a family with a learned solver (a checkpoint, or
  by default the shipped shape-general one, by LSQR on its learned products) and print
  the MSE and digits next to scipy's, both judged by mpmath.
* ``pretrain`` — train the shape-general learned operator that ``neuralnum.lstsq(A, b,
  solver="learned")`` ships with (:func:`neuralnum.solvers.pretrained.pretrain`); the
  documented way to re-create ``neuralnum/pretrained/axial.pt``.
* ``demo`` — the README's main job: train a linear-attention GD step from a random init
  on the default recipe (6000 steps, under two minutes on a CPU), then ``solve``.
  ``--arch baseconv``: 800 Adam steps, then the Levenberg–Marquardt finisher with
  geodesic acceleration for 10 minutes (:func:`demo_defaults`); ``--init construct``
  refines the exact GD construction plus ``--init-noise`` instead.

Every flag is generated from the command's dataclass (:mod:`neuralnum.core.flags`), so the
command line and the Python API accept and refuse the same values. ``--threads`` sets
torch's CPU threads (default 1 on the CPU, where these small models run best
single-threaded); nothing below the command line touches global torch state.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from neuralnum.core.entry import add_debug_flag, run_main
from neuralnum.core.flags import (
    add_dataclass_arguments,
    checked,
    dataclass_from_args,
    without_option,
)
from neuralnum.core.runtime import atomic_write_text, check_output_path, load_checkpoint
from neuralnum.core.validation import check_positive_int
from neuralnum.models.axial import AxialConfig
from neuralnum.models.registry import ARCHS
from neuralnum.problems.families import FAMILIES, family_from_name
from neuralnum.solvers.axial_learner import AxialLearner, default_recipe
from neuralnum.solvers.evaluate import solve_report
from neuralnum.solvers.learned_solver import LearnedSolver
from neuralnum.solvers.learner import Learner
from neuralnum.solvers.methods import METHODS
from neuralnum.solvers.pretrained import pretrain, pretrained
from neuralnum.training.finisher import FinisherSettings
from neuralnum.training.fit import FitOptions
from neuralnum.training.fit import fit as fit_learner
from neuralnum.training.levenberg_marquardt import LMSettings
from neuralnum.training.mixed_shapes import ShapeMixture
from neuralnum.training.recipe import Recipe

__all__ = ["DemoCommand", "ModelOptions", "PretrainCommand", "ProblemOptions", "SolveCommand",
           "SolveOptions", "TrainCommand", "check_serves", "demo_defaults", "load_solver",
           "main", "print_report", "run"]

FamilyName = Literal[tuple(FAMILIES)]
ArchName = Literal[ARCHS]
Method = Literal[METHODS]
PROG = "python -m neuralnum"


@dataclass(frozen=True)
class ProblemOptions:
    """The problems: a registered family (``neuralnum.problems.FAMILIES``) of ``n × d``."""

    family: FamilyName = "spectrum"
    n: int = 20
    d: int = 5

    def __post_init__(self) -> None:
        check_positive_int(self.n, "n")
        check_positive_int(self.d, "d")


@dataclass(frozen=True)
class ModelOptions:
    """The learner's network: a registered architecture (shape from its defaults unless
    given), its target (``gd``: the GD update rule; ``solution``: ``x*`` end-to-end) and
    its start (``random``: seeded default init; ``construct``: the exact GD weights plus
    ``init_noise``, to study refinement)."""

    arch: ArchName = "baseconv"
    d_model: int | None = None
    n_layers: int | None = None
    target: Literal["gd", "solution"] = "gd"
    init: Literal["random", "construct"] = "random"
    init_noise: float = 0.0


#: ``--out`` of train / demo / pretrain: a writable checkpoint file ending in ``.pt``.
_CHECKPOINT = checked(functools.partial(check_output_path, directory=False, suffix=".pt"))
#: ``--threads`` of every command: torch's intra-op threads, a positive int.
_THREADS = checked(functools.partial(check_positive_int, name="threads"))


@dataclass(frozen=True)
class SolveOptions:
    """How held-out problems are solved and judged: ``problems`` drawn with
    ``solve_seed``, the learned ``method`` (default CG), ``iters`` (exactly that many) or
    ``tol``, judged by ``judge``."""

    problems: int = 64
    solve_seed: int = 12345
    iters: int | None = None
    tol: float | None = None
    judge: Literal["mpmath", "scipy", "numpy"] = "mpmath"
    method: Method | None = None

    def __post_init__(self) -> None:
        check_positive_int(self.problems, "problems")


@dataclass(frozen=True)
class TrainCommand:
    """``train``: fit a learner and write its checkpoint to ``out`` (metrics beside it
    unless ``metrics`` is given)."""

    problem: ProblemOptions = field(default_factory=ProblemOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    fit: FitOptions = field(default_factory=lambda: FitOptions(log_every=50,
                                                                checkpoint_every=500))
    recipe: Recipe = field(default_factory=Recipe)
    baseline: bool = False
    out: Path = field(default=Path("runs/train/learner.pt"), metadata=_CHECKPOINT)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = field(default=None, metadata=_THREADS)


@dataclass(frozen=True)
class DemoCommand(TrainCommand):
    """``demo``: ``train``, then solve held-out problems (``solve``)."""

    solve: SolveOptions = field(default_factory=SolveOptions)


@dataclass(frozen=True)
class SolveCommand:
    """``solve``: a learned solver on held-out problems: the one saved at ``checkpoint``,
    or (no checkpoint) the shipped shape-general one, in ``dtype``."""

    checkpoint: Path | None = None
    dtype: Literal["float64", "float32"] = "float64"
    problem: ProblemOptions = field(default_factory=ProblemOptions)
    solve: SolveOptions = field(default_factory=SolveOptions)
    threads: int | None = field(default=None, metadata=_THREADS)


@dataclass(frozen=True)
class PretrainCommand:
    """``pretrain``: train the shape-general learned operator on mixed shapes and write it,
    with its provenance, to ``out`` (``neuralnum/pretrained/axial.pt`` re-creates the
    shipped weights)."""

    fit: FitOptions = field(default_factory=lambda: FitOptions(steps=3000, log_every=500))
    mixture: ShapeMixture = field(default_factory=ShapeMixture)
    axial: AxialConfig = field(default_factory=AxialConfig)
    recipe: Recipe = field(default_factory=default_recipe)
    out: Path = field(default=Path("runs/pretrain/axial.pt"), metadata=_CHECKPOINT)
    threads: int | None = field(default=None, metadata=_THREADS)


def demo_defaults(arch: str = "linear_attention") -> DemoCommand:
    """The demo's settings for ``arch``: linear attention learns by Adam alone (6000 steps
    of the default recipe); BaseConv's first-order tail is slow on a CPU, so it hands over
    to Levenberg–Marquardt with geodesic acceleration after 800 Adam steps, for 10 minutes
    (the clock decides)."""
    recipe, steps = Recipe(), 6000
    if arch == "baseconv":
        steps = 800
        recipe = recipe.replace(finisher="lm", finisher_steps=1000, lm=FinisherSettings(
            minutes=10.0, engine=LMSettings(geodesic=True)))
    return DemoCommand(model=ModelOptions(arch=arch), recipe=recipe,
                       fit=FitOptions(steps=steps, minutes=5.0, log_every=100),
                       solve=SolveOptions(problems=32), out=Path("runs/demo/learner.pt"))


_COMMANDS: dict[str, tuple[type, Any, str]] = {
    "train": (TrainCommand, TrainCommand(), "train a learner"),
    "solve": (SolveCommand, SolveCommand(), "solve held-out problems with a learned solver"),
    "pretrain": (PretrainCommand, PretrainCommand(), "train the shipped shape-general solver"),
    "demo": (DemoCommand, demo_defaults(), "learn a GD step from scratch, then solve "
             "(the main job)"),
}
_EXAMPLES = """examples:
  python -m neuralnum demo
  python -m neuralnum solve --family ill_conditioned --n 1000 --d 100 --method lsqr
  python -m neuralnum train --arch linear_attention --steps 2000 --out runs/la/learner.pt
"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; flags absent from the command line are absent from
    the namespace (the defaults of the command, chosen after parsing, fill them)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, epilog=_EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (cls, base, text) in _COMMANDS.items():
        command = sub.add_parser(name, help=text, description=cls.__doc__, epilog=_EXAMPLES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        add_dataclass_arguments(command, cls, base=base, suppress=True,
                                exclude=() if name == "solve" else ("checkpoint",))
        add_debug_flag(command)
    return parser


def parse_command(argv: Sequence[str]) -> TrainCommand | SolveCommand | PretrainCommand:
    """The command ``argv`` describes, validated by its dataclasses."""
    args = vars(build_parser().parse_args(argv))
    name = args.pop("command")
    args.pop("debug", None)
    cls, base, _ = _COMMANDS[name]
    if name == "demo":
        base = demo_defaults(args.get("model.arch", "linear_attention"))
    if args.get("baseline"):
        base = dataclasses.replace(base, recipe=Recipe.baseline())
    return dataclass_from_args(cls, args, base=base)


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _train(cmd: TrainCommand) -> tuple[Learner, dict[str, Any]]:
    """Train as ``cmd`` says; returns the learner and its last metrics record (with the
    wall-clock ``seconds`` of the run)."""
    fit, problem, model = cmd.fit, cmd.problem, cmd.model
    if not fit.bounded:
        raise ValueError("give --steps, --until-mse or --minutes")
    if fit.steps is None and cmd.recipe.lr_decay == "cosine" and not cmd.recipe.total_steps:
        raise ValueError("the cosine LR decay runs over --steps; give --steps, or "
                         "--total-steps N, or --lr-decay none")
    family = family_from_name(problem.family, n=problem.n, d=problem.d)
    learner = Learner(model.arch, model.target, cmd.recipe, n=problem.n, d=problem.d,
                      d_model=model.d_model, n_layers=model.n_layers, seed=fit.seed,
                      device=_device(cmd.device))
    if model.init == "construct":
        learner.init_construction(model.init_noise, seed=fit.seed)
    metrics = fit.metrics or cmd.out.with_suffix(".jsonl")
    start = time.monotonic()
    records = fit_learner(learner, family,
                          dataclasses.replace(fit, metrics=metrics, checkpoint=cmd.out))
    last = {**(records[-1] if records else {}), "seconds": time.monotonic() - start}
    if records:
        print(f"trained {model.arch} ({cmd.recipe.dtype}) for {learner.step_count} steps in "
              f"{last['seconds']:.0f}s: one-step MSE {last['mse']:.3e}, "
              f"{last['digits']:.1f} digits -> {cmd.out}")
    return learner, last


def print_report(report: dict[str, dict[str, Any]], judge: str) -> None:
    """Print the learned-vs-scipy table of :func:`neuralnum.solvers.evaluate.solve_report`."""
    print(f"{'solver':<10} {'MSE vs ' + judge:>16} {'median rel. err':>16} {'digits':>7} "
          f"{'diverged':>9} {'iters':>6} {'calls':>6}")
    for name, row in report.items():
        print(f"{name:<10} {row['mse']:>16.3e} {row['rel_error']:>16.3e} "
              f"{row['digits']:>7.2f} {row['diverged']:>9.0%} {row.get('iterations', ''):>6} "
              f"{row.get('model_calls', ''):>6}")


def check_serves(learner: Learner, problem: ProblemOptions, checkpoint: Path) -> None:
    """``ValueError`` saying what to do unless ``learner`` (loaded from ``checkpoint``)
    serves ``problem``'s ``(n, d)`` (:meth:`~neuralnum.solvers.learner.Learner.serves`)."""
    if not learner.serves(problem.n, problem.d):
        raise ValueError(
            f"the learner in {checkpoint} was trained at n={learner.n}, d={learner.d} and "
            f"cannot solve n={problem.n}, d={problem.d} problems: pass --n {learner.n} "
            f"--d {learner.d}, leave out --checkpoint to solve with the shipped shape-general "
            f"solver, or train a learner at this shape (python -m neuralnum train "
            f"--n {problem.n} --d {problem.d} --steps 2000 --out runs/n{problem.n}d"
            f"{problem.d}/learner.pt)")


def _solve(problem: ProblemOptions, solve: SolveOptions,
           learner: LearnedSolver) -> dict[str, dict[str, Any]]:
    family = family_from_name(problem.family, n=problem.n, d=problem.d)
    report = solve_report(learner, family, batch=solve.problems, seed=solve.solve_seed,
                          iters=solve.iters, tol=solve.tol, judge=solve.judge,
                          method=solve.method)
    print(f"{solve.problems} held-out {problem.family} problems (n={problem.n}, "
          f"d={problem.d}, {learner.dtype}):")
    print_report(report, solve.judge)
    return report


def _demo(cmd: DemoCommand, argv: Sequence[str]) -> dict[str, Any]:
    learner, last = _train(cmd)
    report = _solve(cmd.problem, cmd.solve, learner.to("cpu"))
    summary = {"command": " ".join([f"python3 -m neuralnum {argv[0]}",
                                    *without_option(argv[1:])]),
               "arch": cmd.model.arch, "dtype": str(learner.dtype).removeprefix("torch."),
               "steps": learner.step_count, "train_seconds": last["seconds"],
               "one_step_mse": last.get("mse"), "family": cmd.problem.family,
               "problems": cmd.solve.problems, "method": cmd.solve.method or "cg", **report}
    atomic_write_text(cmd.out.with_name("demo.json"), json.dumps(summary, indent=2))
    return report


def load_solver(path: Path | None, dtype: str = "float64") -> LearnedSolver:
    """The learned solver saved at ``path`` (a token learner or a shape-general one, by
    the checkpoint's format), or the shipped shape-general one (``path`` None)."""
    if path is None:
        return pretrained(dtype)
    if load_checkpoint(path).get("format") == AxialLearner.FORMAT:
        return AxialLearner.load(path, dtype=dtype)
    return Learner.load(path)


def _pretrain(cmd: PretrainCommand, argv: Sequence[str]) -> dict[str, Any]:
    command = " ".join(["python -m neuralnum", *argv])
    learner = pretrain(cmd.fit, config=cmd.axial, recipe=cmd.recipe, mixture=cmd.mixture,
                       command=command)
    learner.save(cmd.out, provenance=learner.provenance)
    metrics = {k: v for k, v in learner.provenance.items() if "rel_mse" in k}
    print(f"trained the shape-general operator in {learner.provenance['train_seconds']:.0f}s"
          f" -> {cmd.out}")
    for name, value in metrics.items():
        print(f"  {name:<36} {value:.3e}")
    return learner.provenance


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Run the command ``argv`` describes; returns what was printed as data (for tests).
    Errors propagate (:func:`run` turns a user's error into one line)."""
    cmd = parse_command(argv)
    threads = cmd.threads
    if threads is None and _device(getattr(cmd, "device", "cpu")) == "cpu":
        threads = 1
    if threads:
        torch.set_num_threads(threads)
    if isinstance(cmd, SolveCommand):
        solver = load_solver(cmd.checkpoint, cmd.dtype)
        if isinstance(solver, Learner):
            check_serves(solver, cmd.problem, cmd.checkpoint)
        return _solve(cmd.problem, cmd.solve, solver)
    if isinstance(cmd, PretrainCommand):
        return _pretrain(cmd, argv)
    if isinstance(cmd, DemoCommand):
        return _demo(cmd, argv)
    learner, _ = _train(cmd)
    return {"steps": learner.step_count}


def run(argv: Sequence[str] | None = None) -> None:
    """The ``python -m neuralnum`` / ``neuralnum`` entry point (:func:`main` through
    :func:`neuralnum.core.entry.run_main`)."""
    run_main(main, PROG, argv)
