"""M2-GPT / M2-BERT / M2-ViT and Transformer baselines: shapes, causality, configs."""

import functools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from neuralnum.models import count_parameters
from structured.models import ARCHS, KINDS, ModelConfig, build_model

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: 1 thread

DTYPES = [torch.float32, torch.float64]
TINY = {"d_model": 16, "n_layers": 2, "n_heads": 2, "seq_len": 16, "filter_order": 8}


def _model(kind, arch, dtype=torch.float64, **changes):
    return build_model(ModelConfig(kind=kind, arch=arch, **{**TINY, **changes}), dtype=dtype,
                       generator=torch.Generator().manual_seed(0))


@functools.cache
def _eval_model(kind, arch, dtype):
    return _model(kind, arch, dtype).eval()


def _inputs(kind, dtype, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "vit":
        return torch.rand(batch, 1, 8, 8, generator=g, dtype=dtype)
    return torch.randint(0, 256, (batch, 16), generator=g)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", KINDS)
def test_output_shapes_and_dtypes(kind, arch, dtype):
    model = _model(kind, arch, dtype)
    logits = model(_inputs(kind, dtype))
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    assert logits.shape == ((2, 10) if kind == "vit" else (2, 16, 256))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHS)
@given(t=st.integers(1, 15), seed=st.integers(0, 2**16))
def test_causal_lm_is_causal_bit_for_bit(arch, dtype, t, seed):
    model = _eval_model("gpt", arch, dtype)
    idx = _inputs("gpt", torch.float64, seed=seed)
    other = idx.clone()
    g = torch.Generator().manual_seed(seed + 1)
    other[:, t:] = torch.randint(0, 256, (2, 16 - t), generator=g)
    with torch.no_grad():
        assert torch.equal(model(idx)[:, :t], model(other)[:, :t])


@pytest.mark.parametrize("arch", ARCHS)
def test_masked_lm_is_bidirectional(arch):
    model = _model("bert", arch)
    idx = _inputs("bert", torch.float64)
    other = idx.clone()
    other[:, -1] = (other[:, -1] + 1) % 256
    with torch.no_grad():
        assert not torch.allclose(model(idx)[:, 0], model(other)[:, 0])


@pytest.mark.parametrize("kind", KINDS)
def test_m2_with_structured_mlp_has_fewer_parameters(kind):
    m2 = count_parameters(_model(kind, "m2"))
    dense_m2 = count_parameters(_model(kind, "m2", dim_mixer="dense"))
    transformer = count_parameters(_model(kind, "transformer"))
    assert m2 < dense_m2 and m2 < transformer


def test_count_parameters_counts_tied_weights_once():
    model = _model("gpt", "m2")
    assert model.head.weight is model.embed.weight
    unique = {id(p): p.numel() for p in model.parameters()}
    assert count_parameters(model) == sum(unique.values())


def test_names():
    assert ModelConfig(kind="vit", arch="m2").name == "M2-ViT"
    assert ModelConfig(kind="bert", arch="transformer").name == "BERT"


@pytest.mark.parametrize(("changes", "match"), [
    ({"kind": "rnn"}, "kind must be"),
    ({"arch": "mamba"}, "arch must be"),
    ({"seq_len": 24}, "power-of-two"),
    ({"kind": "vit", "patch_size": 3}, "divisible by patch_size"),
    ({"arch": "transformer", "n_heads": 3}, "divisible by n_heads"),
    ({"d_model": 0}, "d_model must be a positive int"),
    ({"dim_mixer": "low-rank"}, "dim_mixer"),
    ({"mlp_ratio": 0.0}, "mlp_ratio"),
    ({"d_model": 64, "mlp_ratio": 0.375}, "Monarch GLU"),
])
def test_bad_config_raises(changes, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**changes)


def test_transformer_accepts_any_length():
    assert ModelConfig(arch="transformer", seq_len=24).n_tokens == 24


def test_bad_inputs_raise():
    lm = _model("gpt", "m2")
    with pytest.raises(ValueError, match="int64"):
        lm(torch.zeros(2, 16))
    with pytest.raises(ValueError, match="exceeds seq_len"):
        lm(torch.zeros(2, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="images must be"):
        _model("vit", "m2")(torch.zeros(2, 8, 8, dtype=torch.float64))


@pytest.mark.parametrize("arch", ARCHS)
def test_weights_come_from_the_generator_alone(arch):
    global_state = torch.random.get_rng_state()
    model, same = _model("gpt", arch), _model("gpt", arch)
    other = build_model(ModelConfig(kind="gpt", arch=arch, **TINY), dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.random.get_rng_state(), global_state)  # global RNG untouched
    state = model.state_dict()
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in state.items())
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in state.items())
    assert next(model.parameters()).dtype == torch.float64


def test_transformer_blocks_are_the_shared_softmax_block():
    from neuralnum.models import SoftmaxBlock

    blocks = _model("gpt", "transformer").backbone.blocks
    assert all(type(b) is SoftmaxBlock for b in blocks)
    assert blocks[0].mlp.fc.out_features == ModelConfig(**TINY).mlp_hidden


def test_replace_is_a_validated_copy():
    cfg = ModelConfig(**TINY)
    assert cfg.replace(n_layers=3).n_layers == 3 and cfg.n_layers == 2
    with pytest.raises(ValueError, match="d_model must be a positive int"):
        cfg.replace(d_model=0)
    with pytest.raises(TypeError, match="ModelConfig"):
        build_model(cfg).__class__({"kind": "gpt"})
