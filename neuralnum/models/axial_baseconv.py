"""The BaseConv counterpart of the shape-general operator: gated convolutions on entries.

The tokens are the entries of a problem ``A: (B, n, d)``, ``b: (B, n)``, ``x: (B, d)``, as
in :mod:`neuralnum.models.axial`: entry ``(i, j)`` carries ``[a_ij, b_i, x_j, 1]``, lifted
to ``width`` channels by a linear map ``E``. Each layer is a gated long convolution
(:mod:`neuralnum.models.baseconv`) along one axis of the entry grid, ``"row"`` (along each
row of ``A``: over ``j``) or ``"column"`` (along each column: over ``i``)::

    v = W₂u + c₂,    u ← u + (W₁u + c₁) ⊙ (α ⊙ v + β ⊙ Σ_axis v)

with ``Σ_axis v`` broadcast back along the axis and ``α``, ``β`` one number per channel.

**The filter.** A convolution along an axis of length ``L`` applies to each channel a
Toeplitz matrix ``T[k, m] = h[k − m]`` (circular: ``h[(k − m) mod L]``; causal: zero above
the diagonal). Permuting the rows (columns) of the problem must permute the output alike,
``T[π(k), π(m)] = T[k, m]`` for every permutation ``π``; the permutations reach every
off-diagonal pair ``(k, m)``, ``k ≠ m``, from every other, so all off-diagonal entries are
one number ``β`` and the diagonal ones another, ``α + β``: ``T = α·I + β·11ᵀ``, the filter
``h = α·δ + β·1``. At ``L ≥ 3`` this rules out every other circular filter (``h[1] = … =
h[L − 1]`` is forced) and every causal one but ``α·δ``; at ``L ≤ 2`` every circular filter
has this form already. A filter defined for every length with weights that do not depend on the
shape is then one ``α`` and one ``β`` per channel, ``conv(v) = α ⊙ v + β ⊙ Σ_axis v``:
sums, not means (a mean, ``β/L``, would tie a tap to the shape; ``A x`` and ``Aᵀ r`` are
sums).

**The read-out.** The linear maps from an entry field ``f`` to a row vector that commute
with both permutations are ``λ Σ_j f_ij + μ Σ_ij f_ij``, so with shape-independent weights
the row-level read-out is a sum along the row (the global sum, which grows like ``n·d``,
is left out), plus the output's own-level inputs, as in the axial stage's skip::

    r_i = Σ_j w_rᵀ u_ij + p_rᵀ [b_i, 1]        g_j = Σ_i w_gᵀ u_ij + p_gᵀ [x_j, 1]

Equivariance is then exact for every weight. Reading a channel at one position would be
equivariant only for weights that keep that channel constant along the axis, and the own
term is needed: a row-constant quantity such as ``b_i`` sums to ``d·b_i``.

**Cost.** The model runs as it is written: every layer materialises ``(B, n, d, width)``
activations (autograd keeps several per layer) and does ``O(B·n·d·width²)`` work; the
axial operator's fast path reads ``A`` once per stage and forms no entry activations.

Weights are float64 master weights by default, rounded once to the inputs' dtype in the
forward, which accepts float32 and float64 problems; :func:`construct_axial_baseconv_gd`
gives exact weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from neuralnum.core.runtime import make_generator
from neuralnum.core.validation import (
    check_choice,
    check_dtype,
    check_finite,
    check_positive_float,
    check_positive_int,
    check_problem,
)
from neuralnum.models.axial_stage import draw_parameters
from neuralnum.models.base import Config

__all__ = ["AXES", "AxialBaseConv", "AxialBaseConvConfig", "AxialGatedConv",
           "construct_axial_baseconv_gd"]

AXES = ("row", "column")
#: The dimension of the entry tokens ``(B, n, d, width)`` a layer along each axis sums over.
_SUMMED = {"row": 2, "column": 1}
FEATURES = 4  # [a_ij, b_i, x_j, 1]


@dataclass(frozen=True)
class AxialBaseConvConfig(Config):
    """``width``: channels per entry; ``axes``: a tuple, one axis per layer, ``"row"`` (a
    convolution along each row of ``A``, summing over ``j``) or ``"column"`` (summing over
    ``i``); ``init_std``: σ of the Gaussian random initialisation. Nothing here depends on
    the problem shape."""

    width: int = 16
    axes: tuple[str, ...] = ("row", "row", "column")
    init_std: float = 0.2

    def __post_init__(self) -> None:
        check_positive_int(self.width, "width")
        if not isinstance(self.axes, tuple):
            raise TypeError(f"axes must be a tuple of {AXES} entries, got {self.axes!r}")
        if not self.axes:
            raise ValueError("axes must name at least one layer")
        for axis in self.axes:
            check_choice(axis, "axes entry", AXES)
        check_positive_float(self.init_std, "init_std")


class AxialGatedConv(nn.Module):
    """One layer along ``axis`` on entry tokens ``u: (B, n, d, width)``:
    ``u + (W₁u + c₁) ⊙ (α ⊙ v + β ⊙ Σ_axis v)``, ``v = W₂u + c₂``; parameters ``gate:
    (width, width)`` and ``gate_bias`` (``W₁``, ``c₁``), ``proj``, ``proj_bias`` (``W₂``,
    ``c₂``), ``alpha``, ``beta: (width,)``, rounded to ``u``'s dtype in the forward."""

    def __init__(self, axis: str, width: int, std: float, *, dtype: torch.dtype,
                 device: torch.device | str | None, generator: torch.Generator):
        super().__init__()
        self.axis = check_choice(axis, "axis", AXES)
        square, channels = (width, width), (width,)
        shapes = {"gate": square, "gate_bias": channels, "proj": square,
                  "proj_bias": channels, "alpha": channels, "beta": channels}
        draw_parameters(self, shapes, std, dtype=dtype, device=device, generator=generator)

    def convolution(self, v: torch.Tensor) -> torch.Tensor:
        """``α ⊙ v + β ⊙ Σ_axis v`` for ``v: (B, n, d, width)``: the circular convolution
        along the axis with the filter ``α·δ + β·1`` of every channel."""
        alpha, beta = self.alpha.to(v.dtype), self.beta.to(v.dtype)
        return alpha * v + beta * v.sum(_SUMMED[self.axis], keepdim=True)

    def increment(self, u: torch.Tensor) -> torch.Tensor:
        """What the layer adds to ``u``: ``(W₁u + c₁) ⊙ conv(W₂u + c₂)``, same shape."""
        gate = F.linear(u, self.gate.to(u.dtype), self.gate_bias.to(u.dtype))
        v = F.linear(u, self.proj.to(u.dtype), self.proj_bias.to(u.dtype))
        return gate * self.convolution(v)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u + self.increment(u)


class AxialBaseConv(nn.Module):
    """Gated convolutions along the axes of the entry grid: ``(A, b, x) → (r ≈ A x − b,
    g ≈ Aᵀ r)`` at any shape (see the module docstring).

    ``AxialBaseConv(config, *, dtype=None, device=None, generator=None)``: parameters of
    ``dtype`` (default float64) on ``device``, each ``N(0, config.init_std²)`` from
    ``generator`` alone (default: a fresh generator seeded 0): ``lift: (width, 4)`` (``E``
    over ``[a_ij, b_i, x_j, 1]``), one :class:`AxialGatedConv` per entry of
    ``config.axes``, and the read-outs ``read_rows``, ``read_cols: (width,)`` (``w_r``,
    ``w_g``) and ``skip_rows``, ``skip_cols: (2,)`` (``p_r`` over ``[b_i, 1]``, ``p_g``
    over ``[x_j, 1]``): ``L·(2·width² + 4·width) + 6·width + 4`` numbers for ``L`` layers.
    """

    def __init__(self, config: AxialBaseConvConfig, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(config, AxialBaseConvConfig):
            raise TypeError(f"config must be an AxialBaseConvConfig, got "
                            f"{type(config).__name__}")
        dtype = check_dtype(torch.float64 if dtype is None else dtype)
        if generator is None:
            generator = make_generator(0)
        self.config = config
        width, std = config.width, config.init_std
        common = {"dtype": dtype, "device": device, "generator": generator}
        draw_parameters(self, {"lift": (width, FEATURES)}, std, **common)
        self.layers = nn.ModuleList(AxialGatedConv(axis, width, std, **common)
                                    for axis in config.axes)
        draw_parameters(self, {"read_rows": (width,), "skip_rows": (2,),
                               "read_cols": (width,), "skip_cols": (2,)}, std, **common)

    def tokens(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The lifted entry tokens ``E [a_ij, b_i, x_j, 1]: (B, n, d, width)`` in ``A``'s
        dtype (inputs as :meth:`forward`, unchecked)."""
        features = torch.stack([A, b.unsqueeze(2).expand_as(A), x.unsqueeze(1).expand_as(A),
                                torch.ones_like(A)], 3)
        return F.linear(features, self.lift.to(A.dtype))

    def forward(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r ≈ A x − b: (B, n), g ≈ Aᵀ r: (B, d))`` in the inputs' dtype for ``A: (B, n,
        d)``, ``b: (B, n)``, ``x: (B, d)``, real float32/float64 of one dtype and device,
        finite, ``B, n, d ≥ 1`` (``TypeError``/``ValueError`` otherwise, and
        ``ValueError`` when an output overflows the dtype)."""
        check_problem(A, b, x)
        u = self.tokens(A, b, x)
        for layer in self.layers:
            u = layer(u)
        r = self._read(u, "row", self.read_rows, self.skip_rows, b)
        g = self._read(u, "column", self.read_cols, self.skip_cols, x)
        fix = f"the entry activations overflowed {A.dtype}; rescale A, b, x"
        return check_finite(r, "r", fix), check_finite(g, "g", fix)

    @staticmethod
    def _read(u: torch.Tensor, axis: str, weight: torch.Tensor, skip: torch.Tensor,
              own: torch.Tensor) -> torch.Tensor:
        """``Σ_axis weightᵀ u + skip[0]·own + skip[1]``: ``(B, n)`` (row) or ``(B, d)``."""
        weight, skip = weight.to(u.dtype), skip.to(u.dtype)
        return (u @ weight).sum(_SUMMED[axis]) + skip[0] * own + skip[1]


def construct_axial_baseconv_gd(dtype: torch.dtype = torch.float64,
                                device: torch.device | str | None = None) -> AxialBaseConv:
    """Exact weights at every shape: width 5, three layers (``axes = ("row", "row",
    "column")``), channels ``a | x | P | R | S``; every weight not named is 0.

    * lift: ``a ← a_ij``, ``x ← x_j``, ``R ← −b_i`` (``P``, ``S`` start at 0);
    * layer 1 (``α = 1``, ``β = 0``): ``P ← a ⊙ x = a_ij x_j``;
    * layer 2 (row, ``α = 0``, ``β = 1``, gate ``c₁ = 1``): ``R ← −b_i + Σ_j P_ij = r_i``;
    * layer 3 (``α = 1``, ``β = 0``): ``S ← a ⊙ R = a_ij r_i``;
    * read-outs: ``r_i = Σ_j P_ij − b_i``, ``g_j = Σ_i S_ij``.

    Every product is formed once and every sum is one sum along an axis (the other terms
    are exact zeros), so ``r`` is rounded like a dot product of length ``d + 1`` and ``g``
    like ``Aᵀ r̂`` (``r̂`` the returned ``r``: the ``R`` channel holds the same bits). Width
    5 is the least for this schedule: a layer only adds to a channel, so ``a`` (used twice)
    and ``x`` stay, and each of ``P``, ``R``, ``S`` needs a channel that holds nothing
    else when it is written. Parameters of ``dtype``, frozen."""
    model = AxialBaseConv(AxialBaseConvConfig(width=5, axes=("row", "row", "column")),
                          dtype=dtype, device=device)
    a, x, p, r, s = range(5)
    first, second, third = model.layers
    with torch.no_grad():
        for param in model.parameters():
            param.requires_grad_(False).zero_()
        model.lift[a, 0] = model.lift[x, 2] = 1
        model.lift[r, 1] = -1
        for layer, out, gate, source in ((first, p, a, x), (third, s, a, r)):
            layer.gate[out, gate] = layer.proj[out, source] = layer.alpha[out] = 1
        second.gate_bias[r] = second.proj[r, p] = second.beta[r] = 1
        model.read_rows[p] = model.read_cols[s] = 1
        model.skip_rows[0] = -1
    return model
