"""neuralnum: learning least-squares algorithms to machine precision."""

from neuralnum.solvers import lstsq

__all__ = ["lstsq"]
