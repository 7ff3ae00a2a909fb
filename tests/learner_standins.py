"""Tiny stand-ins for tests: a Gaussian problem family and a one-parameter-per-channel
model whose family contains the exact scaled gradient ``Aᵀ(Ax − b)/n``."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

from neuralnum.models.tokens import TokenLayout


class Problems(NamedTuple):
    A: torch.Tensor
    b: torch.Tensor
    x_star: torch.Tensor


class Gaussian:
    """``A ~ N(0, 1)``, ``x* ~ N(0, I)``, ``b = A x*``."""

    def __init__(self, n: int = 8, d: int = 2):
        self.n, self.d = n, d

    def sample(self, batch: int, generator: torch.Generator, dtype: torch.dtype) -> Problems:
        A = torch.randn(batch, self.n, self.d, generator=generator, dtype=dtype)
        x = torch.randn(batch, self.d, generator=generator, dtype=dtype)
        return Problems(A, torch.einsum("bnd,bd->bn", A, x), x)


class ScaledGradient(torch.nn.Module):
    """Writes ``x − (w ⊙ mean_i a_i(a_iᵀx − b_i) + c)`` into the x slot of every token
    (``increment=True``: only the change, ``−(w ⊙ … + c)``, as a token model does)."""

    def __init__(self, n: int, d: int, init: float = 0.5):
        super().__init__()
        self.layout = TokenLayout(n, d)
        self.w = torch.nn.Parameter(torch.full((d,), init))
        self.c = torch.nn.Parameter(torch.zeros(d))

    def forward(self, tokens: torch.Tensor, *, increment: bool = False) -> torch.Tensor:
        a = tokens[..., self.layout.a_slice]
        b = tokens[..., self.layout.b_index]
        x = tokens[:, :1, self.layout.x_slice]
        r = (a * x).sum(-1) - b
        g = (a * r.unsqueeze(-1)).mean(dim=1, keepdim=True) * self.w + self.c
        out = torch.zeros_like(tokens) if increment else tokens.clone()
        out[..., self.layout.x_slice] = (-g if increment else x - g).expand(
            -1, tokens.shape[1], -1)
        return out


@pytest.fixture(autouse=True)
def one_thread():
    """Run on one intra-op thread: on a shared 2-core machine, multi-threaded kernels
    spin-wait on busy cores and run orders of magnitude slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
