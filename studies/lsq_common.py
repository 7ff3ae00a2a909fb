"""Shared plumbing of the least-squares studies (recipe, iterative, ood).

``parse(name, doc)`` gives ``--quick/--full/--out/--seed`` (on
:func:`studies.study_io.study_parser`); :func:`train` fits one learner and times it;
:data:`PAPER` holds the numbers Liu et al. (ICLR 2025, "Towards Learning High-Precision
Least Squares Algorithms with Sequence Models") report, to print beside ours.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from neuralnum.core.flags import nonnegative_int
from neuralnum.solvers.learner import Learner
from neuralnum.training.recipe import Recipe
from studies.study_io import study_parser

__all__ = ["PAPER", "construction_twin", "parse", "train", "train_solvers",
           "training_summary"]

#: Reported levels of Liu et al. 2025 (float32).
PAPER: dict[str, str] = {
    "one_step_learned": "≈1e-13 (BaseConv / linear attention, single GD iterate)",
    "iterated_learned": "1–2e-13 plateau after ~60–70 iterations",
    "exact_gd": "≈5e-15",
    "learned_softmax_iterate": "≈1e-2",
    "end_to_end_transformer": "1e-9 … 1e-5 depending on depth",
    "headline": "~1e5× lower MSE than end-to-end Transformers; ~1e4× smaller OOD gap",
}


def parse(name: str, doc: str, argv: Sequence[str] | None = None,
          modes: dict[str, str] | None = None,
          configure: Callable[[argparse.ArgumentParser], None] | None = None,
          ) -> argparse.Namespace:
    """``--quick`` (default; minutes on 2 CPU cores, one torch thread) or ``--full`` (paper
    scale, GPU, all threads), or one of ``modes``; ``--out`` (default ``runs/<name>``);
    ``--seed``; ``configure`` adds a study's own options to the parser."""
    parser = study_parser(name, doc, modes=modes)
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    if configure is not None:
        configure(parser)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(torch.get_num_threads() if args.full else 1)
    return args


def train(arch: str, recipe: Recipe, family: Any, *, steps: int, target: str = "gd",
          seed: int = 0, log_every: int = 25,
          eval_batch: int = 256) -> tuple[Learner, list[dict], float]:
    """Fit a learner from its default init (on CUDA when available). Returns ``(learner
    moved to the CPU for evaluation, metric records, seconds)``."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    learner = Learner(arch, target, recipe, n=family.n, d=family.d, seed=seed, device=device)
    start = time.monotonic()
    records = learner.fit(family, steps, seed=seed, log_every=log_every,
                          eval_batch=eval_batch)
    return learner.to("cpu"), records, time.monotonic() - start


def construction_twin(learner: Learner) -> Learner:
    """A learner of ``learner``'s architecture (default shape), ``n``, ``d`` and recipe set
    to the exact GD construction: the same arithmetic path with exact weights. A gap
    between the two is training's; a gap between the twin and exact CG is the
    architecture's way of computing ``Aᵀ(Ax − b)/n``."""
    name = (learner.arch_config or {}).get("name")
    if name is None:
        raise ValueError("construction_twin needs a learner built from an architecture name")
    return Learner(name, "gd", learner.recipe, n=learner.n, d=learner.d).init_construction()


def train_solvers(full: bool, dtype: str, family: Any, seed: int = 0) -> dict[str, Any]:
    """The two solvers the iterative and OOD studies compare, trained on ``family``:

    * ``"learned"`` — the GD update ``Aᵀ(Ax − b)/n`` learned from the random init (the
      demo's training: quick: linear attention, 6000 steps of the default recipe;
      BaseConv learns too slowly from scratch on a CPU budget. Full: BaseConv, 200k
      steps). Studies solve with it through :meth:`~neuralnum.solvers.learner.Learner.solve`
      (CG on the learned operator by default, no SVD).
    * ``"end_to_end"`` — a softmax Transformer trained to output ``x*`` (quick: 1500 steps
      of batch 64 at LR 1e-3, ~3 CPU-minutes, MSE still falling — the paper's reach
      1e-9…1e-5 after ~1M GPU steps; full: 200k).

    Returns ``{name: {"learner", "records", "seconds"}}``.
    """
    if full:
        gd = train("baseconv", Recipe(dtype=dtype, lr=1e-3), family, steps=200_000,
                   seed=seed, log_every=1000)
        e2e = train("transformer", Recipe(dtype=dtype, lr=1e-3), family, steps=200_000,
                    target="solution", seed=seed, log_every=1000)
    else:
        gd = train("linear_attention", Recipe(dtype=dtype), family, steps=6000, seed=seed,
                   eval_batch=128)
        e2e = train("transformer", Recipe(dtype=dtype, lr=1e-3, batch_size=64,
                                          max_batch_size=64), family,
                    steps=1500, target="solution", seed=seed, eval_batch=128)
    return {name: dict(zip(("learner", "records", "seconds"), result, strict=True))
            for name, result in (("learned", gd), ("end_to_end", e2e))}


def training_summary(solvers: dict[str, Any]) -> dict[str, Any]:
    """Per solver of :func:`train_solvers`: training seconds and the last metric record."""
    return {name: {"seconds": entry["seconds"], "last": entry["records"][-1]}
            for name, entry in solvers.items()}
