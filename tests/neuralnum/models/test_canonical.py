"""Canonical (interpolative) query/key factors: the same function, rounding like residuals."""

from __future__ import annotations

import warnings

import pytest
import torch

from neuralnum.core.runtime import make_generator
from neuralnum.models import LinearAttention, LinearAttentionConfig, build_model
from neuralnum.models.canonical import canonicalize_attention, interpolative_factors
from neuralnum.models.tokens import TokenLayout
from neuralnum.problems import reference
from neuralnum.problems.families import family_from_name
from neuralnum.solvers.learner import Learner
from neuralnum.training.recipe import Recipe

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_interpolative_factors_reproduce_a_low_rank_form(rank):
    gen = torch.Generator().manual_seed(rank)
    S = (torch.randn(9, rank, generator=gen, dtype=torch.float64)
         @ torch.randn(rank, 9, generator=gen, dtype=torch.float64))
    T, S_I = interpolative_factors(S, 5)
    torch.testing.assert_close(T @ S_I, S, rtol=0, atol=1e-13 * S.abs().max())
    pivots = [int(i) for i in (S_I[:, None, :] == S[None]).all(-1).nonzero()[:, 1]]
    assert torch.equal(T[pivots], torch.eye(5, dtype=torch.float64))


@pytest.mark.parametrize("width", [None, 12])   # the layers on the tokens, or lifted
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_canonical_heads_compute_the_same_function(dtype, width):
    layout = TokenLayout(6, 3)
    config = LinearAttentionConfig(d_model=layout.width, n_layers=2, seq_len=6, n_heads=2,
                                   head_dim=4, width=width)
    model = build_model(config, dtype=dtype, generator=make_generator(3))
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(4, 6, 3, generator=gen, dtype=torch.float64)
    b, x = torch.randn(4, 6, generator=gen, dtype=torch.float64), torch.randn(4, 3,
                                                                              generator=gen)
    tokens = layout.encode(A, b, x.double()).to(dtype)
    before = model(tokens, increment=True)
    assert canonicalize_attention(model, layout) == 4
    rel = ((model(tokens, increment=True) - before).norm() / before.norm()).item()
    assert rel < 1e3 * torch.finfo(dtype).eps


def test_only_linear_attention_is_canonicalized():
    with pytest.raises(TypeError, match="LinearAttention"):
        canonicalize_attention(torch.nn.Linear(3, 3))
    model = LinearAttention(LinearAttentionConfig(d_model=7, n_layers=1, seq_len=4))
    with pytest.raises(ValueError, match="width"):
        canonicalize_attention(model, TokenLayout(4, 2))


def _rotate_queries_and_keys(learner: Learner) -> None:
    """An exact symmetry: q → G q, k → G k with G orthogonal (G⁻ᵀ = G)."""
    layer = learner.model.layers[0]
    gen = torch.Generator().manual_seed(11)
    G = torch.linalg.qr(torch.randn(layer.head_dim, layer.head_dim, generator=gen,
                                    dtype=torch.float64))[0]
    with torch.no_grad():
        for linear in (layer.q, layer.k):
            linear.weight.copy_(G @ linear.weight)
            linear.bias.copy_(G @ linear.bias)


def _digits(learner: Learner, P, x_ref) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = learner.solve(P.A, P.b)
    return float(reference.digits(x, x_ref).median())


def test_solves_run_in_the_canonical_gauge_and_lose_no_digits_to_a_rotation(monkeypatch):
    P = family_from_name("ill_conditioned", n=20, d=5).sample(96, make_generator(7),
                                                              torch.float64)
    x_ref = reference.lstsq(P.A, P.b, method="mpmath")
    construction = Learner("linear_attention", "gd", Recipe(), n=20, d=5).init_construction()
    rotated = Learner("linear_attention", "gd", Recipe(), n=20, d=5).init_construction()
    _rotate_queries_and_keys(rotated)
    exact = _digits(construction, P, x_ref)
    assert _digits(rotated, P, x_ref) > exact - 0.15
    # the planted bug, solving through the rotated network as it is: what a gauge costs
    monkeypatch.setattr(rotated, "solver_forward", lambda: rotated._raw_forward)
    assert _digits(rotated, P, x_ref) < exact - 0.2


def test_the_canonical_copy_follows_the_weights():
    learner = Learner("linear_attention", "gd", Recipe(), n=8, d=2).init_construction()
    P = family_from_name("spectrum", n=8, d=2).sample(4, make_generator(1), torch.float64)
    x = torch.zeros(4, 2, dtype=torch.float64)
    first = learner.solver_forward()
    assert first.keywords["net"] is learner.solver_forward().keywords["net"]  # kept
    with torch.no_grad():
        learner.model.layers[0].k.weight.mul_(1.5)   # trained further: a new function
    torch.testing.assert_close(learner.solver_forward()(P.A, P.b, x),
                               learner.forward(P.A, P.b, x), rtol=1e-12, atol=1e-14)
    assert not torch.allclose(first(P.A, P.b, x), learner.forward(P.A, P.b, x))
    learner.net.to(torch.float32)   # moved (here: cast): the copy is rebuilt, no clash
    assert learner.solver_forward().keywords["net"].model.layers[0].q.weight.dtype == \
        torch.float32
