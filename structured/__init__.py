"""Monarch matrices, Monarch Mixer layers and models.

Built on ``kernels`` (Monarch multiply, long and exactly causal convolutions) and on
``neuralnum``'s shared pieces: the model convention and the softmax attention block of
:mod:`neuralnum.models`, the argument checks and precision names of
:mod:`neuralnum.core.validation`, and :mod:`neuralnum.core.runtime`. ``neuralnum`` never imports
this package.
"""

from structured.conversion import densify, sparsify
from structured.layers import BlockdiagLinear, MonarchLinear
from structured.monarch import MonarchMatrix, MonarchShape, Projection, project

__all__ = [
    "BlockdiagLinear",
    "MonarchLinear",
    "MonarchMatrix",
    "MonarchShape",
    "Projection",
    "densify",
    "project",
    "sparsify",
]
