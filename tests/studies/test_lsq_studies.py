"""verdicts / tables of the least-squares studies (vs_scipy, iterative, ood) on synthetic
results on both sides of every threshold, and their solver plumbing on a tiny problem."""

import copy

import pytest
import torch
from shape_rows import shapes_part

from neuralnum.problems import reference
from neuralnum.problems.families import SpectrumFamily
from neuralnum.solvers.learner import Learner
from neuralnum.solvers.operators import ExactOperator, LearnedOperator
from neuralnum.training.recipe import Recipe
from studies import iterative, lsq_shapes, ood, vs_scipy

# ---------------------------------------------------------------- vs_scipy


def _vs_row(family, dtype, kappa, **digits):
    row = {"family": family, "n": 20, "dtype": dtype, "kappa": kappa, "kappa2_u": 1e-14,
           "bound_digits": 14.0, "learned_cg_iterations": 8.0}
    for solver in vs_scipy.SOLVERS:
        row[f"{solver}_digits"] = digits.get(solver, 15.0)
        row[f"{solver}_worst"] = 14.0
        row[f"{solver}_seconds"] = 0.01
        if solver != "scipy":
            row[f"{solver}_calls"] = 20.0
            row[f"{solver}_calls_max"] = 30
    return row


def _vs_result():
    rows = [_vs_row("gaussian", "float64", 2.0), _vs_row("scaled", "float64", 50.0),
            _vs_row("ill_conditioned", "float64", 1e4), _vs_row("gaussian", "float32", 2.0),
            _vs_row("ill_conditioned", "float32", 1e4)]
    return {"mode": "quick", "problems": 16, "learner": "synthetic", "rows": rows,
            "longer": {"gaussian": {"2": 3.0, "4": 9.0, "200": 15.0}}, "curves": {},
            "shapes": shapes_part()}


VS_KEYS = list(vs_scipy.verdicts(_vs_result()))


def _set(result, dtype, family, key, value):
    for row in result["rows"]:
        if row["dtype"] == dtype and row["family"] == family:
            row[key] = value


@pytest.mark.parametrize(("index", "dtype", "family", "key", "met", "unmet", "ignored"), [
    # learned vs exact CG, float64, every family (also κ = 1e4)
    (0, "float64", "ill_conditioned", "learned_cg_digits", 14.5, 14.49, None),
    # learned vs scipy where κ ≤ 10 (scaled, κ = 50, does not count)
    (1, "float64", "gaussian", "learned_cg_digits", 14.5, 14.4, ("scaled", 1.0)),
    # ≤ 15 iterations where κ ≤ 100 (κ = 1e4 does not count)
    (2, "float64", "scaled", "learned_cg_iterations", 15.0, 16.0, ("ill_conditioned", 99.0)),
    # float32 learned vs exact where κ ≤ 100
    (4, "float32", "gaussian", "learned_cg_digits", 14.5, 14.4, ("ill_conditioned", 1.0)),
])
def test_vs_scipy_verdict_thresholds(index, dtype, family, key, met, unmet, ignored):
    name = VS_KEYS[index]
    base = _vs_result()
    assert vs_scipy.verdicts(base)[name]
    for value, expected in ((met, True), (unmet, False)):
        result = copy.deepcopy(base)
        _set(result, dtype, family, key, value)
        assert vs_scipy.verdicts(result)[name] is expected
    if ignored is not None:
        result = copy.deepcopy(base)
        _set(result, dtype, ignored[0], key, ignored[1])
        assert vs_scipy.verdicts(result)[name]


def test_vs_scipy_monotone_verdict_and_tables():
    name = VS_KEYS[3]
    result = _vs_result()
    assert vs_scipy.verdicts(result)[name]
    result["longer"]["gaussian"]["200"] = 8.91  # 9.0 - 0.09: within the 0.1 slack
    assert vs_scipy.verdicts(result)[name]
    result["longer"]["gaussian"]["200"] = 8.89
    assert not vs_scipy.verdicts(result)[name]
    result["verdicts"] = vs_scipy.verdicts(result)
    text = vs_scipy.tables(result)
    assert text.startswith("`python3 -m studies.vs_scipy --quick`")
    assert "median (worst) of 16" in text and "| ill_conditioned | 20 | 1e+04 |" in text
    assert "| learned CG never loses digits when iterated longer | no |" in text


def test_vs_scipy_tables_and_headline_show_both_parts():
    result = _vs_result()
    text = vs_scipy.tables(result)
    assert "**The shape-general learned solver**" in text
    assert "| ill_conditioned | 20 × 5 | 1e+04 | mpmath | 13.0 (14.0) |" in text
    assert "| gaussian | 5000 × 500 | 2 | gelsd + 2 dd refinements |" in text
    assert "| gaussian | 1000 × 100 | 10 (21) |" in text
    for key, met in lsq_shapes.verdicts(result["shapes"]["rows"]).items():
        assert f"| {key} | {'yes' if met else 'no'} |" in text
    line = vs_scipy.headline(result)
    assert "shape-general learned LSQR 15.0–15.0 vs scipy lsqr 15.0–15.0" in line
    assert line.endswith("9 of 9 targets met")


# ---------------------------------------------------------------- iterative

def _iter_result(**final):
    base = {"learned_cg": 1e-30, "exact_cg": 1e-30, "learned_gd": 1e-29, "exact_gd": 1e-29,
            "learned_cg_solve": 1e-31, "end_to_end": 1e-5, "scipy": 1e-31}
    return {"mode": "quick", "dtype": "float64", "problems": 32,
            "rows": [{"iteration": 1, **{c: 1e-2 for c in iterative.CURVES}},
                     {"iteration": 400, "learned_cg": None, "exact_cg": None,
                      "learned_gd": 1e-29, "exact_gd": 1e-29}],
            "final": {**base, **final}}


@pytest.mark.parametrize(("index", "met", "unmet"), [
    (0, {"learned_cg_solve": 1e-10}, {"learned_cg_solve": 1.01e-10}),
    (1, {"learned_cg": 1e-29}, {"learned_cg": 1.01e-29}),
    (2, {"learned_gd": 1e-28}, {"learned_gd": 1.01e-28}),
])
def test_iterative_verdict_thresholds(index, met, unmet):
    name = list(iterative.verdicts(_iter_result()))[index]
    assert iterative.verdicts(_iter_result(**met))[name]
    assert not iterative.verdicts(_iter_result(**unmet))[name]


def test_iterative_tables_and_trajectories():
    result = _iter_result()
    result["verdicts"] = iterative.verdicts(result)
    text = iterative.tables(result)
    assert text.startswith("`python3 -m studies.iterative --quick`")
    assert "| 400 | – | – | 1.00e-29 | 1.00e-29 |" in text
    learner = Learner("linear_attention", "gd", Recipe(), n=8, d=3).init_construction()
    P = SpectrumFamily(n=8, d=3, cond=3.0).sample(4, torch.Generator().manual_seed(0))
    x_ref = reference.lstsq(P.A, P.b)
    curves = iterative.trajectories(learner, P.A, P.b, x_ref, {"cg": 6, "gd": 30})
    assert len(curves["learned_cg"]) == 7 and len(curves["exact_gd"]) == 31
    assert curves["learned_cg"][-1] < 1e-25
    assert curves["exact_gd"][-1] < 1e-4 * curves["exact_gd"][0]


# ---------------------------------------------------------------- ood

def _ood_result(median_gap_ratio=1e5, learned=15.0, exact=15.4):
    rows = [{"shift": "in-distribution", "learned_mse": 1e-31, "learned_gap": 1.0,
             "learned_digits": 15.5, "construction_cg_digits": 15.5,
             "exact_cg_digits": 15.6, "end_to_end_mse": 1e-5,
             "end_to_end_gap": 1.0, "gap_ratio": 1.0},
            {"shift": "cond=20", "learned_mse": 1e-30, "learned_gap": 10.0,
             "learned_digits": learned, "construction_cg_digits": 15.1,
             "exact_cg_digits": exact, "end_to_end_mse": 1e-3,
             "end_to_end_gap": 100.0, "gap_ratio": 10.0}]
    return {"mode": "quick", "problems": 32, "rows": rows,
            "median_gap_ratio": median_gap_ratio}


def test_ood_verdict_thresholds_and_tables():
    gap, kappa = list(ood.verdicts(_ood_result()))
    assert ood.verdicts(_ood_result(median_gap_ratio=1e4))[gap]
    assert not ood.verdicts(_ood_result(median_gap_ratio=9.9e3))[gap]
    assert ood.verdicts(_ood_result(learned=14.9, exact=15.4))[kappa]
    assert not ood.verdicts(_ood_result(learned=14.89, exact=15.4))[kappa]
    result = _ood_result()
    result["verdicts"] = ood.verdicts(result)
    text = ood.tables(result)
    assert text.startswith("`python3 -m studies.ood --quick`")
    assert "| cond=20 | 1.00e-30 | 10 | 15.0 | 15.1 | 15.4 | 1.00e-03 | 100 | 10 |" in text


def test_construction_twin_is_the_learners_architecture_with_exact_weights():
    from studies.lsq_common import construction_twin

    learner = Learner("linear_attention", "gd", Recipe(), n=8, d=3, seed=1)
    twin = construction_twin(learner)
    same = {k: v for k, v in learner.arch_config.items() if k != "seed"}
    assert {k: twin.arch_config[k] for k in same} == same and (twin.n, twin.d) == (8, 3)
    P = SpectrumFamily(n=8, d=3, cond=3.0).sample(4, torch.Generator().manual_seed(0),
                                                    torch.float64)
    x, every = torch.randn(4, 3, dtype=torch.float64), torch.arange(4)
    exact = ExactOperator(P.A, P.b).gradient(x, every)
    with torch.no_grad():
        assert torch.allclose(LearnedOperator(twin, P.A, P.b).gradient(x, every), exact,
                              rtol=0, atol=1e-13)
        assert not torch.allclose(LearnedOperator(learner, P.A, P.b).gradient(x, every),
                                  exact, rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="architecture name"):
        construction_twin(Learner(torch.nn.Identity(), "gd", Recipe(), n=8, d=3,
                                  d_model=7))


def test_vs_scipy_runs_every_solver_column_on_its_operator():
    from studies.lsq_common import construction_twin

    exact = Learner("linear_attention", "gd", Recipe(), n=8, d=3).init_construction()
    P = SpectrumFamily(n=8, d=3, cond=3.0).sample(4, torch.Generator().manual_seed(0),
                                                    torch.float64)
    runs = vs_scipy._run_solvers(exact, construction_twin(exact), P)
    assert list(runs) == list(vs_scipy.SOLVERS)
    for name, run in runs.items():
        assert (reference.relative_error(run["x"], runs["scipy"]["x"]) < 1e-9).all(), name
        assert name == "scipy" or run["info"].method == name.split("_")[1]
