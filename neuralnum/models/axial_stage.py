"""One stage of the shape-general axial operator (:mod:`neuralnum.models.axial`): the math.

A stage along an axis with own index ``o`` (the output's) and summed index ``s`` has entry
features ``f_os = [a_os, z_o, o_s, 1]`` (``z``: the one own-level feature; ``o_s``: the
other axis's feature broadcast along it) and own features ``ω_o = [z_o, 1]``::

    out_o = Σ_{h,h'} w_h' (Σ_s (K f_os)_h (V f_os)_h') (Q ω_o)_h + P·ω_o

— a linear-attention product along one axis with a query read from the own axis, sums not
means, so no weight depends on the shape. :func:`stage_reference` evaluates exactly this,
materialising the ``(B, n, d, C)`` tokens. Every entry feature is ``a_os``, an own-level or
an other-level quantity, so ``out_o`` is a polynomial whose terms are *moments* —
``Σ_s a_os²`` and ``Σ_s a_os`` (per matrix: :class:`MatrixStats`), ``Σ_s a_os o_s`` (one
skinny product with ``A`` per call), the per-problem Gram ``Σ_s φ_s φ_sᵀ`` of
``φ_s = [o_s, 1]``, and the constant 1 — each times a polynomial of degree ≤ 3 in ``z_o``.
Its coefficients depend on the weights only: :func:`stage_coefficients` collapses
``(K, V, Q, w, P)`` into this *canonical* form (unique for a given function of all shapes,
so free of the factors' gauge and of cancellation between equivalent terms), and
:func:`stage_fast` evaluates it with one read of ``A`` per stage and ``O((n + d)·width²)``
other work: no ``n·d·width`` activations. Evaluating the factored weights through the same
moments instead would form terms ``~N`` times larger than the result that cancel only at
the end, their rounding growing like ``√N`` against a matmul's.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import torch
from torch import nn

from neuralnum.core.validation import check_finite, check_tensor

__all__ = ["OTHERS", "POWERS", "SPARSE_TERMS", "AxialStage", "MatrixStats", "StageWeights",
           "Terms", "draw_parameters", "matrix_stats", "needs_matrix_moments",
           "stage_coefficients", "stage_fast", "stage_reference", "stage_terms",
           "vanishes_at_zero"]

POWERS = 4  # a stage's canonical polynomial has powers z⁰…z³ of its own feature
OTHERS = 1  # other-axis features per stage: x_j (row stage), r_i (column stage)


class MatrixStats(NamedTuple):
    """The moments of ``A`` alone, in ``A``'s dtype: ``row_sq = Σ_j a_ij²``, ``row_sum =
    Σ_j a_ij``: ``(B, n)``; ``col_sq``, ``col_sum``: ``(B, d)``. Compute once per ``A`` with
    :func:`matrix_stats` (which checks ``A``) and reuse across calls: then a call reads
    ``A`` once per stage."""

    row_sq: torch.Tensor
    row_sum: torch.Tensor
    col_sq: torch.Tensor
    col_sum: torch.Tensor


class StageWeights(NamedTuple):
    """One stage's weights, ``h = head_dim``, ``q`` other-axis features, ``C = q + 3``:
    ``key, value: (h, C)`` over entry features ``[a, z, o_1…o_q, 1]``; ``query: (h, 2)`` and
    ``skip: (2,)`` over own features ``[z, 1]``; ``out: (h,)`` the read-out."""

    key: torch.Tensor
    value: torch.Tensor
    query: torch.Tensor
    out: torch.Tensor
    skip: torch.Tensor


def matrix_stats(A: torch.Tensor) -> MatrixStats:
    """:class:`MatrixStats` of ``A: (B, n, d)`` float32/float64; ``ValueError`` when ``A``
    is empty or has NaN/Inf entries, or its squared row/column norms overflow."""
    check_tensor(A, "A", 3)
    square = A * A
    stats = MatrixStats(square.sum(2), A.sum(2), square.sum(1), A.sum(1))
    if not all(bool(torch.isfinite(t).all()) for t in stats):
        check_finite(A, "A")
        raise ValueError(f"A has entries so large that Σ a² overflows {A.dtype}; rescale A")
    return stats


@functools.cache
def _collapse_map(others: int) -> torch.Tensor:
    """0/1 matrix ``((C·C·2 + 2), M·POWERS)`` mapping the entries of the weight product
    ``T[α, β, γ]`` (then ``skip``) onto the canonical coefficients ``(M, POWERS)``.

    Entry feature ``α`` splits into a summed-axis factor ``σ(α)`` of ``[a, o_1…o_q, 1]``
    and a power ``π(α)`` of the own feature ``z``; the term ``T[α,β,γ] Σ_s f_α f_β ω_γ``
    is ``T·z^{π(α)+π(β)+π(γ)}·Σ_s σ(α)σ(β)``: moment = unordered pair ``{σ(α), σ(β)}``.
    The last moment is the constant 1 (the ``skip`` term)."""
    factors = others + 2
    pairs = {p: i for i, p in
             enumerate(itertools.combinations_with_replacement(range(factors), 2))}
    features = [(0, 0), (factors - 1, 1), *[(1 + l, 0) for l in range(others)],
                (factors - 1, 0)]
    query_powers = (1, 0)
    width, constant = len(features), len(pairs)
    collapse = torch.zeros(width * width * 2 + 2, (constant + 1) * POWERS, dtype=torch.float64)
    for (ia, (sa, pa)), (ib, (sb, pb)), (ic, pc) in itertools.product(
            enumerate(features), enumerate(features), enumerate(query_powers)):
        slot = pairs[min(sa, sb), max(sa, sb)] * POWERS + pa + pb + pc
        collapse[(ia * width + ib) * 2 + ic, slot] = 1
    collapse[-2, constant * POWERS + 1] = 1  # skip · z
    collapse[-1, constant * POWERS] = 1  # skip · 1
    return collapse


def stage_coefficients(weights: StageWeights) -> torch.Tensor:
    """The canonical coefficients ``(M, 4)`` float64 of a stage (differentiable): row ``m``
    holds the coefficients of ``z⁰…z³`` multiplying moment ``m`` in the order of
    :func:`stage_fast`. ``M = 7`` for a stage with one other-axis feature."""
    key, value, query, out, skip = (t.to(torch.float64) for t in weights)
    product = torch.einsum("g,ha,gb,hc->abc", out, key, value, query)
    collapse = _collapse_map(key.shape[1] - 3).to(key.device)
    return (torch.cat([product.reshape(-1), skip]) @ collapse).reshape(-1, POWERS)


#: The nonzero terms of a stage's canonical polynomial (:func:`stage_terms`): per moment
#: with a nonzero coefficient, its index in :func:`stage_fast`'s order and the
#: coefficients of ``z⁰…z^p`` (``p`` its highest nonzero power), as Python floats.
Terms = tuple[tuple[int, tuple[float, ...]], ...]

#: :func:`stage_fast` evaluates only the nonzero terms when there are at most this many:
#: a sum of two numbers and exact zeros rounds once in any order, so the result is the
#: dense evaluation's bit for bit (torch's reduction over more terms has its own order).
SPARSE_TERMS = 2


def stage_terms(coefficients: torch.Tensor, dtype: torch.dtype, zero_own: bool = False,
                ) -> Terms:
    """The nonzero terms of a stage's canonical ``coefficients: (M, 4)`` rounded to
    ``dtype`` (:data:`Terms`); ``zero_own``: for a call whose own feature is 0, where only
    the ``z⁰`` coefficients count. Reads the coefficients' values (a device sync): compute
    once per coefficients and dtype."""
    table = coefficients.detach().to(dtype)
    rows = (table[:, :1] if zero_own else table).tolist()
    terms = []
    for moment, row in enumerate(rows):
        powers = [k for k, c in enumerate(row) if c != 0]
        if powers:
            terms.append((moment, tuple(row[: powers[-1] + 1])))
    return tuple(terms)


def needs_matrix_moments(terms: Terms, others: int = OTHERS) -> bool:
    """Whether :func:`stage_fast` with these :func:`stage_terms` reads ``square`` or
    ``total`` (``Σ_s a²``, ``Σ_s a``): a term on either, or too many terms for the sparse
    evaluation. Where it does not, they may be passed as ``None``."""
    return len(terms) > SPARSE_TERMS or any(m in (0, others + 1) for m, _ in terms)


def vanishes_at_zero(terms: Terms, others: int = OTHERS) -> bool:
    """Whether a stage with these :func:`stage_terms` (``zero_own``) is exactly zero when
    its other-axis features are zero too, by its form: every term's moment then has an
    other-axis factor (``Σ_s a o_s`` or a Gram entry with an ``o``), so it is ±0."""
    gram = (others + 1) * (others + 2) // 2
    free = {0, others + 1, others + 1 + gram, others + 2 + gram}  # Σa², Σa, Σ1·1, 1
    return not any(moment in free for moment, _ in terms)


def stage_fast(coefficients: torch.Tensor, mat: torch.Tensor, own: torch.Tensor | None,
               others: torch.Tensor, square: torch.Tensor | None, total: torch.Tensor | None,
               terms: Terms | None = None) -> torch.Tensor:
    """A stage from its canonical ``coefficients: (M, 4)`` (rounded to ``mat``'s dtype).

    ``mat: (B, No, Ns)`` (``A`` or ``A.mT``), ``own: (B, No)`` (``None``: all zero),
    ``others: (B, Ns, q)``, ``square = Σ_s mat²``, ``total = Σ_s mat``: ``(B, No)`` (``None``
    where :func:`needs_matrix_moments` of ``terms`` is false); returns
    ``(B, No)``. Moments, in order: ``Σ_s a²``, ``Σ_s a o_s`` (one skinny product, computed
    as ``(othersᵀ matᵀ)ᵀ`` so that the short dimension streams over ``A``'s rows either
    way), ``Σ_s a``, the upper triangle of ``Σ_s φ_s φ_sᵀ`` (``φ = [o_1…o_q, 1]``) row by
    row, the constant 1; each times a cubic in ``own`` (Horner). ``terms``: the
    coefficients' :func:`stage_terms` (for this dtype, ``zero_own`` when ``own`` is
    ``None``); with at most :data:`SPARSE_TERMS` of them only those moments are formed,
    with the same result (no gradient reaches ``coefficients`` then)."""
    if terms is not None and len(terms) <= SPARSE_TERMS:
        return _stage_sparse(terms, mat, own, others, square, total)
    batch, rows, _ = mat.shape
    if own is None:
        own = mat.new_zeros(batch, rows)
    moments = torch.cat([square.unsqueeze(2), _skinny(mat, others), total.unsqueeze(2),
                         _gram(others).unsqueeze(1).expand(batch, rows, -1),
                         mat.new_ones(batch, rows, 1)], 2)
    coef = coefficients.to(mat.dtype)
    poly = coef[:, POWERS - 1].expand(batch, rows, -1)
    for k in range(POWERS - 2, -1, -1):
        poly = poly * own.unsqueeze(2) + coef[:, k]
    return (poly * moments).sum(2)


def _skinny(mat: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """``Σ_s a_os o_s``: ``(B, No, q)``, the one product with ``mat``."""
    return (others.mT @ mat.mT).mT


def _gram(others: torch.Tensor) -> torch.Tensor:
    """The upper triangle of ``Σ_s φ_s φ_sᵀ``, ``φ = [others, 1]``, row by row: ``(B, G)``."""
    batch, length, _ = others.shape
    phi = torch.cat([others, others.new_ones(batch, length, 1)], 2)
    upper = torch.triu_indices(phi.shape[2], phi.shape[2], device=others.device)
    return (phi.mT @ phi)[:, upper[0], upper[1]]


def _stage_sparse(terms: Terms, mat: torch.Tensor, own: torch.Tensor | None,
                  others: torch.Tensor, square: torch.Tensor | None,
                  total: torch.Tensor | None) -> torch.Tensor:
    """:func:`stage_fast` from at most two nonzero ``terms``: each moment formed only when
    its coefficient is nonzero, each polynomial from its highest nonzero power (the dense
    Horner's leading zeros are exact), a factor 1 not multiplied."""
    batch, rows, _ = mat.shape
    q = others.shape[2]
    formed: dict[str, torch.Tensor] = {}

    def moment(m: int) -> torch.Tensor:
        if m in (0, q + 1):
            value = square if m == 0 else total
            assert value is not None, "square / total needed (needs_matrix_moments)"
            return value
        if m <= q:
            if "skinny" not in formed:
                formed["skinny"] = _skinny(mat, others)
            return formed["skinny"][:, :, m - 1]
        if "gram" not in formed:
            formed["gram"] = torch.cat([_gram(others), others.new_ones(batch, 1)], 1)
        return formed["gram"][:, m - q - 2:m - q - 1]  # the last: the constant 1

    values = [_poly(coefs, own, moment(m)) for m, coefs in terms]
    if not values:
        return mat.new_zeros(batch, rows)
    out = values[0] + values[1] if len(values) == 2 else values[0]
    if out is square or out is total or out.shape != (batch, rows):
        out = out.expand(batch, rows).clone()
    return out


def _poly(coefs: tuple[float, ...], own: torch.Tensor | None, value: torch.Tensor
          ) -> torch.Tensor:
    """``(Σ_k c_k own^k)·value`` rounded as the dense Horner rounds it (``value``: a moment,
    ``(B, No)`` or ``(B, 1)``; ``coefs``: ``c_0…c_p``, ``c_p ≠ 0``); ``own = None`` (zero)
    reads only ``c_0``."""
    if own is None or len(coefs) == 1:
        return value if coefs[0] == 1 else value * coefs[0]
    poly = own * coefs[-1]
    for k in range(len(coefs) - 2, -1, -1):
        poly = poly + coefs[k] if coefs[k] != 0 else poly
        poly = poly * own if k > 0 else poly
    return poly * value


def stage_reference(weights: StageWeights, mat: torch.Tensor, own: torch.Tensor,
                    others: torch.Tensor) -> torch.Tensor:
    """The same stage literally: materialises the entry tokens ``(B, No, Ns, C)``, keys and
    values, sums ``k vᵀ`` over the axis and reads them with the query; weights rounded to
    ``mat``'s dtype. Shapes as :func:`stage_fast`. For tests and small shapes only."""
    key, value, query, out, skip = (t.to(mat.dtype) for t in weights)
    batch, rows, length = mat.shape
    tokens = torch.cat([mat.unsqueeze(3), own[:, :, None, None].expand(-1, -1, length, 1),
                        others.unsqueeze(1).expand(-1, rows, -1, -1),
                        mat.new_ones(batch, rows, length, 1)], 3)
    state = torch.einsum("bosh,bosg->bohg", tokens @ key.T, tokens @ value.T)
    own_features = torch.stack([own, torch.ones_like(own)], 2)
    return (torch.einsum("bohg,boh,g->bo", state, own_features @ query.T, out)
            + own_features @ skip)


def draw_parameters(module: nn.Module, shapes: dict[str, tuple[int, ...]], std: float, *,
                    dtype: torch.dtype, device: torch.device | str | None,
                    generator: torch.Generator) -> None:
    """Register on ``module`` one ``N(0, std²)`` parameter per entry ``name: shape`` of
    ``shapes``, drawn in float64 from ``generator`` in the order given, then cast to
    ``dtype`` on ``device`` (so both dtypes start from the same draws)."""
    for name, shape in shapes.items():
        draw = std * torch.randn(shape, generator=generator, dtype=torch.float64)
        module.register_parameter(name, nn.Parameter(draw.to(dtype=dtype, device=device)))


class AxialStage(nn.Module):
    """Trainable :class:`StageWeights` for a stage with ``others`` other-axis features."""

    def __init__(self, others: int, head_dim: int, std: float, *, dtype: torch.dtype,
                 device: torch.device | str | None, generator: torch.Generator):
        super().__init__()
        width = others + 3
        shapes = {"key": (head_dim, width), "value": (head_dim, width),
                  "query": (head_dim, 2), "out": (head_dim,), "skip": (2,)}
        draw_parameters(self, shapes, std, dtype=dtype, device=device, generator=generator)

    def weights(self) -> StageWeights:
        return StageWeights(self.key, self.value, self.query, self.out, self.skip)
