"""MonarchLinear / BlockdiagLinear as drop-in nn.Linear, and sparsify / densify."""

import pytest
import torch
from torch import nn

from structured import BlockdiagLinear, MonarchLinear, MonarchMatrix, densify, project, sparsify

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
LAYERS = [MonarchLinear, BlockdiagLinear]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b).detach() / torch.linalg.norm(b).detach())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize(("n_in", "n_out"), [(16, 16), (8, 32), (32, 8)])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_equals_its_dense_linear(dtype, cls, n_in, n_out, bias):
    torch.manual_seed(0)
    layer = cls(n_in, n_out, 4, bias, dtype=dtype)
    dense = layer.to_dense()
    assert type(dense) is nn.Linear and dense.weight.dtype == dtype
    assert (dense.bias is None) == (not bias)
    x = torch.randn(2, 5, n_in, dtype=dtype)
    y = layer(x)
    assert y.shape == (2, 5, n_out) and y.dtype == dtype
    assert rel(y, dense(x)) < TOL[dtype]


@pytest.mark.parametrize("cls", LAYERS)
def test_init_matches_nn_linear_output_scale(cls):
    torch.manual_seed(1)
    x = torch.randn(4096, 256)
    with torch.no_grad():
        ratios = [float(cls(256, 256, 4)(x).var() / nn.Linear(256, 256)(x).var())
                  for _ in range(3)]
    assert all(0.8 < r < 1.25 for r in ratios), ratios


@pytest.mark.parametrize("cls", LAYERS)
def test_autocast_bfloat16_on_cpu(cls):
    torch.manual_seed(2)
    layer = cls(32, 64, 4)
    x = torch.randn(8, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        assert y.dtype == torch.bfloat16 == nn.Linear(32, 64)(x).dtype
        y.float().square().sum().backward()
    assert rel(y.float(), layer(x).detach()) < 2e-2
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters())


@pytest.mark.parametrize("cls", LAYERS)
def test_gradcheck_float64(cls):
    torch.manual_seed(3)
    layer = cls(8, 4, 2, dtype=torch.float64)
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    params = tuple(layer.parameters())

    def f(x, *ps):
        return torch.func.functional_call(layer, dict(zip(dict(layer.named_parameters()), ps,
                                                          strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *(p.detach().requires_grad_() for p in params)))


@pytest.mark.parametrize("cls", LAYERS)
def test_bad_input_and_config(cls):
    layer = cls(16, 16, 4)
    with pytest.raises(ValueError, match="in_features=16"):
        layer(torch.randn(3, 15))
    with pytest.raises(ValueError, match="nblocks=3"):
        cls(16, 16, 3)
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.randn(3, 16, dtype=torch.float64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_from_dense_projects_and_recovers_monarch_weights(dtype):
    torch.manual_seed(4)
    M = MonarchMatrix.random(32, 16, 4, dtype=dtype)
    linear = nn.Linear(32, 16, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(M.to_dense())
    layer = MonarchLinear.from_dense(linear, nblocks=4)
    assert layer.projection_error < TOL[dtype]
    x = torch.randn(6, 32, dtype=dtype)
    assert rel(layer(x), linear(x)) < TOL[dtype] * 10
    generic = nn.Linear(32, 16, dtype=dtype)
    projected = MonarchLinear.from_dense(generic, nblocks=4)
    expected = project(generic.weight.detach(), 4)
    assert projected.projection_error == pytest.approx(expected.rel_error, rel=1e-6)
    assert rel(projected.to_dense().weight, expected.monarch.to_dense()) < TOL[dtype]
    torch.testing.assert_close(projected.bias, generic.bias)


def _mlp(dtype: torch.dtype) -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(),
                         nn.Sequential(nn.Linear(32, 16), nn.Tanh()), nn.Linear(16, 3)).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparsify_then_densify_round_trip(dtype):
    torch.manual_seed(5)
    model = _mlp(dtype)
    x = torch.randn(7, 16, dtype=dtype)
    seen = []
    out = sparsify(model, 4, filter=lambda name, lin: seen.append(name) or lin.out_features > 3)
    assert out is model and seen == ["0", "2.0", "3"]
    assert [type(m) for m in (model[0], model[2][0], model[3])] == [MonarchLinear,
                                                                      MonarchLinear, nn.Linear]
    assert all(0 < m.projection_error < 1 for m in (model[0], model[2][0]))
    y_sparse = model(x)
    assert densify(model) is model
    assert not any(isinstance(m, MonarchLinear) for m in model.modules())
    assert rel(model(x), y_sparse) < TOL[dtype]


def test_sparsify_names_the_layer_that_does_not_fit_and_handles_root():
    with pytest.raises(ValueError, match=r"'3'.*nblocks=4"):
        sparsify(_mlp(torch.float32), 4)
    root = sparsify(nn.Linear(8, 8), 2)
    assert isinstance(root, MonarchLinear)
    assert isinstance(densify(root), nn.Linear)
    assert isinstance(densify(BlockdiagLinear(8, 8, 2)), nn.Linear)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_blockdiag_no_grad_path_matches_autograd_path_on_strided_input(dtype, bias):
    torch.manual_seed(4)
    layer = BlockdiagLinear(12, 8, 4, bias, dtype=dtype)
    x = torch.randn(3, 5, 24, dtype=dtype)[..., ::2]     # last-dim stride 2: not a view
    y_grad = layer(x)
    assert y_grad.requires_grad
    with torch.no_grad():
        y = layer(x)
    assert y.shape == (3, 5, 8) and y.dtype == dtype and not y.requires_grad
    assert rel(y, y_grad) < TOL[dtype] and rel(y, layer.to_dense()(x)) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("bias", [True, False])
def test_features_first_is_the_transposed_map(dtype, cls, bias):
    torch.manual_seed(5)
    layer = cls(12, 24, 4, bias, dtype=dtype)
    x = torch.randn(7, 12, dtype=dtype)
    y_t = layer.forward_features_first(x.T)                  # x.T: a strided view
    assert y_t.shape == (24, 7) and y_t.dtype == dtype and y_t.is_contiguous()
    assert rel(y_t, layer(x).T) < TOL[dtype]
    y_t.square().sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    layer(x).square().sum().backward()
    assert all(rel(g, p.grad) < TOL[dtype] for g, p in zip(grads, layer.parameters(), strict=True))
    with pytest.raises(ValueError, match="x_t must be \\(12, N\\)"):
        layer.forward_features_first(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.float().forward_features_first(x.float().T).dtype == torch.bfloat16
