"""Problems and ground truth: least-squares problem families (:mod:`.families`), the
reference solutions and error metrics they are judged by (:mod:`.reference`), and the
gradient-descent iterates models learn (:mod:`.targets`)."""

from neuralnum.problems.families import (
    FAMILIES,
    GaussianFamily,
    HeavyTailedFamily,
    ProblemFamily,
    Problems,
    RankDeficientFamily,
    ScaledFamily,
    SpectrumFamily,
    family_from_name,
)

__all__ = ["FAMILIES", "GaussianFamily", "HeavyTailedFamily", "ProblemFamily", "Problems",
           "RankDeficientFamily", "ScaledFamily", "SpectrumFamily", "family_from_name"]
