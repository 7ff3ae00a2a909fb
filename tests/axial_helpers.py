"""Shared by the shape-general operators' tests: rounding bounds, random problems, a
checker, and the bad inputs every ``(A, b, x) → (r, g)`` model must refuse."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from neuralnum.problems.double_double import error


def gamma(k: int | torch.Tensor, dtype: torch.dtype) -> float | torch.Tensor:
    u = torch.finfo(dtype).eps / 2
    return k * u / (1 - k * u)


def random_problem(seed: int, batch: int, n: int, d: int, dtype: torch.dtype,
                   decades: float = 4.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian ``A``, ``b``, ``x`` with every entry scaled by ``10^U(−decades/2, decades/2)``
    (componentwise bounds must hold across magnitudes)."""
    rng = np.random.default_rng(seed)

    def draw(*shape: int) -> torch.Tensor:
        scale = 10.0 ** (decades * (rng.random(shape) - 0.5))
        return torch.from_numpy(rng.standard_normal(shape) * scale).to(dtype)

    return draw(batch, n, d), draw(batch, n), draw(batch, d)


def assert_within(estimate: torch.Tensor, truth: torch.Tensor | tuple[np.ndarray, np.ndarray],
                  bound: torch.Tensor) -> None:
    """``|estimate − truth| ≤ bound`` componentwise (``truth``: tensor or double-double)."""
    if isinstance(truth, torch.Tensor):
        gap = (estimate.detach().double() - truth.detach().double()).abs().numpy()
    else:
        gap = np.abs(error(estimate.detach(), truth))
    limit = bound.detach().double().numpy()
    worst = np.unravel_index(np.argmax(gap - limit), gap.shape)
    assert np.all(gap <= limit), f"error {gap[worst]:.3e} > bound {limit[worst]:.3e} at {worst}"


def assert_drawn_from_generator(build: Callable[[int], torch.nn.Module]) -> None:
    """``build(seed)`` (a model initialised from a generator seeded ``seed``) leaves the
    global RNG alone, repeats itself for one seed and differs for another."""
    state = torch.get_rng_state()
    first = build(7)
    assert torch.equal(state, torch.get_rng_state())
    for seed, same in ((7, True), (8, False)):
        pairs = zip(first.parameters(), build(seed).parameters(), strict=True)
        assert all(torch.equal(p, q) for p, q in pairs) == same


def _set(t: torch.Tensor, value: float) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[1] = value
    return t


def _bad_inputs() -> dict[str, tuple[tuple, type[Exception], str]]:
    A0, b0, x0 = random_problem(0, 2, 5, 3, torch.float64)
    return {
        "nan in A": ((_set(A0, float("nan")), b0, x0), ValueError, "NaN or Inf"),
        "inf in A": ((_set(A0, float("inf")), b0, x0), ValueError, "NaN or Inf"),
        "nan in b": ((A0, _set(b0, float("nan")), x0), ValueError, "b contains NaN"),
        "inf in x": ((A0, b0, _set(x0, float("-inf"))), ValueError, "x contains NaN"),
        "no rows": ((A0[:, :0], b0[:, :0], x0), ValueError, "A is empty"),
        "no columns": ((A0[:, :, :0], b0, x0[:, :0]), ValueError, "A is empty"),
        "no problems": ((A0[:0], b0[:0], x0[:0]), ValueError, "A is empty"),
        "complex A": ((A0.to(torch.complex128), b0, x0), TypeError, "got torch.complex128"),
        "integer b": ((A0, b0.long(), x0), TypeError, "float32 or torch.float64"),
        "half x": ((A0, b0, x0.half()), TypeError, "float32 or torch.float64"),
        "mixed dtypes": ((A0, b0.float(), x0), TypeError, "differs from A.dtype"),
        "A not 3-d": ((A0[0], b0, x0), ValueError, "A must have 3 dimensions"),
        "b wrong length": ((A0, b0[:, :4], x0), ValueError, "b must have shape"),
        "x wrong batch": ((A0, b0, x0[:1]), ValueError, "x must have shape"),
        "x wrong length": ((A0, b0, x0[:, :2]), ValueError, "x must have shape"),
        "list A": ((A0.tolist(), b0, x0), TypeError, "torch.Tensor"),
    }


#: ``name: ((A, b, x), exception type, message pattern)`` for a batch of 2 problems 5 × 3.
BAD_INPUTS = _bad_inputs()
