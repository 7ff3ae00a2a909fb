"""Hypothesis strategies shared by the least-squares tests (tiny sizes for 2 CPU cores)."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from neuralnum.problems.families import FAMILIES, ProblemFamily, family_from_name

DTYPES = (torch.float32, torch.float64)

dtypes = st.sampled_from(DTYPES)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
batches = st.integers(min_value=1, max_value=3)


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


@st.composite
def small_families(draw: st.DrawFn, consistent: bool = False) -> ProblemFamily:
    """Any registered family at a tiny random size (n, d ≤ 6), well enough conditioned
    for float32 (heavy tails and wide scalings kept moderate)."""
    names = sorted(FAMILIES)
    if consistent:
        names.remove("noisy")
    name = draw(st.sampled_from(names))
    d = draw(st.integers(min_value=2, max_value=4))
    if name == "underdetermined":
        n = draw(st.integers(min_value=1, max_value=d - 1))
    else:
        n = draw(st.integers(min_value=d, max_value=6))
    fields: dict = {"n": n, "d": d}
    if name == "ill_conditioned":
        fields["cond"] = 1e3
    if name == "rank_deficient":
        fields["rank"] = draw(st.integers(min_value=1, max_value=min(n, d) - 1))
    if name == "heavy_tailed":
        fields["df"] = 3
    if name == "scaled":
        fields.update(row_decades=1.0, col_decades=1.0)
    return family_from_name(name, **fields)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
