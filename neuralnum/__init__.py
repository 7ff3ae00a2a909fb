"""neuralnum: learning least-squares algorithms to machine precision.

The public API, importable from here: :func:`lstsq` (scipy's ``lstsq`` with learned
solvers swapped in), :class:`Learner` (a learned solver step: train, solve, save, load),
:class:`Recipe` (the high-precision training recipe), the problem families and the
architectures with their exact GD constructions.

The package is layered; imports point down this list and never back up (a test walks
the import graph), and docs/architecture.md maps each layer and its seams:

* ``core`` — validation, run-time plumbing (seeding, progress, metrics, atomic
  checkpoints, ``torchrun``) and config dataclass → command-line flags;
* ``problems`` — problem families, ground truth (scipy / numpy / mpmath), GD targets;
* ``models`` — the token layout, the architectures, exact constructions, the registry;
* ``training`` — objectives, the one training loop, the recipe and its hooks, the
  Levenberg–Marquardt finisher, :func:`~neuralnum.training.fit.fit`;
* ``solvers`` — operators (learned and exact), the Krylov / Chebyshev / GD methods on
  them, the :class:`Learner`, evaluation against ground truth;
* the front door — :mod:`neuralnum.least_squares` (``lstsq``) and :mod:`neuralnum.cli`
  (``python -m neuralnum train | solve | demo``).
"""

from neuralnum.least_squares import LstsqResult, lstsq
from neuralnum.models import (
    ARCHS,
    BaseConv,
    BaseConvConfig,
    LinearAttention,
    LinearAttentionConfig,
    Transformer,
    TransformerConfig,
    construct_baseconv_gd,
    construct_linear_attention_gd,
)
from neuralnum.problems import (
    FAMILIES,
    GaussianFamily,
    HeavyTailedFamily,
    Problems,
    RankDeficientFamily,
    ScaledFamily,
    SpectrumFamily,
    family_from_name,
)
from neuralnum.solvers.learner import Learner
from neuralnum.training.recipe import Recipe

__all__ = ["ARCHS", "FAMILIES", "BaseConv", "BaseConvConfig", "GaussianFamily",
           "HeavyTailedFamily", "Learner", "LinearAttention", "LinearAttentionConfig",
           "LstsqResult", "Problems", "RankDeficientFamily", "Recipe", "ScaledFamily",
           "SpectrumFamily", "Transformer", "TransformerConfig", "construct_baseconv_gd",
           "construct_linear_attention_gd", "family_from_name", "lstsq"]
