"""Shared by the axial operator's tests: rounding bounds, random problems, a checker."""

from __future__ import annotations

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
