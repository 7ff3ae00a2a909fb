"""Batched least-squares problem families, in and out of distribution.

A family is a small frozen dataclass; ``family.sample(batch, generator, dtype)`` draws a
:class:`Problems` batch ``A: (B, n, d)``, ``b: (B, n)`` and, where the construction knows
it, ``x_star: (B, d)``: the minimum-norm least-squares solution. ``family.shifted(...)``
returns the same family with some fields changed (larger ``n``, higher ``cond``, other
``scale``, more ``noise`` …), which is how studies ask for out-of-distribution problems.

Every family shares the fields ``n`` (rows, default 20), ``d`` (unknowns, default 5),
``noise`` (σ of ``b = A x* + σ ε``, default 0) and ``scale`` (a factor on ``A``, default 1).
Everything is generated in float64 from the caller's ``torch.Generator`` and only then cast
to ``dtype``, so prescribed spectra hold to float64 roundoff (relative ``~κ·2⁻⁵³``) and a
float32 batch is the rounding of the float64 one.

``x_star`` is exact for the float64 construction of a consistent system (``noise == 0``):
``x* ~ N(0, I_d)`` projected onto the row space of ``A`` (a no-op when ``A`` has full
column rank), ``b = A x*``. After a cast to float32 it solves the rounded problem only to
``~κ·2⁻²⁴``; :func:`neuralnum.problems.reference.lstsq` is the judge of precision claims. With
``noise > 0`` the system is inconsistent and ``x_star`` is ``None``.

Families: :class:`GaussianFamily` (also under- and over-determined via ``n``/``d``),
:class:`SpectrumFamily` (prescribed condition number or singular values, random
orthogonal factors), :class:`ScaledFamily` (row/column scaling), :class:`HeavyTailedFamily`
(Student-t entries), :class:`RankDeficientFamily`. :func:`family_from_name` picks one by
name from :data:`FAMILIES`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from neuralnum.core.validation import check_dtype, check_problem

__all__ = [
    "FAMILIES",
    "GaussianFamily",
    "HeavyTailedFamily",
    "ProblemFamily",
    "Problems",
    "RankDeficientFamily",
    "ScaledFamily",
    "SpectrumFamily",
    "family_from_name",
    "from_singular_values",
    "geometric_spectrum",
    "random_orthogonal",
]


@dataclass(frozen=True)
class Problems:
    """A batch of least-squares problems ``min_x ‖A x − b‖₂``.

    ``A: (B, n, d)``, ``b: (B, n)``, ``x_star: (B, d)`` or ``None`` (the minimum-norm
    least-squares solution when known by construction). One dtype (float32/float64) and
    device; all finite (checked on construction).
    """

    A: torch.Tensor
    b: torch.Tensor
    x_star: torch.Tensor | None = None

    def __post_init__(self) -> None:
        check_problem(self.A, self.b, self.x_star, x_name="x_star")

    @property
    def batch(self) -> int:
        return self.A.shape[0]

    @property
    def n(self) -> int:
        return self.A.shape[1]

    @property
    def d(self) -> int:
        return self.A.shape[2]

    @property
    def dtype(self) -> torch.dtype:
        return self.A.dtype

    def to(self, dtype: torch.dtype) -> Problems:
        """The same problems cast (rounded) to ``dtype`` (float32 or float64)."""
        check_dtype(dtype)
        x_star = None if self.x_star is None else self.x_star.to(dtype)
        return Problems(self.A.to(dtype), self.b.to(dtype), x_star)


def random_orthogonal(
    batch: int, rows: int, cols: int, generator: torch.Generator
) -> torch.Tensor:
    """Haar-random matrices with orthonormal columns, ``(batch, rows, cols)``, float64.

    QR of a Gaussian matrix with the signs of ``diag(R)`` folded into ``Q``
    (``cols <= rows``).
    """
    if cols > rows:
        raise ValueError(f"cols must be <= rows, got rows={rows}, cols={cols}")
    g = _normal((batch, rows, cols), generator)
    q, r = torch.linalg.qr(g)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return q * signs.unsqueeze(-2)


def geometric_spectrum(
    cond: float, r: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``r`` singular values log-spaced from ``cond`` down to 1, ``(r,)`` float64."""
    if r == 1:
        return torch.ones(1, dtype=torch.float64, device=device)
    s = torch.logspace(0, math.log10(cond), r, dtype=torch.float64, device=device)
    s[-1] = cond  # exact end point
    return s.flip(0)


def from_singular_values(
    s: torch.Tensor, n: int, d: int, generator: torch.Generator
) -> torch.Tensor:
    """``U diag(s) Vᵀ`` with Haar-random orthonormal ``U: (n, r)``, ``V: (d, r)``.

    ``s: (batch, r)`` float64, ``r <= min(n, d)`` → ``(batch, n, d)`` float64.
    """
    batch, r = s.shape
    u = random_orthogonal(batch, n, r, generator)
    v = random_orthogonal(batch, d, r, generator)
    return (u * s.unsqueeze(1)) @ v.transpose(1, 2)


def _normal(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float64,
                       device=generator.device)


def _uniform(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64,
                      device=generator.device)


@dataclass(frozen=True, kw_only=True)
class ProblemFamily:
    """Base class: shared fields, sampling of ``x*`` and ``b``, OOD shifts.

    Subclasses implement :meth:`matrices` (float64 ``A`` before ``scale``) and may
    override :meth:`matrix_rank` when ``A`` is rank-deficient by construction.
    """

    n: int = 20
    d: int = 5
    noise: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        for field in ("n", "d"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field} must be an int >= 1, got {value!r}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be finite and >= 0, got {self.noise!r}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be finite and > 0, got {self.scale!r}")

    # ------------------------------------------------------------------ subclass hooks
    def matrices(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Design matrices ``(batch, n, d)`` in float64, before ``scale``."""
        raise NotImplementedError

    def matrix_rank(self) -> int:
        """The rank of every ``A`` the family draws (``min(n, d)`` unless overridden)."""
        return min(self.n, self.d)

    # ------------------------------------------------------------------ public API
    def sample(
        self, batch: int, generator: torch.Generator, dtype: torch.dtype = torch.float64
    ) -> Problems:
        """Draw ``batch`` problems from ``generator``, returned in ``dtype``."""
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, got {batch!r}")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got "
                            f"{type(generator).__name__}")
        check_dtype(dtype)
        A = self.scale * self.matrices(batch, generator)
        x_star = _normal((batch, self.d), generator)
        if self.matrix_rank() < self.d:  # keep only the row-space part: the minimum-norm solution
            _, _, vh = torch.linalg.svd(A, full_matrices=False)
            basis = vh[:, : self.matrix_rank(), :]
            x_star = torch.einsum("brd,br->bd", basis, torch.einsum("brd,bd->br", basis, x_star))
        b = torch.einsum("bnd,bd->bn", A, x_star)
        if self.noise > 0:
            b = b + self.noise * _normal((batch, self.n), generator)
            return Problems(A, b).to(dtype)
        return Problems(A, b, x_star).to(dtype)

    def shifted(self, **changes: Any) -> ProblemFamily:
        """The same family with ``changes`` applied (e.g. ``n=40``, ``cond=100``)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {unknown}; "
                            f"fields are {sorted(names)}")
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class GaussianFamily(ProblemFamily):
    """``A`` with i.i.d. N(0, 1) entries (the paper's set-up at n=20, d=5).

    ``n < d`` gives under-determined problems (full row rank; ``x_star`` is the
    minimum-norm solution).
    """

    def matrices(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return _normal((batch, self.n, self.d), generator)


Spectrum = Literal["geometric", "linear", "rescaled"]


@dataclass(frozen=True, kw_only=True)
class SpectrumFamily(ProblemFamily):
    """``A = U diag(σ) Vᵀ`` with Haar-random orthonormal ``U: (n, r)``, ``V: (d, r)``.

    ``r = min(n, d)``. ``singular_values`` (length ``r``) fixes ``σ`` exactly; otherwise
    ``σ`` spans ``[1, cond]`` (so ``κ(A) = cond``):

    * ``"geometric"``: log-spaced from 1 to ``cond``;
    * ``"linear"``: evenly spaced from 1 to ``cond``;
    * ``"rescaled"``: a Gaussian matrix's own singular values mapped affinely onto
      ``[1, cond]`` (the paper's optional κ = 5 family).
    """

    cond: float = 5.0
    spectrum: Spectrum = "rescaled"
    singular_values: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.cond) and self.cond >= 1):
            raise ValueError(f"cond must be finite and >= 1, got {self.cond!r}")
        if self.spectrum not in ("geometric", "linear", "rescaled"):
            raise ValueError(f"spectrum must be 'geometric', 'linear' or 'rescaled', "
                             f"got {self.spectrum!r}")
        if self.singular_values is not None:
            sv = tuple(float(s) for s in self.singular_values)
            if len(sv) != min(self.n, self.d):
                raise ValueError(f"singular_values must have min(n, d) = "
                                 f"{min(self.n, self.d)} entries, got {len(sv)}")
            if not all(math.isfinite(s) and s > 0 for s in sv):
                raise ValueError(f"singular_values must be finite and > 0, got {sv}")
            object.__setattr__(self, "singular_values", sv)

    def sigmas(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Singular values ``(batch, min(n, d))`` in float64, descending."""
        r = min(self.n, self.d)
        kw = {"dtype": torch.float64, "device": generator.device}
        if self.singular_values is not None:
            s = torch.tensor(self.singular_values, **kw).expand(batch, r)
        elif r == 1:
            s = torch.ones(batch, 1, **kw)
        elif self.spectrum == "geometric":
            s = geometric_spectrum(self.cond, r, generator.device).expand(batch, r)
        elif self.spectrum == "linear":
            s = torch.linspace(1, self.cond, r, **kw).expand(batch, r)
        else:
            g = torch.linalg.svdvals(_normal((batch, self.n, self.d), generator))
            lo, hi = g[:, -1:], g[:, :1]
            s = 1 + (self.cond - 1) * (g - lo) / (hi - lo)
            s[:, 0], s[:, -1] = self.cond, 1.0  # exact end points
        return s.sort(dim=1, descending=True).values

    def matrices(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return from_singular_values(self.sigmas(batch, generator), self.n, self.d, generator)


@dataclass(frozen=True, kw_only=True)
class ScaledFamily(ProblemFamily):
    """Gaussian ``A`` with rows and columns scaled: ``D_r G D_c``.

    ``log10`` of each row (column) scale is uniform on ``[-row_decades/2, row_decades/2]``
    (``col_decades`` likewise), so the scales span ``row_decades`` decades.
    """

    row_decades: float = 2.0
    col_decades: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for field in ("row_decades", "col_decades"):
            value = getattr(self, field)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{field} must be finite and >= 0, got {value!r}")

    def matrices(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        g = _normal((batch, self.n, self.d), generator)
        rows = 10 ** (self.row_decades * (_uniform((batch, self.n, 1), generator) - 0.5))
        cols = 10 ** (self.col_decades * (_uniform((batch, 1, self.d), generator) - 0.5))
        return rows * g * cols


@dataclass(frozen=True, kw_only=True)
class HeavyTailedFamily(ProblemFamily):
    """``A`` with i.i.d. Student-t entries with ``df`` (integer) degrees of freedom.

    ``df = 1`` is Cauchy; small ``df`` gives occasional huge entries and badly
    conditioned problems. ``t = z / sqrt(χ²_df / df)`` from Gaussian draws only.
    """

    df: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.df, int) or isinstance(self.df, bool) or self.df < 1:
            raise ValueError(f"df must be an int >= 1, got {self.df!r}")

    def matrices(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        z = _normal((batch, self.n, self.d), generator)
        chi2 = _normal((batch, self.n, self.d, self.df), generator).pow(2).sum(-1)
        return z / torch.sqrt(chi2 / self.df)


@dataclass(frozen=True, kw_only=True)
class RankDeficientFamily(ProblemFamily):
    """``A = U diag(σ) Vᵀ`` of rank ``rank`` < min(n, d), σ log-spaced on ``[1, cond]``.

    ``x_star`` is the minimum-norm solution (in the row space of ``A``). Solvers must
    truncate singular values below their ``rcond`` to find it.
    """

    rank: int = 3
    cond: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        r = self.rank
        if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r < min(self.n, self.d):
            raise ValueError(f"rank must be an int in [1, min(n, d)) = "
                             f"[1, {min(self.n, self.d)}), got {r!r}")
        if not (math.isfinite(self.cond) and self.cond >= 1):
            raise ValueError(f"cond must be finite and >= 1, got {self.cond!r}")

    def matrix_rank(self) -> int:
        return self.rank

    def matrices(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        s = geometric_spectrum(self.cond, self.rank, generator.device).expand(batch, -1)
        return from_singular_values(s, self.n, self.d, generator)


#: name -> (family class, default fields). ``family_from_name`` overrides the defaults.
FAMILIES: dict[str, tuple[type[ProblemFamily], dict[str, Any]]] = {
    "gaussian": (GaussianFamily, {}),
    "overdetermined": (GaussianFamily, {"n": 40, "d": 5}),
    "underdetermined": (GaussianFamily, {"n": 5, "d": 20}),
    "noisy": (GaussianFamily, {"noise": 1e-2}),
    "spectrum": (SpectrumFamily, {"cond": 5.0, "spectrum": "rescaled"}),
    "ill_conditioned": (SpectrumFamily, {"cond": 1e4, "spectrum": "geometric"}),
    "scaled": (ScaledFamily, {}),
    "heavy_tailed": (HeavyTailedFamily, {}),
    "rank_deficient": (RankDeficientFamily, {}),
}


def family_from_name(name: str, **fields: Any) -> ProblemFamily:
    """The family registered as ``name`` in :data:`FAMILIES`, with ``fields`` overriding
    its defaults (e.g. ``family_from_name("spectrum", cond=100.0, n=40)``)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; known: {sorted(FAMILIES)}")
    cls, defaults = FAMILIES[name]
    return cls(**{**defaults, **fields})
