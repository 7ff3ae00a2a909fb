"""The shape-general learned solver the package ships: how it is made, and how it is found.

* :func:`pretrain` trains an :class:`~neuralnum.solvers.axial_learner.AxialLearner` on
  mixed shapes (the recipe and the Levenberg–Marquardt finisher), refits its deployed
  coefficients (:meth:`~neuralnum.solvers.axial_learner.AxialLearner.refit`) and measures
  it on held-out problems: the relative error of both heads of the trained network, of
  its deployed form and of the exact construction (the arithmetic's own floor).
  ``python -m neuralnum pretrain --out neuralnum/pretrained/axial.pt`` is the one command
  that re-creates the shipped weights; the checkpoint carries its provenance (that
  command, the seed, the commit, the metrics, the versions).
* :func:`pretrained` loads the shipped weights (package data, ``weights_only`` — nothing
  is downloaded), once per dtype and device: what ``neuralnum.lstsq(A, b,
  solver="learned")`` solves with.
"""

from __future__ import annotations

import functools
import platform
import subprocess
import time
from importlib import resources
from pathlib import Path

import torch

from neuralnum.models.axial import AxialConfig, construct_axial_gd
from neuralnum.solvers.axial_learner import AxialLearner, default_recipe
from neuralnum.training.fit import FitOptions, fit
from neuralnum.training.mixed_shapes import ShapeMixture
from neuralnum.training.recipe import Recipe

__all__ = ["PRETRAINED", "pretrain", "pretrained"]

#: Where the shipped weights live inside the package.
PRETRAINED = resources.files("neuralnum") / "pretrained" / "axial.pt"


def _commit() -> str:
    """The git commit of the source tree, or ``"unknown"`` outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def held_out_metrics(learner: AxialLearner, mixture: ShapeMixture, seed: int,
                     problems: int) -> dict[str, float]:
    """Relative error of both heads (``‖r̂ − r‖²/‖r‖² + ‖ĝ − g‖²/‖g‖²``, mean and median)
    on ``problems`` held-out problems of ``mixture`` (the run's held-out stream), of the
    trained network, of its deployed form and of the exact construction (the float
    arithmetic's own floor on those problems)."""
    task = learner.make_task(mixture, seed=seed, eval_batch=problems)
    nets = {"": learner.net, "deployed_": learner.coefficients(),
            "exact_": construct_axial_gd(learner.dtype)}
    out = {}
    with torch.no_grad():
        for prefix, net in nets.items():
            metrics = task.evaluate(net)
            out |= {f"{prefix}held_out_rel_mse": metrics["mse"],
                    f"{prefix}held_out_rel_mse_median": metrics["rel_mse_median"]}
    return out


def pretrain(options: FitOptions, *, config: AxialConfig | None = None,
             recipe: Recipe | None = None, mixture: ShapeMixture | None = None,
             command: str = "") -> AxialLearner:
    """Train the shape-general learner as ``options`` say (default recipe
    :func:`~neuralnum.solvers.axial_learner.default_recipe`, default mixture) and record
    its provenance (``command``, seed, commit, metrics, versions) on it; save it with
    ``learner.save(path, provenance=learner.provenance)``."""
    mixture = mixture or ShapeMixture()
    learner = AxialLearner(config, recipe or default_recipe(), seed=options.seed)
    start = time.monotonic()
    records = fit(learner, mixture, options)
    lm = [r["lm"] for r in records if "lm" in r]
    refit = learner.refit(mixture, seed=options.seed,
                          problems=learner.recipe.lm.problems or 336)
    learner.provenance = {
        "command": command, "seed": options.seed, "commit": _commit(),
        "train_seconds": round(time.monotonic() - start, 1), "adam_steps": learner.step_count,
        "lm_iterations": len(lm) - 1 if lm else 0,
        "lm_train_rel_mse": lm[-1]["train_mse"] if lm else None,
        "refit_iterations": len(refit), "refit_train_rel_mse": refit[-1]["loss"] if refit else None,
        "parameters": sum(p.numel() for p in learner.parameters()),
        **held_out_metrics(learner, mixture, options.seed, options.eval_batch),
        "torch": str(torch.__version__), "python": platform.python_version()}
    return learner


def pretrained(dtype: str = "float64", device: str | torch.device = "cpu") -> AxialLearner:
    """The shipped shape-general learner, solving in ``dtype`` (``"float32"`` or
    ``"float64"``: the float64-trained weights, their canonical form rounded once to the
    problems' dtype) on ``device``; loaded once per (dtype, device): every caller gets
    the same object."""
    return _load(dtype, str(torch.device(device)))


@functools.cache
def _load(dtype: str, device: str) -> AxialLearner:
    with resources.as_file(PRETRAINED) as path:
        return AxialLearner.load(path, device=device, dtype=dtype)
