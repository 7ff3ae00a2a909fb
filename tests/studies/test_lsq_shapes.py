"""studies.lsq_shapes (the shape-general part of vs_scipy): the judges, the solver runs on
a tiny batch, the grid, and its verdicts on both sides of every threshold."""

import copy

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch
from shape_rows import shapes_part

from neuralnum.problems import reference
from neuralnum.problems.families import FAMILIES, SpectrumFamily, family_from_name
from neuralnum.solvers.pretrained import pretrained
from studies import lsq_shapes

KEYS = list(lsq_shapes.verdicts(shapes_part()["rows"]))


def _set(part, family, shape, key, value):
    for row in part["rows"]:
        if row["family"] == family and (row["n"], row["d"]) == shape and row["dtype"] == "float64":
            row[key] = value


@pytest.mark.parametrize(("index", "family", "shape", "key", "met", "unmet", "ignored"), [
    # not more than 0.5 digit below scipy's lsqr at the big shapes (not at 20 × 5)
    (0, "gaussian", (5000, 500), "learned_lsqr_digits", 14.5, 14.49,
     (("ill_conditioned", (20, 5)), 1.0)),
    # median iterations ≤ 1.1× scipy's lsqr
    (1, "ill_conditioned", (300, 300), "learned_lsqr_iterations", 11.0, 11.5,
     (("ill_conditioned", (20, 5)), 99.0)),
    # within 1 digit of scipy lstsq where κ ≤ 1e4
    (2, "gaussian", (100, 1000), "learned_lsqr_digits", 14.0, 13.9, None),
    # ≥ 12.4 digits on ill_conditioned at 20 × 5 (the big shapes do not count)
    (3, "ill_conditioned", (20, 5), "learned_lsqr_digits", 12.4, 12.39,
     (("ill_conditioned", (1000, 100)), 3.0)),
])
def test_shape_verdict_thresholds(index, family, shape, key, met, unmet, ignored):
    name = KEYS[index]
    base = shapes_part()
    assert lsq_shapes.verdicts(base["rows"])[name]
    for value, expected in ((met, True), (unmet, False)):
        part = copy.deepcopy(base)
        _set(part, family, shape, key, value)
        assert lsq_shapes.verdicts(part["rows"])[name] is expected
    if ignored is not None:
        part = copy.deepcopy(base)
        _set(part, *ignored[0], key, ignored[1])
        assert lsq_shapes.verdicts(part["rows"])[name]


def test_lstsq_verdict_skips_kappa_above_1e4_and_every_verdict_needs_rows():
    name = KEYS[2]
    part = shapes_part()
    _set(part, "gaussian", (300, 300), "kappa", 1e5)
    _set(part, "gaussian", (300, 300), "learned_lsqr_digits", 3.0)
    assert lsq_shapes.verdicts(part["rows"])[name]
    assert not any(lsq_shapes.verdicts([]).values())


def test_cells_cover_every_family_and_shape_once():
    cells = lsq_shapes.cells()
    assert len(cells) == len(set(cells))
    for family in FAMILIES:
        shapes = {s for f, s, dt in cells if f == family and dt == "float64"}
        big = set() if family in lsq_shapes.SMALL_ONLY else set(lsq_shapes.BIG_SHAPES)
        assert shapes == {lsq_shapes.SMALL} | big
    assert {s for _, s, dt in cells if dt == "float32"} == set(lsq_shapes.FLOAT32_SHAPES)


def test_refined_judge_is_the_exact_solution():
    P = SpectrumFamily(n=30, d=20, cond=1e4, spectrum="geometric", noise=1e-3).sample(
        2, torch.Generator().manual_seed(0))
    rcond = reference.default_rcond(torch.float64, 30, 20)
    x, change = lsq_shapes.refined_lstsq(P.A, P.b, rcond)
    exact = reference.lstsq(P.A, P.b, method="mpmath", rcond=rcond)
    assert (reference.digits(x, exact) >= 15.5).all()
    assert (change < 1e-15).all()
    plain = reference.lstsq(P.A, P.b, method="scipy", rcond=rcond)
    assert (reference.digits(plain, exact) < 15.0).all()  # what the refinement buys
    _, name, correction = lsq_shapes.judge(family_from_name("gaussian").sample(
        2, torch.Generator().manual_seed(1)))
    assert name == "mpmath" and correction is None
    _, name, correction = lsq_shapes.judge(P)
    assert name.startswith("gelsd") and correction < 1e-15


def test_scipy_lsqr_is_scipys_with_the_tolerances():
    P = family_from_name("gaussian", n=12, d=4).sample(2, torch.Generator().manual_seed(2))
    x, itn, istop = lsq_shapes.scipy_lsqr(P)
    eps = np.finfo(np.float64).eps
    for i in range(2):
        out = sla.lsqr(P.A[i].numpy(), P.b[i].numpy(), atol=eps, btol=eps, conlim=1e8,
                       iter_lim=8)
        np.testing.assert_array_equal(x[i].numpy(), out[0])
        assert (itn[i], istop[i]) == (out[2], out[1])


def test_every_method_runs_and_is_judged_on_a_tiny_batch():
    P = family_from_name("gaussian", n=10, d=3).sample(3, torch.Generator().manual_seed(3))
    runs = lsq_shapes.run_methods(pretrained("float64"), P)
    assert list(runs) == list(lsq_shapes.METHODS)
    row = lsq_shapes._row("gaussian", P, "float64", runs, lsq_shapes.judge(P))
    for m in lsq_shapes.METHODS:
        assert row[f"{m}_digits"] > 13, m
    assert row["learned_lsqr_iterations"] == row["exact_lsqr_iterations"] == 3
    assert row["scipy_lsqr_calls"] == 2 * row["scipy_lsqr_iterations"] + 1
    assert row["scipy_lstsq_iterations"] is None and row["kappa"] > 1
