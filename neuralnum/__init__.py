"""neuralnum: learning least-squares algorithms to machine precision.

Layering (imports point one way): ``kernels`` imports nothing of ours; ``neuralnum`` may
import ``kernels``; ``structured`` may import ``kernels`` and ``neuralnum``'s shared pieces
(``runtime``, ``validation``, ``train``, ``cli`` and ``arch`` blocks such as the softmax
attention block and the model convention of :mod:`neuralnum.arch.base`); ``neuralnum``
never imports ``structured``. Inside ``neuralnum`` imports point down this list:

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
