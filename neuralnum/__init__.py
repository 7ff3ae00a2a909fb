"""neuralnum: learning least-squares algorithms to machine precision.

Layering (imports point one way): ``kernels`` imports nothing of ours; ``neuralnum`` may
import ``kernels``; ``structured`` may import ``kernels`` and ``neuralnum``'s shared
pieces (:mod:`neuralnum.runtime`, :mod:`neuralnum.validation`, :mod:`neuralnum.arch`
blocks such as the softmax attention block, the model convention of
:mod:`neuralnum.arch.base`). ``neuralnum`` never imports ``structured``.
"""

from neuralnum.solvers import lstsq

__all__ = ["lstsq"]
