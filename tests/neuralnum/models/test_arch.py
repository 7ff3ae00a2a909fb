"""Architectures: shapes, dtypes, causality, convolution paths, registry and bad input."""

from __future__ import annotations

import pytest
import torch

from neuralnum.models import (
    BaseConv,
    BaseConvConfig,
    LinearAttention,
    LinearAttentionConfig,
    arch_config,
    build_model,
    count_parameters,
)
from neuralnum.models.registry import REGISTRY

pytestmark = pytest.mark.usefixtures("single_thread")

DTYPES = [torch.float32, torch.float64]
OPTIONS = {
    "baseconv": [{}, {"width": 12}, {"short_conv": 3}, {"init": "delta_sum"}],
    "linear_attention": [{}, {"width": 12, "n_heads": 3}, {"mlp": True}],
    "transformer": [{}, {"width": 12, "n_heads": 2}],
}
CASES = [(name, opts) for name, options in OPTIONS.items() for opts in options]


def _build(name, d_model, n_layers, seq_len, dtype=torch.float32, seed=0, **opts):
    config = arch_config(name, d_model=d_model, n_layers=n_layers, seq_len=seq_len, **opts)
    return build_model(config, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _tokens(batch: int, length: int, width: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, width, generator=gen, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "opts"), CASES)
def test_shapes_dtypes_and_gradients(name, opts, dtype):
    model = _build(name, 7, 2, 9, dtype, **opts)
    assert isinstance(model, REGISTRY[name].model)
    tokens = _tokens(3, 9, 7, dtype).requires_grad_(True)
    out = model(tokens)
    assert out.shape == (3, 9, 7) and out.dtype == dtype
    out.square().sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize(("name", "opts"), CASES)
def test_the_increment_is_the_output_minus_the_tokens(name, opts):
    model = _build(name, 7, 3, 9, torch.float64, seed=2, **opts)
    tokens = _tokens(3, 9, 7, torch.float64)
    delta = model(tokens, increment=True)
    torch.testing.assert_close(delta, model(tokens) - tokens, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("name", "opts"), CASES)
def test_causal_models_ignore_the_future(name, opts, dtype):
    model = _build(name, 5, 2, 8, dtype, seed=1, **opts)
    tokens = _tokens(2, 8, 5, dtype)
    changed = tokens.clone()
    changed[:, 5:] += 1.0
    out, out_changed = model(tokens), model(changed)
    assert torch.equal(out[:, :5], out_changed[:, :5])
    assert not torch.allclose(out[:, 5:], out_changed[:, 5:])
    # a prefix gives the prefix of the outputs (shorter sequences are allowed)
    torch.testing.assert_close(model(tokens[:, :4]), out[:, :4])


@pytest.mark.parametrize("dtype", DTYPES)
def test_noncausal_linear_attention_sees_everything(dtype):
    config = LinearAttentionConfig(d_model=5, n_layers=1, seq_len=6)
    causal = LinearAttention(config, dtype=dtype, generator=torch.Generator().manual_seed(2))
    full = LinearAttention(config.replace(causal=False), dtype=dtype)
    full.load_state_dict(causal.state_dict())
    tokens = _tokens(2, 6, 5, dtype)
    changed = tokens.clone()
    changed[:, -1] += 1.0
    assert not torch.allclose(full(tokens)[:, 0], full(changed)[:, 0])
    # at the last position both orders of summation compute the same polynomial
    tol = 100 * torch.finfo(dtype).eps
    torch.testing.assert_close(full(tokens)[:, -1], causal(tokens)[:, -1], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_transformer_noncausal_sees_everything(dtype):
    model = _build("transformer", 5, 1, 6, dtype, seed=3, causal=False)
    tokens = _tokens(2, 6, 5, dtype)
    changed = tokens.clone()
    changed[:, -1] += 1.0
    assert not torch.allclose(model(tokens)[:, 0], model(changed)[:, 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_fft_and_direct_convolutions_agree(dtype):
    config = BaseConvConfig(d_model=4, n_layers=2, seq_len=40, conv_mode="direct")
    direct = BaseConv(config, dtype=dtype, generator=torch.Generator().manual_seed(4))
    fft = BaseConv(config.replace(conv_mode="fft"), dtype=dtype)
    auto = BaseConv(config.replace(conv_mode="auto", fft_threshold=16), dtype=dtype)
    fft.load_state_dict(direct.state_dict())
    auto.load_state_dict(direct.state_dict())
    tokens = _tokens(2, 40, 4, dtype)
    tol = 1e3 * torch.finfo(dtype).eps
    torch.testing.assert_close(fft(tokens), direct(tokens), rtol=tol, atol=tol)
    torch.testing.assert_close(auto(tokens), direct(tokens), rtol=tol, atol=tol)


def test_polynomial_models_are_polynomials():
    """Without MLP, scaling the input by c scales BaseConv's added term by a polynomial
    in c: a 1-layer BaseConv without biases is exactly homogeneous of degree 2."""
    model = _build("baseconv", 4, 1, 5, torch.float64, seed=5)
    with torch.no_grad():
        model.layers[0].gate.bias.zero_()
    tokens = _tokens(2, 5, 4, torch.float64)
    delta = model(tokens) - tokens
    torch.testing.assert_close(model(3 * tokens) - 3 * tokens, 9 * delta, rtol=1e-13,
                               atol=1e-13)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_weights_come_from_the_generator_alone(name):
    global_state = torch.random.get_rng_state()
    same, other = _build(name, 5, 1, 6, seed=7), _build(name, 5, 1, 6, seed=8)
    model = _build(name, 5, 1, 6, seed=7)
    assert torch.equal(torch.random.get_rng_state(), global_state)  # global RNG untouched
    assert model.dtype == torch.float32 and model.config.replace() == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(value, same.state_dict()[key])
    assert any(not torch.equal(v, other.state_dict()[k]) for k, v in model.state_dict().items())
    gen = torch.Generator().manual_seed(7)  # the generator advances: a second draw differs
    first, second = (build_model(model.config, generator=gen) for _ in range(2))
    assert all(torch.equal(v, first.state_dict()[k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())


def test_build_model_rejects_other_configs():
    with pytest.raises(TypeError, match="config must be one of"):
        build_model({"d_model": 5})
    with pytest.raises(TypeError, match=r"CPU torch\.Generator"):
        BaseConv(BaseConvConfig(d_model=5, n_layers=1, seq_len=6), generator=7)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_bad_tokens_are_rejected(name):
    model = _build(name, 5, 1, 6)
    with pytest.raises(TypeError, match=r"tokens must be a torch\.Tensor"):
        model([[0.0] * 5] * 6)
    with pytest.raises(ValueError, match="tokens must have 3 dimensions"):
        model(torch.zeros(6, 5))
    with pytest.raises(TypeError, match=r"tokens\.dtype"):
        model(torch.zeros(1, 6, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"tokens\.dtype"):
        model(torch.zeros(1, 6, 5, dtype=torch.float16))
    with pytest.raises(ValueError, match="d_model=5"):
        model(torch.zeros(1, 6, 4))
    with pytest.raises(ValueError, match="seq_len=6"):
        model(torch.zeros(1, 7, 5))
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(0, 6, 5))
    bad = torch.zeros(1, 6, 5)
    bad[0, 3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        model(bad)


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="unknown architecture"):
        _build("mamba", 5, 1, 6)
    with pytest.raises(ValueError, match="n_layers must be a positive int, got 0"):
        _build("baseconv", 5, 0, 6)
    with pytest.raises(TypeError, match=r"d_model must be a positive int, got 5\.0"):
        _build("baseconv", 5.0, 1, 6)
    with pytest.raises(ValueError, match="seq_len must be a positive int"):
        _build("linear_attention", 5, 1, 0)
    with pytest.raises(TypeError, match="dtype"):
        _build("transformer", 5, 1, 6, torch.float16)
    with pytest.raises(ValueError, match="divisible"):
        _build("transformer", 5, 1, 6, n_heads=2)
    with pytest.raises(ValueError, match="divisible"):
        _build("linear_attention", 5, 1, 6, n_heads=2)
    with pytest.raises(ValueError, match="conv_mode"):
        _build("baseconv", 5, 1, 6, conv_mode="spectral")
    with pytest.raises(ValueError, match="short_conv"):
        _build("baseconv", 5, 1, 6, short_conv=-1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        _build("baseconv", 5, 1, 6, n_heads=2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_baseconv_delta_sum_init(dtype):
    config = BaseConvConfig(d_model=7, n_layers=3, seq_len=9, init="delta_sum")
    model = BaseConv(config, dtype=dtype)
    *local, last = model.layers
    delta = torch.zeros(9, dtype=dtype)
    delta[0] = 1
    for layer in model.layers:
        assert (layer.gate.weight == 0).all() and (layer.gate.bias != 0).all()
        assert (layer.proj.weight != 0).all()
    for layer in local:  # position-wise: a delta plus small noise
        assert (layer.filter - delta).abs().max() < 0.1
    assert (last.filter - 1 / 9).abs().max() < 0.1  # the causal mean
    assert last.filter.std(dim=1).min() > 0  # noise breaks the symmetry
    with pytest.raises(ValueError, match="init"):
        config.replace(init="zeros")
