"""neuralnum: learning least-squares algorithms to machine precision.

Layout (imports point down the list; ``structured`` may import ``runtime``, ``train``,
``cli`` and ``arch``, ``neuralnum`` never imports ``structured``):

* ``problems``, ``reference``, ``targets``, ``tokens``, ``objectives`` — problem
  families, ground truth, GD targets, the token layout, what a model is trained to output;
* ``arch`` — token models and exact GD constructions;
  ``predictor`` — a token model wrapped as ``(A, b, x) → prediction``;
* ``runtime`` — seeding, progress, metrics log, atomic checkpoints, the one resume-state
  builder, ``torchrun`` set-up; ``train`` — the one training loop (``LambdaLR``
  schedule, ``AveragedModel``, ``DistributedDataParallel``, hooks, finishers);
  ``cli`` — config dataclasses → command-line flags;
* ``recipe`` — the high-precision recipe and the loop plug-ins it makes; ``fit`` — a
  learner's training on the loop; ``learner`` — model + objective + step/solve +
  save/load; ``solvers.lstsq`` — the scipy-shaped front door.
"""

from neuralnum.solvers import lstsq

__all__ = ["lstsq"]
