"""neuralnum.models.axial_baseconv: the exact construction at torch's own matmul rounding,
the layer as a circular convolution, permutation equivariance, input validation, seeded
initialisation, and a short training run that carries to a shape outside its range.

Rounding (Higham, ``γ_k = k·u/(1 − k·u)``, ``u`` the unit roundoff of the dtype):

* exact construction: ``r`` is one dot product of length ``d + 1`` and ``g = Aᵀ r̂`` one of
  length ``n``, so ``|r̂ − r| ≤ γ_{d+1}(|A||x| + |b|)`` and ``|ĝ − g| ≤ γ_n|Aᵀ||r̂| +
  γ_{d+1}|Aᵀ|(|A||x| + |b|)`` (``r``, ``g`` exact in double-double); normwise, its error
  is also held to a small multiple of torch's own ``A @ x − b``, ``A.mT @ r``.
* any weights: every computed node is its exact value with each term carrying at most
  ``K`` factors ``(1 + δ)``, ``|δ| ≤ u``, so it is within ``γ_K·M`` of the exact value,
  ``M`` the model evaluated on absolute weights and inputs. Per node: the lift ``K₀ = 4``;
  a linear map adds ``width + 1``, the convolution ``L + 1`` (``L`` the summed length), the
  gate's product and the residual sum one each, so a layer maps ``K → 2K + 2·width + L +
  5``; the read-out adds ``width + L + 2``. Two evaluations (a problem and its permutation)
  differ by at most ``2γ_K·M``.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from axial_helpers import (
    BAD_INPUTS,
    assert_drawn_from_generator,
    assert_within,
    gamma,
    random_problem,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st

from neuralnum.core.runtime import make_generator
from neuralnum.core.validation import parse_precision
from neuralnum.models.axial_baseconv import (
    AxialBaseConv,
    AxialBaseConvConfig,
    AxialGatedConv,
    construct_axial_baseconv_gd,
)
from neuralnum.problems.double_double import dd_step, error
from neuralnum.training.mixed_shapes import MixedShapeTask, ShapeMixture, relative_errors

pytestmark = pytest.mark.usefixtures("single_thread")  # small tensors: one thread

DTYPES = (torch.float32, torch.float64)
dtypes = st.sampled_from(DTYPES)
seeds = st.integers(0, 2**32 - 1)
axes_lists = st.lists(st.sampled_from(("row", "column")), min_size=1, max_size=3).map(tuple)


def random_model(seed: int, width: int = 4, axes: tuple[str, ...] = ("row", "column"),
                 ) -> AxialBaseConv:
    return AxialBaseConv(AxialBaseConvConfig(width=width, axes=axes, init_std=0.5),
                         generator=make_generator(seed))


def _wide(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().double() for t in tensors]


def _absolute(module: torch.nn.Module, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """A float64 copy of ``module`` with the absolute values of its weights rounded to
    ``dtype`` (the weights the forward uses on ``dtype`` inputs)."""
    module = copy.deepcopy(module)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(dtype).abs())
    return module


# --------------------------------------------------------------------------- exact weights
def _normwise(estimate: torch.Tensor, truth: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``‖estimate − truth‖`` per problem."""
    return np.linalg.norm(error(estimate.detach(), truth), axis=1)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, n=st.integers(1, 60), d=st.integers(1, 60), batch=st.integers(1, 2),
       dtype=dtypes)
@example(seed=0, n=300, d=20, batch=2, dtype=torch.float32)
@example(seed=1, n=20, d=300, batch=2, dtype=torch.float64)
@example(seed=2, n=1, d=1, batch=1, dtype=torch.float32)
def test_exact_construction_within_matmul_rounding(seed: int, n: int, d: int, batch: int,
                                                   dtype: torch.dtype) -> None:
    A, b, x = random_problem(seed, batch, n, d, dtype)
    r_hat, g_hat = construct_axial_baseconv_gd(dtype)(A, b, x)
    assert r_hat.dtype == g_hat.dtype == dtype
    assert r_hat.shape == (batch, n) and g_hat.shape == (batch, d)
    r_true, g_true = dd_step(A, b, x)
    Aa, ba, xa, ra = (t.abs() for t in _wide(A, b, x, r_hat))
    row_terms = (Aa @ xa[..., None])[..., 0] + ba
    assert_within(r_hat, r_true, gamma(d + 1, dtype) * row_terms)
    g_bound = (gamma(n, dtype) * (Aa.mT @ ra[..., None])[..., 0]
               + gamma(d + 1, dtype) * (Aa.mT @ row_terms[..., None])[..., 0])
    assert_within(g_hat, g_true, g_bound)
    # normwise against torch's own products of the same rounded inputs, plus eps·scale
    r_torch = (A @ x[..., None])[..., 0] - b
    g_torch = (A.mT @ r_torch[..., None])[..., 0]
    eps = torch.finfo(dtype).eps
    for est, own, truth, scale in ((r_hat, r_torch, r_true, row_terms),
                                   (g_hat, g_torch, g_true, Aa.mT @ row_terms[..., None])):
        limit = 4 * (_normwise(own, truth) + eps * scale.flatten(1).norm(dim=1).numpy())
        assert np.all(_normwise(est, truth) <= limit)


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_construction_width_and_frozen_weights(dtype: torch.dtype) -> None:
    model = construct_axial_baseconv_gd(dtype)
    assert model.config.width == 5 and len(model.layers) == 3
    assert all(p.dtype == dtype and not p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------- the layer
def _circular(layer: AxialGatedConv, v: torch.Tensor) -> torch.Tensor:
    """The circular convolution of ``v: (B, n, d, width)`` along ``layer.axis`` with the
    filter ``h_c = α_c·δ + β_c·1`` of every channel, through its circulant matrix."""
    dim = 2 if layer.axis == "row" else 1
    steps = torch.arange(v.shape[dim])
    filters = layer.alpha.detach()[:, None] * (steps == 0) + layer.beta.detach()[:, None]
    circulant = filters[:, (steps[:, None] - steps[None, :]) % len(steps)]  # h[(k − m) mod L]
    out = torch.einsum("ckm,...cm->...ck", circulant, v.movedim(dim, -1))
    return out.movedim(-1, dim)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, n=st.integers(1, 12), d=st.integers(1, 12),
       axis=st.sampled_from(("row", "column")))
def test_layer_is_the_circular_convolution_with_filter_delta_plus_ones(
        seed: int, n: int, d: int, axis: str) -> None:
    layer = random_model(seed % 1000, axes=(axis,)).layers[0]
    v = torch.randn(2, n, d, 4, generator=make_generator(seed % 1000), dtype=torch.float64)
    reference = _circular(layer, v)
    bound = 2 * gamma(max(n, d) + 2, torch.float64) * _circular(_absolute(layer), v.abs())
    assert_within(layer.convolution(v), reference, bound)


@pytest.mark.parametrize("length", range(1, 8))
def test_the_permutation_equivariant_circular_filters_are_delta_and_ones(length: int) -> None:
    """The filters ``h`` whose circulant commutes with a transposition and a cycle (which
    generate every permutation) form the span of ``δ`` and ``1``: the docstring's claim."""
    steps = torch.arange(length)
    basis = torch.eye(length, dtype=torch.float64)
    circulants = basis[:, (steps[:, None] - steps[None, :]) % length]  # (L, L, L), linear in h
    swap, cycle = steps.clone(), steps.roll(1)
    swap[:2] = swap[:2].flip(0)
    constraints = torch.cat([(c[:, perm][:, :, perm] - c).reshape(length, -1)
                             for c, perm in ((circulants, swap), (circulants, cycle))], 1)
    null = length - torch.linalg.matrix_rank(constraints.T)
    assert null == min(length, 2)
    for h in (basis[0], torch.ones(length, dtype=torch.float64)):
        assert not (h @ constraints).any()


def test_read_outs_are_axis_sums_of_the_lifted_entries_plus_own_features() -> None:
    """With every gate zero the layers are the identity, and the outputs are
    ``r_i = Σ_j w_rᵀ E f_ij + p_r·[b_i, 1]`` and ``g_j = Σ_i w_gᵀ E f_ij + p_g·[x_j, 1]``
    with ``f_ij = [a_ij, b_i, x_j, 1]``, written out here with einsum."""
    model = random_model(3, width=3)
    A, b, x = random_problem(5, 2, 4, 3, torch.float64, decades=0.0)
    with torch.no_grad():
        for layer in model.layers:
            layer.gate.zero_()
            layer.gate_bias.zero_()
        r, g = model(A, b, x)
        features = torch.broadcast_tensors(A, b[:, :, None], x[:, None, :], torch.ones(()))
        entries = torch.einsum("fbij,cf->bijc", torch.stack(features), model.lift)
        r_ref = torch.einsum("bijc,c->bi", entries, model.read_rows) + torch.einsum(
            "bif,f->bi", torch.stack([b, torch.ones_like(b)], 2), model.skip_rows)
        g_ref = torch.einsum("bijc,c->bj", entries, model.read_cols) + torch.einsum(
            "bjf,f->bj", torch.stack([x, torch.ones_like(x)], 2), model.skip_cols)
    torch.testing.assert_close(r, r_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- equivariance
def _permuted(model: AxialBaseConv, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor,
              rows: torch.Tensor, cols: torch.Tensor,
              ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """``(r, g)`` of the problem and ``(r[π]⁻¹, g[σ]⁻¹)`` of its row/column permutation."""
    with torch.no_grad():
        base = model(A, b, x)
        r_p, g_p = model(A[:, rows][:, :, cols], b[:, rows], x[:, cols])
    return base, (r_p[:, rows.argsort()], g_p[:, cols.argsort()])


def _integer_problem(seed: int, n: int, d: int, dtype: torch.dtype,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = make_generator(seed)
    return tuple(torch.randint(-2, 3, shape, generator=gen).to(dtype)
                 for shape in ((2, n, d), (2, n), (2, d)))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 8), d=st.integers(1, 8), dtype=dtypes,
       axes=st.lists(st.sampled_from(("row", "column")), min_size=1, max_size=2).map(tuple),
       exact_weights=st.booleans())
def test_equivariance_bitwise_on_integer_inputs(seed: int, n: int, d: int, dtype: torch.dtype,
                                                axes: tuple[str, ...],
                                                exact_weights: bool) -> None:
    """Integer inputs, and the exact construction or weights in {−1, 0, 1} (at most two
    layers, float64: every value stays an integer far below 2⁵³): every sum is exact, so a
    permuted problem gives bitwise-permuted outputs."""
    gen = make_generator(seed)
    if exact_weights:
        model = construct_axial_baseconv_gd(dtype)
    else:
        model, dtype = random_model(0, axes=axes), torch.float64
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randint(-1, 2, p.shape, generator=gen))
    A, b, x = _integer_problem(seed, n, d, dtype)
    rows, cols = torch.randperm(n, generator=gen), torch.randperm(d, generator=gen)
    (r, g), (r_back, g_back) = _permuted(model, A, b, x, rows, cols)
    assert torch.equal(r, r_back) and torch.equal(g, g_back)


def evaluation_bound(model: AxialBaseConv, A: torch.Tensor, b: torch.Tensor,
                     x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``2γ_K·M`` for ``r`` and ``g`` (module docstring): bounds on ``|r₁ − r₂|``,
    ``|g₁ − g₂|`` between two evaluations of ``model`` on ``A, b, x``'s dtype."""
    width, length = model.config.width, max(A.shape[1:])
    k = 4
    for _ in model.layers:
        k = 2 * k + 2 * width + length + 5
    k += width + length + 2
    with torch.no_grad():
        bounds = _absolute(model, A.dtype)(*(t.abs() for t in _wide(A, b, x)))
    return tuple(2.01 * gamma(k, A.dtype) * m for m in bounds)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, n=st.integers(1, 60), d=st.integers(1, 60), dtype=dtypes, axes=axes_lists)
def test_equivariance_within_rounding(seed: int, n: int, d: int, dtype: torch.dtype,
                                      axes: tuple[str, ...]) -> None:
    gen = make_generator(seed)
    model = random_model(seed % 1000, axes=axes)
    A, b, x = random_problem(seed, 2, n, d, dtype, decades=2.0)
    rows, cols = torch.randperm(n, generator=gen), torch.randperm(d, generator=gen)
    (r, g), (r_back, g_back) = _permuted(model, A, b, x, rows, cols)
    assert r.dtype == g.dtype == dtype
    bound_r, bound_g = evaluation_bound(model, A, b, x)
    assert_within(r_back, r, bound_r)
    assert_within(g_back, g, bound_g)


def test_gradients_flow_to_every_parameter() -> None:
    model = AxialBaseConv(AxialBaseConvConfig(axes=("row", "column", "row")))
    A, b, x = random_problem(0, 2, 6, 3, torch.float64, decades=0.0)
    r, g = model(A, b, x)
    (r.sum() + g.sum()).backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())


# --------------------------------------------------------------------------- initialisation
def test_init_draws_only_from_the_given_generator() -> None:
    assert_drawn_from_generator(random_model)


@pytest.mark.parametrize("dtype", DTYPES)
def test_parameter_dtype_and_count(dtype: torch.dtype) -> None:
    config = AxialBaseConvConfig(width=6, axes=("row", "column", "column", "row"))
    model = AxialBaseConv(config, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    width, layers = 6, 4
    assert sum(p.numel() for p in model.parameters()) == (
        layers * (2 * width**2 + 4 * width) + 6 * width + 4)


def test_float64_weights_evaluate_float32_problems() -> None:
    A, b, x = random_problem(4, 2, 7, 3, torch.float32, decades=0.0)
    r, g = construct_axial_baseconv_gd(torch.float64)(A, b, x)
    r32, g32 = construct_axial_baseconv_gd(torch.float32)(A, b, x)
    assert r.dtype == g.dtype == torch.float32
    assert torch.equal(r, r32) and torch.equal(g, g32)


# --------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise(case: str) -> None:
    args, kind, message = BAD_INPUTS[case]
    with pytest.raises(kind, match=message):
        construct_axial_baseconv_gd()(*args)


def test_overflowing_activations_raise() -> None:
    A, b, x = random_problem(0, 2, 5, 3, torch.float32)
    with pytest.raises(ValueError, match="contains NaN or Inf: the entry activations overflowed"):
        construct_axial_baseconv_gd(torch.float32)(A * 1e20, b, x)


BAD_CONFIGS = [({"width": 0}, ValueError), ({"width": 2.0}, TypeError),
               ({"width": True}, TypeError), ({"axes": ()}, ValueError),
               ({"axes": ["row"]}, TypeError), ({"axes": "row"}, TypeError),
               ({"axes": ("row", "diagonal")}, ValueError), ({"init_std": 0.0}, ValueError),
               ({"init_std": math.nan}, ValueError), ({"init_std": math.inf}, ValueError)]


@pytest.mark.parametrize(("fields", "kind"), BAD_CONFIGS)
def test_bad_config_raises(fields: dict[str, object], kind: type[Exception]) -> None:
    with pytest.raises(kind, match=next(iter(fields))):
        AxialBaseConvConfig(**fields)
    with pytest.raises(TypeError, match="must be an AxialBaseConvConfig"):
        AxialBaseConv(fields)  # a mapping is not a config


def test_bad_parameter_dtype_raises() -> None:
    with pytest.raises(TypeError, match=r"float32 or torch\.float64"):
        AxialBaseConv(AxialBaseConvConfig(), dtype=torch.float16)


# --------------------------------------------------------------------------- training
def test_short_training_lowers_the_error_and_carries_to_a_larger_shape() -> None:
    """500 Adam steps (about 5 s) from a random init on Gaussian problems, ``n ∈ [1, 16]``,
    ``d ∈ [1, 6]``: the held-out median of ``√(‖r̂ − r‖²/‖r‖² + ‖ĝ − g‖²/‖g‖²)`` falls from
    1.45 to 0.055 (asserted: more than 10× lower), and the same weights give 0.10 at
    ``(40, 10)``, outside the training range (asserted: within 5× the held-out error)."""
    model = AxialBaseConv(AxialBaseConvConfig(), generator=make_generator(0))
    learner = SimpleNamespace(net=model, dtype=torch.float64, device=torch.device("cpu"),
                              precision=parse_precision("float64"))
    mixture = ShapeMixture(n_max=16, d_max=6, families=("gaussian",), group=16, decades=0.0)
    task = MixedShapeTask(learner, mixture, seed=0, eval_batch=128)
    A, b, x = mixture.problems(make_generator(2), 64, 40, 10, "gaussian", decades=0.0)
    far = [(A, b, x, *(torch.from_numpy(t) for pair in dd_step(A, b, x) for t in pair))]

    def median_error(groups: list[tuple[torch.Tensor, ...]]) -> float:
        with torch.no_grad():
            return float(torch.cat([relative_errors(model, g) for g in groups]).sqrt().median())

    before = median_error(task.held_out)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, 500)
    gen = make_generator(1)
    for _ in range(500):
        loss = task.loss(model, task.sample(32, gen))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    after = median_error(task.held_out)
    assert after < before / 10
    assert median_error(far) < 5 * after
