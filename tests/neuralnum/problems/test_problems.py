"""Problem families: shapes, dtypes, determinism, prescribed spectra, x_star, OOD shifts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from lsq_strategies import batches, dtypes, generator, seeds, small_families

from neuralnum.problems.families import (
    FAMILIES,
    GaussianFamily,
    HeavyTailedFamily,
    Problems,
    RankDeficientFamily,
    ScaledFamily,
    SpectrumFamily,
    family_from_name,
    random_orthogonal,
)
from neuralnum.problems.reference import lstsq


@given(small_families(), batches, seeds, dtypes)
def test_sample_shapes_dtype_and_x_star_presence(family, batch, seed, dtype):
    p = family.sample(batch, generator(seed), dtype)
    assert isinstance(p, Problems)
    assert (p.batch, p.n, p.d) == (batch, family.n, family.d)
    assert p.A.shape == (batch, family.n, family.d) and p.b.shape == (batch, family.n)
    assert p.A.dtype == p.b.dtype == p.dtype == dtype
    assert (p.x_star is None) == (family.noise > 0)
    if p.x_star is not None:
        assert p.x_star.shape == (batch, family.d) and p.x_star.dtype == dtype


@given(small_families(), seeds)
def test_sampling_is_deterministic_and_float32_is_the_rounded_float64(family, seed):
    p64 = family.sample(2, generator(seed), torch.float64)
    again = family.sample(2, generator(seed), torch.float64)
    p32 = family.sample(2, generator(seed), torch.float32)
    assert torch.equal(p64.A, again.A) and torch.equal(p64.b, again.b)
    assert torch.equal(p32.A, p64.A.float()) and torch.equal(p32.b, p64.b.float())
    assert torch.equal(p64.to(torch.float32).A, p32.A)


@given(
    st.floats(min_value=1.0, max_value=1e6),
    st.sampled_from(["geometric", "linear", "rescaled"]),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=1, max_value=6),
    seeds,
)
def test_spectrum_family_condition_number_is_exact_in_float64(cond, spectrum, n, d, seed):
    family = SpectrumFamily(n=n, d=d, cond=cond, spectrum=spectrum)
    p = family.sample(3, generator(seed))
    s = torch.linalg.svdvals(p.A)
    generated = s[:, 0] / s[:, -1]
    expected = cond if min(n, d) > 1 else 1.0
    assert torch.allclose(generated, torch.full_like(generated, expected), rtol=1e-8, atol=0)


@given(
    st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=3, max_size=3),
    st.floats(min_value=0.1, max_value=10.0),
    seeds,
)
def test_prescribed_singular_values_are_generated(values, scale, seed):
    family = SpectrumFamily(n=7, d=3, singular_values=tuple(values), scale=scale)
    s = torch.linalg.svdvals(family.sample(2, generator(seed)).A)
    expected = scale * torch.tensor(sorted(values, reverse=True), dtype=torch.float64)
    # float64 roundoff perturbs each σ_i by ~u·σ_max
    assert torch.allclose(s, expected.expand_as(s), rtol=1e-8, atol=1e-12 * float(s.max()))


def test_paper_defaults():
    family = family_from_name("spectrum")
    assert (family.n, family.d, family.cond, family.spectrum) == (20, 5, 5.0, "rescaled")
    s = torch.linalg.svdvals(family.sample(4, generator(0)).A)
    assert torch.allclose(s[:, 0], torch.full((4,), 5.0, dtype=torch.float64), rtol=1e-12)
    assert torch.allclose(s[:, -1], torch.ones(4, dtype=torch.float64), rtol=1e-12)
    assert (GaussianFamily().n, GaussianFamily().d) == (20, 5)


@given(st.integers(min_value=1, max_value=6), st.integers(min_value=1, max_value=6), seeds)
def test_random_orthogonal_has_orthonormal_columns(rows, cols, seed):
    rows, cols = max(rows, cols), min(rows, cols)
    q = random_orthogonal(2, rows, cols, generator(seed))
    eye = torch.eye(cols, dtype=torch.float64).expand(2, cols, cols)
    assert torch.allclose(q.transpose(1, 2) @ q, eye, atol=1e-13)


@given(st.integers(min_value=1, max_value=3), seeds, dtypes)
def test_rank_deficient_has_the_asked_rank(rank, seed, dtype):
    family = RankDeficientFamily(n=6, d=4, rank=rank, cond=10.0)
    p = family.sample(2, generator(seed), dtype)
    s = torch.linalg.svdvals(p.A.double())
    tol = 30 * torch.finfo(dtype).eps * s[:, :1]
    assert ((s > tol).sum(dim=1) == rank).all()
    expected = torch.full((2,), 10.0 if rank > 1 else 1.0, dtype=torch.float64)
    assert torch.allclose(s[:, 0] / s[:, rank - 1], expected,
                          rtol=1e-4 if dtype == torch.float32 else 1e-10)


@given(small_families(consistent=True), seeds)
def test_x_star_is_the_minimum_norm_solution(family, seed):
    """float64: x_star agrees with the mpmath solution to the float64 conditioning bound
    (rank-deficient and under-determined included, so x_star is the *minimum-norm* one)."""
    p = family.sample(2, generator(seed))
    x_ref = lstsq(p.A, p.b, "mpmath", dps=30)
    s = torch.linalg.svdvals(p.A)
    kappa = s[:, 0] / s[:, family.matrix_rank() - 1]
    err = (p.x_star - x_ref).norm(dim=1) / x_ref.norm(dim=1)
    assert (err <= 100 * kappa * torch.finfo(torch.float64).eps).all()


def test_noise_sets_the_residual_level():
    sigma, n, d = 0.1, 12, 3
    p = GaussianFamily(n=n, d=d, noise=sigma).sample(400, generator(1))
    x = torch.linalg.lstsq(p.A, p.b.unsqueeze(-1)).solution.squeeze(-1)
    r2 = (p.b - torch.einsum("bnd,bd->bn", p.A, x)).pow(2).sum(dim=1)
    # E‖r‖² = σ²(n − d) for the least-squares residual of Gaussian noise
    assert abs(float(r2.mean()) / (sigma**2 * (n - d)) - 1) < 0.1


def test_scaling_with_zero_decades_is_the_gaussian_family():
    a = ScaledFamily(n=5, d=3, row_decades=0.0, col_decades=0.0).sample(4, generator(3)).A
    g = GaussianFamily(n=5, d=3).sample(4, generator(3)).A
    assert torch.equal(a, g)


def test_scaling_spreads_row_and_column_norms():
    p = ScaledFamily(n=20, d=5, row_decades=4.0, col_decades=0.0).sample(50, generator(2))
    rows = p.A.norm(dim=2)
    spread = torch.log10(rows.amax(dim=1) / rows.amin(dim=1))
    assert float(spread.median()) > 2.5  # 20 uniform log-scales over 4 decades


def test_heavy_tails_exceed_gaussian_tails():
    big = HeavyTailedFamily(n=20, d=5, df=1).sample(100, generator(4)).A.abs() > 6
    gauss = GaussianFamily(n=20, d=5).sample(100, generator(4)).A.abs() > 6
    # P(|Cauchy| > 6) ≈ 0.105, P(|N(0,1)| > 6) ≈ 2e-9
    assert float(big.double().mean()) > 0.05 and not gauss.any()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_registry_builds_every_family_and_overrides(name):
    family = family_from_name(name, scale=2.0)
    cls, defaults = FAMILIES[name]
    assert isinstance(family, cls) and family.scale == 2.0
    assert all(getattr(family, k) == v for k, v in defaults.items())
    p = family.sample(1, generator(0))
    assert torch.isfinite(p.A).all()


def test_shifted_changes_only_the_named_fields():
    family = SpectrumFamily(cond=5.0)
    ood = family.shifted(n=40, cond=100.0, noise=0.1)
    assert (ood.n, ood.d, ood.cond, ood.noise, ood.spectrum) == (40, 5, 100.0, 0.1, "rescaled")
    assert family.n == 20 and family.cond == 5.0
    assert ood.sample(2, generator(0)).A.shape == (2, 40, 5)


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="unknown family"):
        family_from_name("nope")
    with pytest.raises(TypeError, match="no field"):
        GaussianFamily().shifted(cond=3.0)
    with pytest.raises(ValueError, match="cond"):
        SpectrumFamily(cond=0.5)
    with pytest.raises(ValueError, match="n must"):
        GaussianFamily(n=0)
    with pytest.raises(ValueError, match="noise"):
        GaussianFamily(noise=-1.0)
    with pytest.raises(ValueError, match="scale"):
        GaussianFamily(scale=math.inf)
    with pytest.raises(ValueError, match="singular_values"):
        SpectrumFamily(n=4, d=2, singular_values=(1.0,))
    with pytest.raises(ValueError, match="spectrum"):
        SpectrumFamily(spectrum="cubic")
    with pytest.raises(ValueError, match="rank must"):
        RankDeficientFamily(n=4, d=3, rank=3)
    with pytest.raises(ValueError, match="df"):
        HeavyTailedFamily(df=0)
    with pytest.raises(ValueError, match="row_decades"):
        ScaledFamily(row_decades=-1.0)


def test_bad_sample_arguments_raise():
    family = GaussianFamily(n=3, d=2)
    with pytest.raises(ValueError, match="batch"):
        family.sample(0, generator(0))
    with pytest.raises(TypeError, match="generator"):
        family.sample(2, 0)
    with pytest.raises(TypeError, match="dtype"):
        family.sample(2, generator(0), torch.float16)
    with pytest.raises(TypeError, match="dtype"):
        family.sample(2, generator(0), torch.int64)


def test_problems_validates_its_fields():
    A, b = torch.zeros(2, 3, 2), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="x_star"):
        Problems(A, b, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="b must have shape"):
        Problems(A, torch.zeros(2, 4))
    with pytest.raises(TypeError, match=r"b\.dtype"):
        Problems(A, b.double())
    with pytest.raises(ValueError, match="A contains NaN"):
        Problems(torch.full((2, 3, 2), math.nan), b)
    with pytest.raises(TypeError, match="dtype"):
        Problems(A, b).to(torch.float16)
