"""Drop-in replacements for ``nn.Linear``: :class:`MonarchLinear` and :class:`BlockdiagLinear`.

Both take ``(in_features, out_features, nblocks=4, bias=True, device=None, dtype=None)``
(``nn.Linear``'s signature plus ``nblocks``), map ``x: (..., in_features)`` to
``(..., out_features)``, and follow ``torch.autocast``: inside an autocast region the
input, weights and bias are cast to the autocast dtype (e.g. bfloat16 on CPU) and the
output has that dtype, as ``nn.Linear``'s would.

Initialisation is scaled per block fan-in so that, like ``nn.Linear``, an output entry
has variance ``|x|²/(3·in_features)`` for a fixed input:

* ``BlockdiagLinear`` — every block ``~ U(±1/√fan_in)`` with ``fan_in = in/nblocks``
  (``nn.Linear``'s default on that block) and bias ``~ U(±1/√fan_in)``;
* ``MonarchLinear`` — ``R ~ U(±1/√p)`` (``nn.Linear``'s default for its block fan-in
  ``p``), ``L ~ U(±√(3/k))`` (variance ``1/k``: preserves the scale), bias
  ``~ U(±1/√in_features)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kernels import monarch_matmul
from neuralnum.core.validation import check_positive_int
from structured.monarch import MonarchMatrix, MonarchShape, project

__all__ = ["BlockdiagLinear", "MonarchLinear"]


def _compute_dtype(x: torch.Tensor, weight_dtype: torch.dtype) -> torch.dtype:
    """Autocast's dtype when autocast is on for ``x``'s device, else the weights' dtype.

    Outside autocast ``x`` must already have the weights' dtype (``TypeError`` otherwise,
    never a silent cast).
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    if x.dtype != weight_dtype:
        raise TypeError(f"input dtype {x.dtype} differs from the layer's {weight_dtype} "
                        f"(cast the input or the layer, or use torch.autocast)")
    return weight_dtype


def _check_input(x: torch.Tensor, in_features: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 0 or x.shape[-1] != in_features:
        raise ValueError(f"input's last dimension must be in_features={in_features}, "
                         f"got shape {tuple(x.shape)}")


def _check_features_first(x_t: torch.Tensor, in_features: int) -> None:
    if not isinstance(x_t, torch.Tensor) or x_t.ndim != 2 or x_t.shape[0] != in_features:
        raise ValueError(f"x_t must be ({in_features}, N), got "
                         f"{getattr(x_t, 'shape', type(x_t).__name__)}")


def _add_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return y if bias is None else y + bias.to(y.dtype)


class MonarchLinear(nn.Module):
    """``y = M x + b`` with a learnable Monarch ``M`` (block sizes: :class:`MonarchShape`).

    Parameters ``R: (k, q, p)``, ``L: (q, s, k)`` in the project's layout and
    ``bias: (out_features,)``; the multiply is :func:`kernels.monarch_matmul`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        nblocks: int = 4,
        bias: bool = True,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.blocks = MonarchShape.for_features(in_features, out_features, nblocks)
        self.in_features, self.out_features, self.nblocks = in_features, out_features, nblocks
        factory = {"device": device, "dtype": dtype}
        self.R = nn.Parameter(torch.empty(self.blocks.r_shape, **factory))
        self.L = nn.Parameter(torch.empty(self.blocks.l_shape, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The per-block fan-in initialisation of the module docstring (global RNG)."""
        nn.init.uniform_(self.R, -1 / math.sqrt(self.blocks.p), 1 / math.sqrt(self.blocks.p))
        nn.init.uniform_(self.L, -math.sqrt(3 / self.blocks.k), math.sqrt(3 / self.blocks.k))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def monarch(self) -> MonarchMatrix:
        """The weight as a :class:`MonarchMatrix` sharing this module's parameters."""
        return MonarchMatrix(self.R, self.L)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (..., in_features)`` → ``(..., out_features)``."""
        _check_input(x, self.in_features)
        dtype = _compute_dtype(x, self.R.dtype)
        y = monarch_matmul(x.to(dtype), self.R.to(dtype), self.L.to(dtype))
        return _add_bias(y, self.bias)

    def forward_features_first(self, x_t: torch.Tensor) -> torch.Tensor:
        """The same map with features first: ``x_t: (in_features, N)`` → ``(out_features, N)``.

        Equals ``self(x_t.T).T`` but comes out contiguous with no transposing copy of the
        activations on the reference path: ``x_t`` is read where it lies and the multiply
        writes its feature-major layout (:mod:`kernels.monarch_reference`). Any row range
        of the result is contiguous too, e.g. the gate and value halves of a GLU.
        """
        _check_features_first(x_t, self.in_features)
        dtype = _compute_dtype(x_t, self.R.dtype)
        y = monarch_matmul(x_t.to(dtype).T, self.R.to(dtype), self.L.to(dtype),
                           feature_major=True).T
        return y if self.bias is None else y + self.bias.to(dtype)[:, None]

    @classmethod
    def from_dense(cls, linear: nn.Linear, nblocks: int = 4) -> MonarchLinear:
        """The Frobenius-closest Monarch layer to ``linear`` (:func:`project`); bias copied.

        Same device and dtype as ``linear``; the relative projection error of the weight
        is kept in ``.projection_error``.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight
        layer = cls(linear.in_features, linear.out_features, nblocks,
                    bias=linear.bias is not None, device=weight.device, dtype=weight.dtype)
        projection = project(weight.detach(), nblocks)
        with torch.no_grad():
            layer.R.copy_(projection.monarch.R)
            layer.L.copy_(projection.monarch.L)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.projection_error = projection.rel_error
        return layer

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` computing the same map (weight ``M.to_dense()``, bias copied)."""
        return _dense_linear(self.monarch.to_dense(), self.bias)

    def extra_repr(self) -> str:
        b = self.blocks
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nblocks={self.nblocks}, blocks=(k={b.k}, p={b.p}, q={b.q}, s={b.s}), "
                f"bias={self.bias is not None}")


class BlockdiagLinear(nn.Module):
    """``y = blockdiag(W_1, …, W_nblocks) x + b``; ``weight: (nblocks, out/nblocks, in/nblocks)``.

    ``nblocks`` must divide both ``in_features`` and ``out_features``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        nblocks: int = 4,
        bias: bool = True,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features),
                            ("nblocks", nblocks)):
            check_positive_int(value, name)
        if in_features % nblocks or out_features % nblocks:
            raise ValueError(f"nblocks={nblocks} must divide in_features={in_features} and "
                             f"out_features={out_features}")
        self.in_features, self.out_features, self.nblocks = in_features, out_features, nblocks
        factory = {"device": device, "dtype": dtype}
        shape = (nblocks, out_features // nblocks, in_features // nblocks)
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Blocks and bias ``~ U(±1/√(in/nblocks))`` (global RNG)."""
        bound = 1 / math.sqrt(self.in_features // self.nblocks)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (..., in_features)`` → ``(..., out_features)``."""
        _check_input(x, self.in_features)
        dtype = _compute_dtype(x, self.weight.dtype)
        bias = None if self.bias is None else self.bias.to(dtype)
        y = _blockdiag_matmul(x.to(dtype).reshape(-1, self.in_features),
                              self.weight.to(dtype), bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def forward_features_first(self, x_t: torch.Tensor) -> torch.Tensor:
        """The same map with features first: ``x_t: (in_features, N)`` → ``(out_features, N)``.

        Equals ``self(x_t.T).T`` but comes out contiguous, from one ``baddbmm`` of the
        ``(nblocks, out/nblocks, in/nblocks)`` weight with the view ``(nblocks,
        in/nblocks, N)`` of ``x_t`` (no copy when ``x_t`` is a transposed ``(N, in)``
        tensor). Any row range of the result that whole blocks tile is contiguous too,
        e.g. the gate and value halves of a GLU.
        """
        _check_features_first(x_t, self.in_features)
        dtype = _compute_dtype(x_t, self.weight.dtype)
        b, o, i = self.weight.shape
        x_blocks = x_t.to(dtype).reshape(b, i, -1)
        weight = self.weight.to(dtype)
        if self.bias is None:
            y = torch.bmm(weight, x_blocks)
        else:
            y = torch.baddbmm(self.bias.to(dtype).view(b, o, 1), weight, x_blocks)
        return y.view(self.out_features, -1)

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` computing the same map (block-diagonal weight, bias copied)."""
        return _dense_linear(torch.block_diag(*self.weight.detach()), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nblocks={self.nblocks}, bias={self.bias is not None}")


def _blockdiag_matmul(x: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """``x: (N, b·i)``, ``weight: (b, o, i)``, ``bias: (b·o,)`` or None → ``(N, b·o)``.

    One batched matmul over the ``b`` blocks on the strided view ``(b, N, i)`` of ``x``
    (no copy of ``x``), the bias added inside it (``baddbmm``), then one transposing
    copy of the result.
    """
    n, (b, o, i) = x.shape[0], weight.shape
    xb, wt = x.reshape(n, b, i).transpose(0, 1), weight.transpose(1, 2)
    y = torch.bmm(xb, wt) if bias is None else torch.baddbmm(bias.view(b, 1, o), xb, wt)
    return y.transpose(0, 1).reshape(n, b * o)


def _dense_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=bias is not None,
                       device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear
