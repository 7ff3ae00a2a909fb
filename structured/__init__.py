"""Monarch matrices, Monarch Mixer layers and models."""

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
