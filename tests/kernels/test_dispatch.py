"""Backend choice: reference on CPU by default, Triton when forced or on CUDA tensors."""

import importlib

import pytest
import torch

import kernels
from kernels import current_backend, env_backend, use_backend
from kernels.dispatch import use_triton


def test_triton_modules_run_interpreted():
    from kernels import _triton_common, monarch_triton

    assert _triton_common.INTERPRETED
    assert type(monarch_triton._fused_two_stage_kernel.fn).__name__ == "InterpretedFunction"


def _spy(monkeypatch, module, name):
    """Replace ``module.name`` by a wrapper recording its calls."""
    calls = []
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def _monarch_args():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(3, 8, generator=g), torch.randn(2, 4, 4, generator=g),
            torch.randn(4, 2, 2, generator=g))


def _conv_args():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 2, 256, generator=g), torch.randn(2, 256, generator=g)


# (public dispatcher, Triton module, its entry point, arguments)
CASES = {
    "monarch": ("monarch_matmul", "monarch_triton", "monarch_matmul_triton", _monarch_args),
    "long_conv": ("long_conv", "long_conv_triton", "long_conv_triton", _conv_args),
}


def _run(monkeypatch, case, **kwargs):
    public, module, entry, make_args = CASES[case]
    calls = _spy(monkeypatch, importlib.import_module(f"kernels.{module}"), entry)
    return calls, lambda: getattr(kernels, public)(*make_args(), **kwargs)


@pytest.mark.parametrize("case", CASES)
def test_auto_on_cpu_runs_reference(monkeypatch, case):
    calls, call = _run(monkeypatch, case)
    monkeypatch.setenv("NEURALNUM_KERNELS", "triton")  # read only at the CLI edge
    assert current_backend() == "auto" and not use_triton(torch.zeros(1))
    call()
    assert calls == []


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("how", ["argument", "context", "env"])
def test_override_runs_triton(monkeypatch, how, case):
    calls, call = _run(monkeypatch, case, **({"backend": "triton"} if how == "argument" else {}))
    if how == "argument":
        call()
    else:
        backend = env_backend({"NEURALNUM_KERNELS": "triton"}) if how == "env" else "triton"
        with use_backend(backend):
            call()
    assert calls == [CASES[case][2]]
    assert current_backend() == "auto"  # the context is restored


@pytest.mark.parametrize("case", CASES)
def test_argument_beats_context(monkeypatch, case):
    calls, call = _run(monkeypatch, case, backend="reference")
    with use_backend("triton"):
        assert current_backend() == "triton" and current_backend("reference") == "reference"
        call()
    assert calls == []


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="backend"), use_backend("cuda"):
        pass
    with pytest.raises(ValueError, match="backend"):
        env_backend({"NEURALNUM_KERNELS": "fast"})
    with pytest.raises(ValueError, match="backend"):
        kernels.long_conv(*_conv_args(), backend="fast")
    assert env_backend({}) == "auto"


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_feature_major_monarch_on_every_backend(backend):
    """``feature_major=True`` gives the same values as the ``.T`` of a contiguous tensor,
    on the reference path and after the Triton kernel."""
    x, R, L = _monarch_args()
    x = x[:, None].expand(3, 5, -1)                          # batch (3, 5): 15 rows
    y = kernels.monarch_matmul(x, R, L, backend=backend)
    y_fm = kernels.monarch_matmul(x, R, L, backend=backend, feature_major=True)
    assert y.is_contiguous() and y_fm.shape == y.shape == (3, 5, 8)
    assert y_fm.reshape(15, 8).T.is_contiguous()
    torch.testing.assert_close(y_fm, y, rtol=1e-5, atol=1e-5)
