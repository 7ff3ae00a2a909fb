"""Monarch matrices: factors, multiply, dense form, counts, and the optimal projection.

Layout (the project's, see :mod:`kernels.monarch_reference`): a Monarch matrix
``M = P L Pᵀ R`` of shape ``(s·q, k·p)`` is held as two block stacks

* ``R: (k, q, p)`` — ``k`` blocks of ``q × p`` acting on the ``k`` input blocks of ``p``,
* ``L: (q, s, k)`` — ``q`` blocks of ``s × k``,

with ``M[a·q + i, j·p + c] = L[i, a, j] · R[j, i, c]``. For each ``(i, j)`` the ``s × p``
slice ``M[i::q, j·p:(j+1)·p]`` is therefore the rank-one matrix ``L[i, :, j] ⊗ R[j, i, :]``.
The multiply goes through the dispatcher :func:`kernels.monarch_matmul` (Triton on CUDA,
batched matmuls elsewhere).

**Block sizes from** ``(in_features, out_features, nblocks)`` (:meth:`MonarchShape.for_features`)::

    k = nblocks                      R has nblocks blocks
    p = in_features / nblocks        ... of p inputs each
    q = min(in, out) / nblocks       so the inner width k·q = min(in, out): no rank bottleneck
    s = out_features / q             L has q blocks of s × nblocks

Nothing is padded: ``nblocks`` must divide ``in_features`` and ``min(in, out)``, and
``q`` must divide ``out_features`` (always true when ``out ≤ in``; when ``out > in`` it
asks ``in/nblocks`` to divide ``out``). Otherwise :class:`ValueError` says which.
For a square ``n = m²`` and ``nblocks = m`` this is the classic Monarch of Dao et al.
(``k = p = q = s = m``, ``2n√n`` parameters). Other ``nblocks`` interpolate towards dense:
a square ``n`` has ``n²/nblocks + n·nblocks`` parameters, smallest at ``nblocks = √n``
(``nblocks = 1`` or ``n`` is a dense factor times a diagonal).

**Rank r** (the projection's generalisation): ``M = Σ_t P L_t Pᵀ R_t`` with factors
``R: (r, k, q, p)``, ``L: (r, q, s, k)`` — every ``(i, j)`` slice has rank ≤ r.

Dtypes: bfloat16, float32, float64 (and complex64/complex128 for the transforms; complex
products are assembled from real dispatcher calls).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from kernels import monarch_matmul
from neuralnum.core.validation import check_positive_int

__all__ = ["FACTOR_DTYPES", "MonarchMatrix", "MonarchShape", "Projection", "project"]

FACTOR_DTYPES: tuple[torch.dtype, ...] = (
    torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
)


@dataclass(frozen=True)
class MonarchShape:
    """Block sizes ``(k, p, q, s)``: ``R: (k, q, p)``, ``L: (q, s, k)``, ``M: (s·q, k·p)``."""

    k: int
    p: int
    q: int
    s: int

    @classmethod
    def for_features(cls, in_features: int, out_features: int, nblocks: int) -> MonarchShape:
        """The module's rule (see the module docstring); ``ValueError`` when it cannot apply."""
        n_in = check_positive_int(in_features, "in_features")
        n_out = check_positive_int(out_features, "out_features")
        nb = check_positive_int(nblocks, "nblocks")
        if n_in % nb:
            raise ValueError(f"nblocks={nb} must divide in_features={n_in}")
        if min(n_in, n_out) % nb:
            raise ValueError(f"nblocks={nb} must divide min(in_features, out_features)="
                             f"{min(n_in, n_out)}")
        q = min(n_in, n_out) // nb
        if n_out % q:
            raise ValueError(f"in_features/nblocks={q} must divide out_features={n_out} "
                             f"(Monarch layout; no padding)")
        return cls(k=nb, p=n_in // nb, q=q, s=n_out // q)

    @property
    def in_features(self) -> int:
        return self.k * self.p

    @property
    def out_features(self) -> int:
        return self.s * self.q

    @property
    def r_shape(self) -> tuple[int, int, int]:
        return (self.k, self.q, self.p)

    @property
    def l_shape(self) -> tuple[int, int, int]:
        return (self.q, self.s, self.k)

    def num_params(self) -> int:
        """Entries of ``R`` and ``L`` for rank one: ``k·q·p + q·s·k``."""
        return self.k * self.q * (self.p + self.s)


def _check_factors(R: torch.Tensor, L: torch.Tensor) -> MonarchShape:
    for name, t in (("R", R), ("L", L)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in FACTOR_DTYPES:
            raise TypeError(f"{name}.dtype must be one of {FACTOR_DTYPES}, got {t.dtype}")
    if R.dtype != L.dtype:
        raise TypeError(f"R and L must share a dtype, got {R.dtype} and {L.dtype}")
    if R.device != L.device:
        raise ValueError(f"R is on {R.device} but L is on {L.device}")
    if R.ndim not in (3, 4) or L.ndim != R.ndim:
        raise ValueError(f"R and L must both be 3-D (k,q,p)/(q,s,k) or 4-D with a leading "
                         f"rank axis, got R {tuple(R.shape)}, L {tuple(L.shape)}")
    k, q, p = R.shape[-3:]
    if L.shape[:-3] != R.shape[:-3] or L.shape[-3] != q or L.shape[-1] != k:
        raise ValueError(f"L must have shape {(*R.shape[:-3], q, 's', k)} to follow R "
                         f"{tuple(R.shape)}, got {tuple(L.shape)}")
    shape = MonarchShape(k=k, p=p, q=q, s=L.shape[-2])
    if min(shape.k, shape.p, shape.q, shape.s) == 0 or R.shape[:-3] == (0,):
        raise ValueError(f"empty Monarch factors R {tuple(R.shape)}, L {tuple(L.shape)}")
    return shape


def _matmul_real(x: torch.Tensor, R: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Real multiply for 3-D or rank-stacked 4-D factors through one dispatcher call.

    Rank r is folded into the inner width: ``R' = (k, r·q, p)``, ``L' = (r·q, s, k)``; the
    output ``(s, r, q)`` is summed over ``r``.
    """
    if R.ndim == 3:
        return monarch_matmul(x, R, L)
    r, k, q, p = R.shape
    s = L.shape[-2]
    R_cat = R.permute(1, 0, 2, 3).reshape(k, r * q, p)
    L_cat = L.reshape(r * q, s, k)
    y = monarch_matmul(x, R_cat, L_cat)
    return y.reshape(*x.shape[:-1], s, r, q).sum(-2).reshape(*x.shape[:-1], s * q)


def _matmul(x: torch.Tensor, R: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """``M(R, L) x``; complex operands are split into four real (bilinear) products."""
    if not (x.is_complex() or R.is_complex()):
        return _matmul_real(x, R, L)
    parts = torch.stack([x.real, x.imag])                     # (2, ..., n_in)
    Rr, Ri, Lr, Li = R.real, R.imag, L.real, L.imag
    re = _matmul_real(parts, Rr, Lr) - _matmul_real(parts, Ri, Li)   # Re(M) [xr, xi]
    im = _matmul_real(parts, Rr, Li) + _matmul_real(parts, Ri, Lr)   # Im(M) [xr, xi]
    return torch.complex(re[0] - im[1], re[1] + im[0])


class MonarchMatrix:
    """A (rank-r) Monarch matrix of shape ``(s·q, k·p)`` held as factors ``R``, ``L``.

    ``R: (k, q, p)`` and ``L: (q, s, k)`` (rank one) or ``R: (r, k, q, p)`` and
    ``L: (r, q, s, k)``; one dtype from :data:`FACTOR_DTYPES`, one device. The factors
    are used as given (no copy), so gradients flow through :meth:`matmul` and
    :meth:`to_dense`.
    """

    def __init__(self, R: torch.Tensor, L: torch.Tensor):
        self.blocks = _check_factors(R, L)
        self.R = R
        self.L = L

    @classmethod
    def random(
        cls,
        in_features: int,
        out_features: int,
        nblocks: int,
        *,
        rank: int = 1,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        generator: torch.Generator | None = None,
    ) -> MonarchMatrix:
        """Standard-normal factors scaled so entries of ``M x`` have variance ≈ ``|x|²/n_in``."""
        blocks = MonarchShape.for_features(in_features, out_features, nblocks)
        lead = () if check_positive_int(rank, "rank") == 1 else (rank,)
        if dtype not in FACTOR_DTYPES:
            raise TypeError(f"dtype must be one of {FACTOR_DTYPES}, got {dtype}")

        def draw(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
            t = torch.randn(*lead, *shape, dtype=dtype, device=device, generator=generator)
            return t / (fan_in * rank ** 0.5) ** 0.5

        return cls(draw(blocks.r_shape, blocks.p), draw(blocks.l_shape, blocks.k))

    # ------------------------------------------------------------------ attributes
    @property
    def rank(self) -> int:
        """Rank of every ``(i, j)`` slice's parametrisation (1 for 3-D factors)."""
        return self.R.shape[0] if self.R.ndim == 4 else 1

    @property
    def shape(self) -> tuple[int, int]:
        """``(out_features, in_features) = (s·q, k·p)``."""
        return (self.blocks.out_features, self.blocks.in_features)

    @property
    def dtype(self) -> torch.dtype:
        return self.R.dtype

    @property
    def device(self) -> torch.device:
        return self.R.device

    def num_params(self) -> int:
        """Stored factor entries: ``rank · (k·q·p + q·s·k)``."""
        return self.rank * self.blocks.num_params()

    def flops(self, batch: int = 1) -> int:
        """Real FLOPs of :meth:`matmul` on ``batch`` vectors: 2 per factor entry per vector.

        The dense equivalent costs ``2 · batch · in · out``; the ratio is
        ``in·out / num_params()`` (32 for ``n = 4096`` with 64 blocks).
        """
        return 2 * check_positive_int(batch, "batch") * self.num_params()

    # ------------------------------------------------------------------ products
    def _check_operand(self, x: torch.Tensor, n: int, name: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype != self.dtype:
            raise TypeError(f"{name}.dtype {x.dtype} differs from the factors' {self.dtype}")
        if x.ndim == 0 or x.shape[-1] != n:
            raise ValueError(f"{name}'s last dimension must be {n}, got shape {tuple(x.shape)}")

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``M x`` for ``x: (..., in_features)`` of the factors' dtype → ``(..., out_features)``."""
        self._check_operand(x, self.blocks.in_features, "x")
        return _matmul(x, self.R, self.L)

    __matmul__ = matmul

    def adjoint_matmul(self, y: torch.Tensor) -> torch.Tensor:
        """``Mᴴ y`` for ``y: (..., out_features)`` → ``(..., in_features)``.

        ``Mᵀ`` is a Monarch matrix between two permutations:
        ``Mᵀ = Π_(p,k) · Monarch(R' = Lᵀ, L' = Rᵀ) · Π_(s,q)`` with ``Π_(a,b)`` the
        ``(a, b) → (b, a)`` transpose of the index.
        """
        self._check_operand(y, self.blocks.out_features, "y")
        b = self.blocks
        batch = y.shape[:-1]
        y_perm = y.reshape(*batch, b.s, b.q).transpose(-1, -2).reshape(*batch, b.q * b.s)
        z = _matmul(y_perm, self.L.mT.conj(), self.R.mT.conj())        # (..., p·k)
        return z.reshape(*batch, b.p, b.k).transpose(-1, -2).reshape(*batch, b.k * b.p)

    def to_dense(self) -> torch.Tensor:
        """The ``(out_features, in_features)`` matrix, exact up to one rounding per entry."""
        b = self.blocks
        R = self.R if self.R.ndim == 4 else self.R.unsqueeze(0)
        L = self.L if self.L.ndim == 4 else self.L.unsqueeze(0)
        dense = torch.einsum("tiaj,tjic->aijc", L, R)
        return dense.reshape(b.out_features, b.in_features)

    def __repr__(self) -> str:
        b = self.blocks
        return (f"MonarchMatrix(shape={self.shape}, k={b.k}, p={b.p}, q={b.q}, s={b.s}, "
                f"rank={self.rank}, dtype={self.dtype})")


# ---------------------------------------------------------------------- projection
class Projection(NamedTuple):
    """Result of :func:`project`."""

    monarch: MonarchMatrix
    """The closest rank-r Monarch matrix, factors in ``W``'s dtype."""
    rel_error: float
    """``‖W − M‖_F / ‖W‖_F`` computed from the returned factors (0 for ``W = 0``)."""


_SVD_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


def project(W: torch.Tensor, nblocks: int, rank: int = 1) -> Projection:
    """The Monarch matrix (block sizes from ``nblocks``) closest to ``W`` in Frobenius norm.

    ``W: (out_features, in_features)``, float32/float64/complex (bfloat16 is projected in
    float32 and the factors cast back). Block sizes follow
    :meth:`MonarchShape.for_features`. Each ``s × p`` slice ``W[i::q, j·p:(j+1)·p]``
    independently gets its best rank-``rank`` approximation (truncated SVD,
    Eckart–Young), split as ``L = U√σ``, ``R = √σ Vᴴ``; since the slices partition ``W``
    the result is optimal over all (rank-r) Monarch matrices with these blocks, and exact
    (to roundoff) when ``W`` is one. Cost: ``q·k`` SVDs of ``s × p``. No gradient.
    """
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"W must be a torch.Tensor, got {type(W).__name__}")
    if W.dtype not in FACTOR_DTYPES:
        raise TypeError(f"W.dtype must be one of {FACTOR_DTYPES}, got {W.dtype}")
    if W.ndim != 2:
        raise ValueError(f"W must be a 2-D (out_features, in_features) matrix, "
                         f"got shape {tuple(W.shape)}")
    if not torch.isfinite(W).all():
        raise ValueError("W contains NaN or Inf")
    b = MonarchShape.for_features(W.shape[1], W.shape[0], nblocks)
    r = check_positive_int(rank, "rank")
    if r > min(b.s, b.p):
        raise ValueError(f"rank={r} exceeds min(s, p)={min(b.s, b.p)}, the size of each "
                         f"{b.s}×{b.p} slice")
    W = W.detach()
    Wc = W if W.dtype in _SVD_DTYPES else W.float()
    slices = Wc.reshape(b.s, b.q, b.k, b.p).permute(1, 2, 0, 3)       # (q, k, s, p)
    U, S, Vh = torch.linalg.svd(slices, full_matrices=False)
    root = S[..., :r].sqrt().to(U.dtype)                              # (q, k, r)
    L = (U[..., :r] * root[..., None, :]).permute(3, 0, 2, 1)          # (r, q, s, k)
    R = (Vh[..., :r, :] * root[..., None]).permute(2, 1, 0, 3)         # (r, k, q, p)
    if r == 1:
        R, L = R[0], L[0]
    M = MonarchMatrix(R.contiguous().to(W.dtype), L.contiguous().to(W.dtype))
    norm = torch.linalg.norm(Wc)
    err = torch.linalg.norm(Wc - M.to_dense().to(Wc.dtype))
    return Projection(M, float(err / norm) if norm > 0 else 0.0)
