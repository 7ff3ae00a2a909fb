"""Exact GD constructions: they match ``problems.targets`` to roundoff and iterate to lstsq.

Bound checked (see :func:`neuralnum.models.construct.gd_rounding_bound`): every entry of
the constructed step satisfies ``|x⁺_model − x⁺| ≤ γ_{n+d+3}·s`` with
``s = |x| + η|A|ᵀ(|A||x| + |b|)`` (the problem's scale). The float64 reference computed
by ``GDStep`` obeys the same bound, hence the factor 2 below. With n ≤ 64, d ≤ 16 this
gives a scale-relative error ``‖x⁺_model − x⁺‖∞ / ‖s‖∞ ≤ 2·83·u``: < 2e-14 in float64,
< 1e-5 in float32.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from neuralnum.models import BaseConv, BaseConvConfig
from neuralnum.models.construct import (
    SoftmaxProduct,
    apply_gd_model,
    construct_baseconv_gd,
    construct_linear_attention_gd,
    gd_rounding_bound,
)
from neuralnum.models.tokens import TokenLayout
from neuralnum.problems.families import family_from_name
from neuralnum.problems.reference import lstsq
from neuralnum.problems.targets import GDStep, GDSteps, InverseLipschitzStep, OptimalStep

pytestmark = pytest.mark.usefixtures("single_thread")

DTYPES = [torch.float32, torch.float64]
REL_LIMIT = {torch.float32: 1e-5, torch.float64: 1e-13}

CONSTRUCTIONS = {
    "baseconv": construct_baseconv_gd,
    "linear_attention": construct_linear_attention_gd,
    "linear_attention_noncausal": lambda n, d, eta, dtype: construct_linear_attention_gd(
        n, d, eta, causal=False, dtype=dtype),
}

FAMILIES = st.one_of(
    st.sampled_from([1.0, 10.0, 1e2, 1e4]).map(
        lambda c: ("spectrum", {"cond": c, "spectrum": "geometric"})),
    st.sampled_from(["gaussian", "noisy", "scaled", "heavy_tailed"]).map(lambda f: (f, {})),
)


def _sample(family: tuple[str, dict], n: int, d: int, seed: int, dtype: torch.dtype):
    name, fields = family
    gen = torch.Generator().manual_seed(seed)
    problems = family_from_name(name, n=n, d=d, **fields).sample(3, gen, dtype)
    x = torch.randn(3, d, generator=gen, dtype=torch.float64).to(dtype)
    return problems.A, problems.b, x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CONSTRUCTIONS))
@given(n=st.integers(1, 64), d=st.integers(1, 16), family=FAMILIES,
       seed=st.integers(0, 2**31 - 1))
def test_construction_matches_gd_step(name, dtype, n, d, family, seed):
    A, b, x = _sample(family, n, d, seed, dtype)
    eta = float(InverseLipschitzStep()(A.double()).min())
    model = CONSTRUCTIONS[name](n, d, eta, dtype=dtype)
    got = apply_gd_model(model, A, b, x)
    assert got.dtype == dtype and got.shape == (3, d)
    ref = GDStep(eta)(A.double(), b.double(), x.double())
    err = (got.double() - ref).abs()
    bound = gd_rounding_bound(A, b, x, eta).double()
    assert (err <= 2 * bound).all(), (err / bound).max()
    scale = (x.abs() + eta * torch.einsum("bnd,bn->bd", A.abs(),
             torch.einsum("bnd,bd->bn", A.abs(), x.abs()) + b.abs())).double()
    assert err.amax() / scale.amax() <= REL_LIMIT[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_constructed_step_is_not_trivially_close(dtype):
    """The bound is tight enough to catch a wrong η or a missing product."""
    A, b, x = _sample(("gaussian", {}), 20, 5, 0, dtype)
    model = construct_baseconv_gd(20, 5, 0.01, dtype=dtype)
    wrong = GDStep(0.01 * (1 + 1e-3))(A, b, x)
    assert not torch.allclose(apply_gd_model(model, A, b, x), wrong, rtol=0,
                              atol=float(gd_rounding_bound(A, b, x, 0.01).max()) * 2)


def _iterations(A: torch.Tensor, dtype: torch.dtype) -> tuple[float, int]:
    s = torch.linalg.svdvals(A.double())[0]
    s = s[s > s[0] * 1e-10]
    eta = float(OptimalStep()(A.double())[0])
    rho = float((1 - eta * s**2).abs().max())
    steps = math.ceil(math.log(torch.finfo(dtype).eps / 100) / math.log(rho)) if rho > 0 else 1
    return eta, steps


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CONSTRUCTIONS))
@pytest.mark.parametrize(("n", "d", "cond"), [(20, 5, 3.0), (7, 7, 2.0), (4, 9, 3.0)])
def test_iterated_construction_converges_to_lstsq(name, dtype, n, d, cond):
    gen = torch.Generator().manual_seed(n * 100 + d)
    family = family_from_name("spectrum", n=n, d=d, cond=cond, spectrum="geometric")
    problems = family.sample(1, gen, dtype)
    A, b = problems.A, problems.b
    eta, steps = _iterations(A, dtype)
    model = CONSTRUCTIONS[name](n, d, eta, dtype=dtype)
    x = torch.zeros(1, d, dtype=dtype)
    for _ in range(steps):
        x = apply_gd_model(model, A, b, x)
    x_gd = GDSteps(steps, eta)(A, b)
    x_ls = lstsq(A.double(), b.double())
    u = torch.finfo(dtype).eps / 2
    # GD's attainable accuracy: per-step rounding ~ (n+d)u·scale, amplified by 1/(1−ρ) ~ κ².
    tol = 10 * (n + d) * u * cond**2 * float(x_ls.norm())
    assert float((x.double() - x_ls).norm()) <= tol
    assert float((x_gd.double() - x_ls).norm()) <= tol
    assert float((x - x_gd).norm()) <= tol


def test_noncausal_linear_attention_stacks_steps():
    A, b, x = _sample(("gaussian", {}), 12, 4, 3, torch.float64)
    eta = float(InverseLipschitzStep()(A).min())
    model = construct_linear_attention_gd(12, 4, eta, steps=5, causal=False,
                                          dtype=torch.float64)
    ref = GDSteps(5, eta)(A, b, x)
    torch.testing.assert_close(apply_gd_model(model, A, b, x), ref, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_product_error_scaling(dtype):
    """Truncation ∝ ε² at large ε, rounding ∝ u/ε at small ε; never near u."""
    gen = torch.Generator().manual_seed(0)
    u_in = torch.randn(64, 4, 6, generator=gen, dtype=torch.float64).to(dtype)
    exact = u_in[..., :3].double() * u_in[..., 3:].double()
    errors = {}
    for eps in [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6]:
        y = SoftmaxProduct(3, eps, dtype=dtype)(u_in)
        assert y.shape == (64, 4, 3) and y.dtype == dtype
        errors[eps] = float((y.double() - exact).abs().max())
    # truncation regime: error(ε)/error(ε/10) ≈ 100
    assert 50 < errors[1e-1] / errors[1e-2] < 200
    truncation = float((exact.abs() ** 3).max()) / 12
    assert errors[1e-1] <= 1.1 * truncation * 1e-2
    unit = torch.finfo(dtype).eps / 2
    if dtype == torch.float32:
        # rounding regime: smaller ε makes it worse; the best is far above roundoff
        assert errors[1e-6] > 10 * errors[1e-4] > 10 * errors[1e-3]
        assert min(errors.values()) > 100 * unit * float(exact.abs().max())


# --------------------------------------------------------------------------- bad input
def test_mismatched_problem_size_is_rejected():
    model = construct_baseconv_gd(10, 3, 0.1)
    A, b, x = _sample(("gaussian", {}), 11, 3, 0, torch.float32)
    with pytest.raises(ValueError, match="layout expects"):
        apply_gd_model(model, A, b, x)
    A, b, x = _sample(("gaussian", {}), 10, 4, 0, torch.float32)
    with pytest.raises(ValueError, match="layout expects"):
        apply_gd_model(model, A, b, x)
    with pytest.raises(ValueError, match=r"shape \(B, 10, 13\)"):
        model(torch.zeros(2, 9, 13))
    with pytest.raises(ValueError, match=r"shape \(B, 10, 13\)"):
        model(TokenLayout(10, 3).encode(*_sample(("gaussian", {}), 10, 3, 0, torch.float32)))


def test_malformed_tokens_are_rejected():
    A, b, x = _sample(("gaussian", {}), 6, 2, 0, torch.float64)
    model = construct_baseconv_gd(6, 2, 0.1, dtype=torch.float64)
    tokens = model.layout.encode(A, b, x)
    scratch = tokens.clone()
    scratch[0, 2, -1] = 1.0
    with pytest.raises(ValueError, match="scratch"):
        model(scratch)
    moved = tokens.clone()
    moved[1, 3, model.layout.x_slice] += 1.0
    with pytest.raises(ValueError, match="different iterates"):
        model(moved)
    for bad in (float("nan"), float("inf")):
        broken = tokens.clone()
        broken[0, 0, 0] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            model(broken)
    with pytest.raises(TypeError, match="dtype"):
        model(tokens.float())
    la = construct_linear_attention_gd(6, 2, 0.1)
    with pytest.raises(ValueError, match="NaN or Inf"):
        apply_gd_model(la, A.float(), b.float().fill_(float("nan")), x.float())


def test_bad_construction_arguments():
    with pytest.raises(ValueError, match="eta"):
        construct_baseconv_gd(4, 2, 0.0)
    with pytest.raises(ValueError, match="eta"):
        construct_linear_attention_gd(4, 2, float("nan"))
    with pytest.raises(TypeError, match="eta"):
        construct_baseconv_gd(4, 2, "0.1")
    with pytest.raises(ValueError, match="n must be"):
        construct_baseconv_gd(0, 2, 0.1)
    with pytest.raises(TypeError, match=r"d must be a positive int, got 2\.0"):
        construct_linear_attention_gd(4, 2.0, 0.1)
    with pytest.raises(TypeError, match="dtype"):
        construct_baseconv_gd(4, 2, 0.1, dtype=torch.float16)
    with pytest.raises(ValueError, match="causal=False"):
        construct_linear_attention_gd(4, 2, 0.1, steps=2)
    with pytest.raises(ValueError, match="u must be"):
        SoftmaxProduct(3, 0.1)(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="eps"):
        SoftmaxProduct(3, -1.0)
    with pytest.raises(ValueError, match="no required layout"):
        model = BaseConv(BaseConvConfig(d_model=5, n_layers=1, seq_len=2))
        apply_gd_model(model, *_sample(("gaussian", {}), 2, 2, 0, torch.float32))
