"""The last step of training the shape-general operator: its deployed form, refitted.

The solver uses an :class:`~neuralnum.models.axial.AxialOperator` through its canonical
coefficients (:class:`~neuralnum.models.axial.AxialCoefficients`), collapsed in float64
from the factor weights. Two things keep the collapsed coefficients of trained weights
from the exact ones: terms at roundoff level that grow with the shape (zeroed by
:meth:`~neuralnum.models.axial.AxialCoefficients.snapped`), and the collapse's own
rounding, ``u·Σ|weight products|`` per coefficient, which no change of the factor
weights can push the coefficients past — the factored optimiser stalls there, a few
ulps off. :func:`refit_coefficients` takes the snapped coefficients' support as learned
and fits their values directly (Levenberg–Marquardt on the nonzero coefficients, the
relative residuals of both heads on a fixed training set), where nothing rounds between
a parameter and the coefficient it is.
"""

from __future__ import annotations

from typing import Any

import torch

from neuralnum.models.axial import AxialCoefficients
from neuralnum.training.levenberg_marquardt import LevenbergMarquardt, LMSettings
from neuralnum.training.lm_problems import FunctionalProblem
from neuralnum.training.mixed_shapes import Group, relative_residuals

__all__ = ["refit_coefficients"]


def refit_coefficients(start: AxialCoefficients, groups: list[Group], *,
                       iterations: int = 10, settings: LMSettings | None = None
                       ) -> tuple[AxialCoefficients, list[dict[str, Any]]]:
    """The nonzero coefficients of ``start`` (float64) refitted on ``groups`` (problems of
    :mod:`neuralnum.training.mixed_shapes`), the zeros kept; up to ``iterations``
    Levenberg–Marquardt iterations (default settings: one thin SVD of ``J`` per
    iteration), stopping once a step is refused. Returns the coefficients and the
    engine's records (``loss``: the mean squared relative residual)."""
    masks = (start.rows != 0, start.cols != 0)
    # 0/1 placement matrices: a coefficient is one parameter times 1, exactly
    places = [torch.eye(m.numel(), dtype=torch.float64)[:, m.reshape(-1)] for m in masks]

    def table(theta: torch.Tensor) -> AxialCoefficients:
        parts = theta.split([int(m.sum()) for m in masks])
        rows, cols = ((place @ part).reshape(mask.shape) for place, part, mask in
                      zip(places, parts, masks, strict=True))
        return AxialCoefficients(rows, cols)

    def residuals(theta: torch.Tensor) -> torch.Tensor:
        model = table(theta)
        return torch.cat([relative_residuals(model, group).reshape(-1) for group in groups])

    theta = torch.cat([start.rows[masks[0]], start.cols[masks[1]]]).detach()
    engine = LevenbergMarquardt(FunctionalProblem(residuals, forward=True), theta,
                                settings or LMSettings(solver="svd"))
    records = engine.run(iterations)
    return table(engine.theta).detached(), records
