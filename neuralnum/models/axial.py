"""The shape-general learned operator: ``r = A x − b`` and ``g = Aᵀ r`` at any shape.

The tokens of a problem ``A: (B, n, d)``, ``b: (B, n)``, ``x: (B, d)`` are its entries on
the two axes of ``A``. Two *stages* (:mod:`neuralnum.models.axial_stage`) mix along one
axis each with a linear-attention-style polynomial product (no softmax, no normaliser,
sums not means), so no weight depends on ``n`` or ``d`` and the model is equivariant to
permutations of the rows and of the columns:

* row stage (sums over ``j``): entry features ``[a_ij, b_i, x_j, 1]``, query ``[b_i, 1]``,
  output the row-level channel ``r_i`` (the residual head);
* column stage (sums over ``i``): entry features ``[a_ij, x_j, r_i, 1]``, query
  ``[x_j, 1]``, output the column-level channel ``g_j`` (the GD update). It does not read
  ``b_i``: ``g`` does not need it, and a second row-level channel would make the stage's
  product with ``A`` a two-column GEMM and add spurious moments.

:class:`AxialOperator` holds the trainable factor weights; :meth:`AxialOperator.coefficients`
their canonical form (:class:`AxialCoefficients`), collapsed in float64 and rounded once to
the input's dtype, so float64-trained weights evaluate float32 problems without the
factors' rounding. :meth:`AxialCoefficients.snapped` zeroes the coefficients at roundoff
level: a coefficient of ``1e-18`` on a moment that grows with the shape (``d·b_i²``) is
invisible at the training shapes but adds a same-sign error far beyond them, and only an
exact zero extrapolates to every shape. :func:`construct_axial_gd` gives exact weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from neuralnum.core.runtime import make_generator
from neuralnum.core.validation import (
    check_dtype,
    check_finite,
    check_positive_float,
    check_problem,
    check_range,
)
from neuralnum.models.axial_stage import (
    OTHERS,
    AxialStage,
    MatrixStats,
    Terms,
    matrix_stats,
    needs_matrix_moments,
    stage_coefficients,
    stage_fast,
    stage_reference,
    stage_terms,
    vanishes_at_zero,
)
from neuralnum.models.base import Config

__all__ = ["AxialCoefficients", "AxialConfig", "AxialOperator", "construct_axial_gd"]


@dataclass(frozen=True)
class AxialConfig(Config):
    """``head_dim``: size of each stage's keys, values and queries (1…8); ``init_std``: σ of
    the Gaussian random initialisation. Nothing here depends on the problem shape."""

    head_dim: int = 4
    init_std: float = 0.5

    def __post_init__(self) -> None:
        check_range(self.head_dim, "head_dim", 1, 8)
        if not isinstance(self.head_dim, int):
            raise TypeError(f"head_dim must be an int, got {self.head_dim!r}")
        check_positive_float(self.init_std, "init_std")


@dataclass(frozen=True)
class AxialCoefficients:
    """The canonical form of an :class:`AxialOperator`: ``rows: (7, 4)``, ``cols: (7, 4)``
    float64 (see :func:`stage_coefficients`). Calling it evaluates the fast path in the
    inputs' dtype (each coefficient rounded once to it); :meth:`row_product`,
    :meth:`column_product` and :meth:`step` are the solvers' unchecked evaluations."""

    rows: torch.Tensor
    cols: torch.Tensor
    _terms: dict[tuple[str, torch.dtype, bool], Terms] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def terms(self, stage: str, dtype: torch.dtype, zero_own: bool = False) -> Terms:
        """:func:`~neuralnum.models.axial_stage.stage_terms` of stage ``"rows"`` or
        ``"cols"`` in ``dtype``, read once and kept (the coefficients never change)."""
        key = (stage, dtype, zero_own)
        if key not in self._terms:
            self._terms[key] = stage_terms(getattr(self, stage), dtype, zero_own)
        return self._terms[key]

    def centred(self, stage: str, dtype: torch.dtype) -> bool:
        """Whether stage ``"rows"`` (``"cols"``) is exactly zero at ``b = 0, x = 0``
        (``r = 0, x = 0``) in ``dtype`` by the form of its nonzero coefficients, so that
        its product needs no centring (the exact construction's stages are)."""
        return vanishes_at_zero(self.terms(stage, dtype, zero_own=True))

    def needs_stats(self, dtype: torch.dtype) -> bool:
        """Whether :meth:`row_product`, :meth:`column_product` or :meth:`step` in ``dtype``
        read the :func:`matrix_stats` of ``A`` (else they take ``stats=None``)."""
        return any(needs_matrix_moments(self.terms(stage, dtype)) for stage in ("rows", "cols"))

    def row_product(self, A: torch.Tensor, x: torch.Tensor, stats: MatrixStats | None
                    ) -> torch.Tensor:
        """The row stage at ``b = 0``: ``r(x; b = 0) ≈ A x: (B, n)`` for ``A: (B, n, d)``,
        ``x: (B, d)`` and ``stats`` = :func:`matrix_stats` of ``A`` (``None`` unless
        :meth:`needs_stats`); only the nonzero terms are evaluated (:func:`stage_fast`; no
        gradient reaches the coefficients). Unchecked (no sync): the caller has validated
        ``A`` and passes finite ``x``, and flags a non-finite result itself."""
        row_sq, row_sum = (None, None) if stats is None else stats[:2]
        return stage_fast(self.rows, A, None, x.unsqueeze(2), row_sq, row_sum,
                          self.terms("rows", A.dtype, zero_own=True))

    def column_product(self, A: torch.Tensor, r: torch.Tensor, stats: MatrixStats | None
                       ) -> torch.Tensor:
        """The column stage at ``x = 0`` read with ``r: (B, n)``: ``g ≈ Aᵀ r: (B, d)``;
        as :meth:`row_product`."""
        col_sq, col_sum = (None, None) if stats is None else stats[2:]
        return stage_fast(self.cols, A.mT, None, r.unsqueeze(2), col_sq, col_sum,
                          self.terms("cols", A.dtype, zero_own=True))

    def step(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor,
             stats: MatrixStats | None) -> torch.Tensor:
        """The fused ``g ≈ Aᵀ(A x − b): (B, d)`` as :meth:`__call__` computes it, unchecked
        and from the nonzero terms as :meth:`row_product`."""
        row_sq, row_sum, col_sq, col_sum = (None,) * 4 if stats is None else stats
        r = stage_fast(self.rows, A, b, x.unsqueeze(2), row_sq, row_sum,
                       self.terms("rows", A.dtype))
        return stage_fast(self.cols, A.mT, x, r.unsqueeze(2), col_sq, col_sum,
                          self.terms("cols", A.dtype))

    def __call__(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor,
                 stats: MatrixStats | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r ≈ A x − b: (B, n), g ≈ Aᵀ r: (B, d))`` for ``A: (B, n, d)``, ``b: (B, n)``,
        ``x: (B, d)`` float32/float64 (one dtype); ``stats``: :func:`matrix_stats` of ``A``
        (computed when omitted). ``ValueError`` if the moments overflow the dtype."""
        stats = self._stats(A, b, x, stats)
        r = self._rows(A, b, x, stats)
        return r, self._cols(A, r, x, stats)

    def detached(self) -> AxialCoefficients:
        """The same coefficients, detached from any autograd graph."""
        return AxialCoefficients(self.rows.detach(), self.cols.detach())

    def snapped(self, rtol: float) -> AxialCoefficients:
        """A copy with every coefficient below ``rtol``·(its stage's largest) set to 0."""
        return AxialCoefficients(*(torch.where(c.abs() > rtol * c.abs().max(), c, 0)
                                   for c in (self.rows, self.cols)))

    def _rows(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor,
              stats: MatrixStats) -> torch.Tensor:
        return check_finite(stage_fast(self.rows, A, b, x.unsqueeze(2), stats.row_sq,
                                       stats.row_sum), "r", _overflowed(A.dtype))

    def _cols(self, A: torch.Tensor, r: torch.Tensor, x: torch.Tensor,
              stats: MatrixStats) -> torch.Tensor:
        return check_finite(stage_fast(self.cols, A.mT, x, r.unsqueeze(2), stats.col_sq,
                                       stats.col_sum), "g", _overflowed(A.dtype))

    @staticmethod
    def _stats(A: torch.Tensor, b: torch.Tensor, x: torch.Tensor,
               stats: MatrixStats | None) -> MatrixStats:
        check_problem(A, b, x, finite_A=False)  # A: by matrix_stats, or with stats
        if stats is None:
            return matrix_stats(A)
        expected = (A.shape[:2], A.shape[:2], A.shape[::2], A.shape[::2])
        if any(t.shape != s or t.dtype != A.dtype for t, s in zip(stats, expected, strict=True)):
            raise ValueError(f"stats do not belong to A of shape {tuple(A.shape)} and dtype "
                             f"{A.dtype}: got {[(tuple(t.shape), t.dtype) for t in stats]}")
        return stats


def _overflowed(dtype: torch.dtype) -> str:
    """:func:`check_finite`'s advice for a stage output (from finite inputs) in ``dtype``
    that is not finite: the moments overflowed."""
    return (f"the problem's moments (Σ a², powers of b and x up to 3) overflowed {dtype}; "
            f"rescale A, b, x")


class AxialOperator(nn.Module):
    """Two axial stages computing ``r ≈ A x − b`` and ``g ≈ Aᵀ r`` at any shape.

    ``AxialOperator(config, *, dtype=None, device=None, generator=None)``: parameters of
    ``dtype`` (default float64: the master weights) on ``device``, initialised
    ``N(0, config.init_std²)`` from ``generator`` only (default: a fresh generator seeded
    0). Two :class:`AxialStage` s, ``rows`` and ``cols`` (``C = 4`` entry features each),
    of ``2·h·C + 3·h + 2`` numbers each: 92 in all at ``h = 4``.
    """

    def __init__(self, config: AxialConfig, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        dtype = check_dtype(torch.float64 if dtype is None else dtype)
        if generator is None:
            generator = make_generator(0)
        self.config = config
        common = {"dtype": dtype, "device": device, "generator": generator}
        self.rows = AxialStage(OTHERS, config.head_dim, config.init_std, **common)
        self.cols = AxialStage(OTHERS, config.head_dim, config.init_std, **common)

    def coefficients(self) -> AxialCoefficients:
        """The canonical float64 coefficients (differentiable in the parameters)."""
        return AxialCoefficients(stage_coefficients(self.rows.weights()),
                                 stage_coefficients(self.cols.weights()))

    def forward(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor,
                stats: MatrixStats | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fast path: ``(r: (B, n), g: (B, d))`` in the inputs' dtype; see
        :meth:`AxialCoefficients.__call__`."""
        return self.coefficients()(A, b, x, stats)

    def forward_reference(self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference path (materialised tokens, ``O(B·n·d·width²)`` memory): ``(r, g)``."""
        check_problem(A, b, x)
        r = stage_reference(self.rows.weights(), A, b, x.unsqueeze(2))
        g = stage_reference(self.cols.weights(), A.mT, x, r.unsqueeze(2))
        fix = _overflowed(A.dtype)
        return check_finite(r, "r", fix), check_finite(g, "g", fix)


def construct_axial_gd(dtype: torch.dtype = torch.float64, head_dim: int = 4,
                       device: torch.device | str | None = None) -> AxialOperator:
    """Exact weights: row stage ``k = a, v = x_j, q = 1, P = −b`` gives ``r = A x − b``;
    column stage ``k = a, v = r_i, q = 1`` gives ``g = Aᵀ r`` (head 0 only, the rest 0)."""
    model = AxialOperator(AxialConfig(head_dim=head_dim), dtype=dtype, device=device)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for stage in (model.rows, model.cols):
            stage.key[0, 0] = 1  # a
            stage.value[0, 2] = 1  # the other-axis feature: x_j (rows), r_i (columns)
            stage.query[0, 1] = 1  # constant
            stage.out[0] = 1
        model.rows.skip[0] = -1  # − b_i
    return model
