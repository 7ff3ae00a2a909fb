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

import importlib
from typing import Any

#: Each public name and the module it lives in; imported on first use (PEP 562), so that
#: importing a lower layer (``neuralnum.core``, as ``structured`` does) loads only it.
_EXPORTS = {
    **dict.fromkeys(["LstsqResult", "lstsq"], "neuralnum.least_squares"),
    **dict.fromkeys(["ARCHS", "BaseConv", "BaseConvConfig", "LinearAttention",
                     "LinearAttentionConfig", "Transformer", "TransformerConfig",
                     "construct_baseconv_gd", "construct_linear_attention_gd"],
                    "neuralnum.models"),
    **dict.fromkeys(["FAMILIES", "GaussianFamily", "HeavyTailedFamily", "Problems",
                     "RankDeficientFamily", "ScaledFamily", "SpectrumFamily",
                     "family_from_name"], "neuralnum.problems"),
    "Learner": "neuralnum.solvers.learner",
    "Recipe": "neuralnum.training.recipe",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'neuralnum' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
