"""Token layout: exact encode/decode round trip, slot placement, clear errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from lsq_strategies import batches, dtypes, generator, seeds, small_families

from neuralnum.models.tokens import TokenLayout


@given(small_families(), batches, seeds, dtypes, st.integers(min_value=0, max_value=4))
def test_encode_decode_round_trips_exactly(family, batch, seed, dtype, extra):
    p = family.sample(batch, generator(seed), dtype)
    x = torch.randn(batch, family.d, generator=generator(seed + 1), dtype=torch.float64)
    x = x.to(dtype)
    layout = TokenLayout(family.n, family.d, 2 * family.d + 1 + extra)
    tokens = layout.encode(p.A, p.b, x)
    assert tokens.shape == (batch, family.n, layout.width) and tokens.dtype == dtype
    A, b, x_read = layout.decode(tokens)
    assert torch.equal(A, p.A) and torch.equal(b, p.b) and torch.equal(x_read, x)
    # slots: x broadcast to every token, scratch channels zero
    assert torch.equal(tokens[..., layout.x_slice], x.unsqueeze(1).expand(-1, family.n, -1))
    assert (tokens[..., layout.scratch_slice] == 0).all()
    assert torch.equal(layout.read_iterate(tokens), x)


@given(small_families(), seeds, dtypes)
def test_default_iterate_is_zero_and_width_is_minimal(family, seed, dtype):
    p = family.sample(2, generator(seed), dtype)
    layout = TokenLayout(family.n, family.d)
    assert layout.width == 2 * family.d + 1
    tokens = layout.encode(p.A, p.b)
    assert (layout.read_iterate(tokens) == 0).all()


def test_iterate_is_read_at_the_last_token_only():
    layout = TokenLayout(3, 2)
    out = torch.zeros(1, 3, 5)
    out[0, :2, layout.x_slice] = 7.0
    out[0, 2, layout.x_slice] = torch.tensor([1.0, 2.0])
    assert layout.read_iterate(out).tolist() == [[1.0, 2.0]]


def test_bad_layouts_and_inputs_raise():
    with pytest.raises(ValueError, match="width"):
        TokenLayout(3, 2, width=4)
    with pytest.raises(ValueError, match="n and d"):
        TokenLayout(0, 2)
    layout = TokenLayout(3, 2)
    A, b = torch.ones(1, 3, 2), torch.ones(1, 3)
    with pytest.raises(ValueError, match="layout expects"):
        TokenLayout(4, 2).encode(torch.ones(1, 3, 2), b)
    with pytest.raises(ValueError, match="b must have shape"):
        layout.encode(A, torch.ones(1, 2))
    with pytest.raises(TypeError, match=r"A\.dtype"):
        layout.encode(A.half(), b.half())
    with pytest.raises(ValueError, match="tokens must have shape"):
        layout.decode(torch.zeros(1, 3, 6))
    with pytest.raises(ValueError, match="tokens contains NaN"):
        layout.decode(torch.full((1, 3, 5), float("nan")))
    with pytest.raises(ValueError, match="outputs is empty"):
        layout.read_iterate(torch.zeros(0, 3, 5))
