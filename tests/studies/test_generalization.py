"""``studies.generalization``: its measuring helpers on tiny shapes, its verdicts on both
sides of every threshold, its tables and headline, and a tiny end-to-end run."""

import copy
import json
import math
import re

import numpy as np
import pytest
import torch

from neuralnum.core.runtime import make_generator
from neuralnum.models.axial import construct_axial_gd
from neuralnum.problems import FAMILIES
from neuralnum.problems.double_double import dd_matvec, dd_step
from neuralnum.problems.reference import lstsq
from neuralnum.solvers.pretrained import pretrained
from studies import generalization as gen

TARGETS = list(gen.TARGET_SHAPES)


# ---------------------------------------------------------------------- helpers


def test_family_at_a_shape():
    assert gen.family("rank_deficient", 10, 6).rank == 3
    for name in ("overdetermined", "underdetermined"):
        fam = gen.family(name, 7, 30)
        assert (fam.n, fam.d) == (7, 30)


def _problem(n=9, d=4, dtype=torch.float64, seed=0):
    gen_ = make_generator(seed)
    A, b, x, u, v = (torch.randn(shape, generator=gen_, dtype=torch.float64)
                     for shape in ((2, n, d), (2, n), (2, d), (2, n), (2, d)))
    A = A * torch.tensor([2.0**40, 2.0**-30]).view(2, 1, 1)  # far from RMS 1: equilibrated
    b = b * torch.tensor([2.0**37, 2.0**-32]).view(2, 1)
    return tuple(t.to(dtype) for t in (A, b, x, u, v))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_learned_products_of_the_construction_are_the_products(dtype):
    """With exact weights, the operator's products mapped back from equilibrated
    coordinates equal A v, Aᵀu and Aᵀ(Ax − b) to rounding, on problems scaled by 2^±40."""
    A, b, x, u, v = _problem(dtype=dtype)
    coefficients = construct_axial_gd().coefficients().detached()
    learned = gen.learned_products(coefficients, A, b, x, u, v)
    exact = {"Av": dd_matvec(A, v), "ATu": dd_matvec(A.mT, u), "g": dd_step(A, b, x)[1]}
    u_dtype = torch.finfo(dtype).eps
    for product in gen.PRODUCTS:
        assert learned[product].dtype == dtype
        assert max(gen.relative_errors(learned[product], exact[product])) < 20 * u_dtype


def test_coefficient_summary_against_the_construction():
    tables = gen.coefficient_tables(gen.forms(pretrained("float64")))
    assert gen.coefficient_summary(tables, "construction") == (0.0, 0.0, 3)
    assert gen.coefficient_summary(tables, "deployed") == (0.0, 0.0, 3)
    main, other, nonzero = gen.coefficient_summary(tables, "trained")
    assert 0 < main < 1e-13 and 0 < other < 1e-13 and nonzero > 3
    snapped = gen.coefficient_summary(tables, "snapped")
    assert snapped[0] == main and snapped[1] == 0.0 and snapped[2] == 3
    tables["deployed"]["rows"][6][1] = 1.0  # −b read as +b
    assert gen.coefficient_summary(tables, "deployed")[0] == 2.0


def test_torch_products_and_relative_errors():
    A, b, x, u, v = _problem()
    out = gen.torch_products(A, b, x, u, v)
    assert torch.allclose(out["g"], torch.einsum("bnd,bn->bd", A, torch.einsum(
        "bnd,bd->bn", A, x) - b), rtol=1e-12)
    truth = dd_matvec(A, v)
    shifted = torch.from_numpy(truth[0] * (1 + 1e-10))
    assert gen.relative_errors(shifted, truth) == pytest.approx([1e-10, 1e-10], rel=1e-4, abs=0)


def test_forms_of_the_shipped_learner():
    learner = pretrained("float64")
    forms = gen.forms(learner)
    assert set(forms) == set(gen.FORMS)
    assert torch.equal(forms["deployed"].rows, learner.coefficients().rows)
    nonzero = (forms["snapped"].rows != 0).sum() + (forms["snapped"].cols != 0).sum()
    assert nonzero < (forms["trained"].rows != 0).sum() + (forms["trained"].cols != 0).sum()


def test_product_cell_on_a_tiny_shape():
    rows = gen.product_cell(gen.forms(pretrained("float64")), "gaussian", (12, 5), 3, 0)
    assert [r["dtype"] for r in rows] == list(gen.DTYPES)
    for row, u in zip(rows, (2.0**-53, 2.0**-24), strict=True):
        assert set(row["errors"]) == {"torch", *gen.FORMS}
        for product in gen.PRODUCTS:
            assert len(row["errors"]["torch"][product]) == 3
            assert 0 < max(row["errors"]["torch"][product]) < 20 * u
            assert gen.ratio(row, "deployed", product) < 4


def _row(shape, family, dtype, torch_errors, **forms):
    errors = {"torch": {p: list(torch_errors) for p in gen.PRODUCTS}}
    for form in gen.FORMS:
        errors[form] = {p: list(forms.get(form, torch_errors)) for p in gen.PRODUCTS}
    return {"n": shape[0], "d": shape[1], "family": family, "dtype": dtype, "errors": errors}


def test_ratio_is_of_root_mean_square_errors_against_torch():
    row = _row((10, 3), "gaussian", "float64", [1e-16, 1e-16], trained=[2e-16, 0.0],
               snapped=[5e-16, 5e-16])
    assert gen.ratio(row, "trained", "g") == pytest.approx(math.sqrt(2))
    assert gen.ratio(row, "snapped", "Av") == pytest.approx(5.0)
    assert gen.ratio(row, "deployed", "ATu") == pytest.approx(1.0)
    zero = _row((10, 3), "gaussian", "float64", [0.0], deployed=[0.0], trained=[1e-16])
    assert gen.ratio(zero, "deployed", "g") == 1.0
    assert gen.ratio(zero, "trained", "g") == math.inf


def test_worst_ratio_and_torch_error_over_families():
    rows = [_row((10, 3), "gaussian", "float64", [1e-16], deployed=[3e-16]),
            _row((10, 3), "scaled", "float64", [2e-16, 4e-16], deployed=[2e-16, 4e-16]),
            _row((10, 3), "scaled", "float32", [1e-7], deployed=[9e-7])]
    assert gen.worst_ratio(rows, (10, 3), "float64", "deployed", "Av") == pytest.approx(3.0)
    assert gen.worst_ratio(rows, (10, 3), "float32", "deployed", "Av") == pytest.approx(9.0)
    assert gen.worst_ratio(rows, (11, 3), "float64", "deployed", "Av") is None
    assert gen.torch_error(rows, (10, 3), "float64", "g") == pytest.approx(2e-16, rel=1e-9, abs=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["gaussian", "underdetermined", "rank_deficient", "noisy"])
def test_svd_judge_agrees_with_mpmath(name, dtype):
    P = gen.family(name, 14, 8).sample(2, make_generator(3), dtype)
    x, corrections, kappas = gen.svd_judge(P.A, P.b)
    mp = lstsq(P.A.double(), P.b.double(), method="mpmath",
               rcond=gen.default_rcond(dtype, 14, 8))
    assert x.dtype == torch.float64
    assert min(gen.solution_digits(x, mp)) > 15.0
    assert max(corrections) < 1e-15 and min(kappas) >= 1


def test_svd_judge_refines_beyond_the_plain_svd_solution():
    """At κ = 1e6 one float64 SVD solve is good to ~10 digits; refined, to the last bit."""
    P = gen.family("ill_conditioned", 30, 10).shifted(cond=1e6).sample(2, make_generator(1))
    mp = lstsq(P.A, P.b, method="mpmath")
    plain = gen.svd_judge(P.A, P.b, refinements=0)[0]
    refined = gen.svd_judge(P.A, P.b)[0]
    assert max(gen.solution_digits(plain, mp)) < 13.5
    assert min(gen.solution_digits(refined, mp)) > 15.0


def test_solution_digits_counts_a_non_finite_solution_as_no_digits():
    judge = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0], [math.nan, 4.0]], dtype=torch.float64)
    assert gen.solution_digits(x, judge) == pytest.approx([15.95, 0.0], abs=0.01)


def test_cg_cell_on_a_tiny_shape():
    rows = gen.cg_cell("spectrum", (12, 4), 2, 0)
    for row in rows:
        assert row["judge"] == "mpmath" and min(row["judge_agreement"]) > 15.0
        assert set(row["digits"]) == set(gen.SOLVERS)
        floor = 14.0 if row["dtype"] == "float64" else 5.5
        assert min(gen.median_digits(row, s) for s in gen.SOLVERS) > floor
        assert len(row["iterations"]["learned"]) == 2
    big = gen.cg_cell("gaussian", (40, 30), 1, 0)[0]
    assert big["judge"] == "svd+dd" and "judge_agreement" not in big


# ---------------------------------------------------------------------- verdicts


def _solving_row(shape, family, dtype, learned=15.0, exact=15.2, scipy=15.5):
    return {"n": shape[0], "d": shape[1], "family": family, "dtype": dtype,
            "judge": "svd+dd", "judge_correction": [1e-17], "kappa": [2.0],
            "digits": {"learned": [learned] * 3, "exact": [exact] * 3, "scipy": [scipy] * 3},
            "iterations": {"learned": [20], "exact": [20]},
            "status": {"learned": ["converged"] * 3, "exact": ["converged", "stagnated"] * 2}}


def _result(shapes=TARGETS, stretch=False):
    shapes = [*shapes, gen.STRETCH] if stretch else list(shapes)
    products = [_row(s, f, dt, [1e-16, 2e-16], trained=[9e-16, 9e-16])
                for s in shapes for f in ("gaussian", "scaled") for dt in gen.DTYPES]
    solving = [_solving_row(s, f, dt) for s in shapes for f in FAMILIES for dt in gen.DTYPES]
    settings = {"product_problems": 2, "product_families": ["gaussian", "scaled"],
                "cg_problems": 3, "stretch_problems": 2 if stretch else 0}
    return {"command": "python3 -m studies.generalization --quick", "mode": "quick",
            "settings": settings, "products": products, "solving": solving,
            "coefficients": gen.coefficient_tables(gen.forms(pretrained("float64")))}


def _keys(result):
    return list(gen.verdicts(result))


def _set_product(result, shape, dtype, family, value):
    for row in result["products"]:
        if (row["n"], row["d"]) == shape and row["dtype"] == dtype and row["family"] == family:
            row["errors"]["deployed"]["g"] = [value * e for e in row["errors"]["torch"]["g"]]


def _set_digits(result, shape, dtype, family, learned):
    for row in result["solving"]:
        if (row["n"], row["d"]) == shape and row["dtype"] == dtype and row["family"] == family:
            row["digits"]["learned"] = [learned] * 3


def test_verdicts_measured_only_without_the_stretch():
    keys = _keys(_result())
    assert len(keys) == 4 and not any("stretch" in k for k in keys)
    assert all(gen.verdicts(_result()).values())
    assert len(_keys(_result(stretch=True))) == 6
    assert _keys(_result(shapes=TARGETS[:3])) == []


@pytest.mark.parametrize("dtype, index", [("float64", 0), ("float32", 2)])
@pytest.mark.parametrize("shape", TARGETS)
def test_product_verdict_thresholds(dtype, index, shape):
    for value, met in ((3.99, True), (4.01, False)):
        result = _result()
        _set_product(result, shape, dtype, "scaled", value)
        verdict = gen.verdicts(result)
        assert verdict[_keys(result)[index]] is met
        assert all(v for k, v in verdict.items() if k != _keys(result)[index])
    result = _result()  # another dtype's or the trained form's ratio does not count
    _set_product(result, shape, "float32" if dtype == "float64" else "float64", "scaled", 9)
    assert gen.verdicts(result)[_keys(result)[index]]


@pytest.mark.parametrize("dtype, index", [("float64", 1), ("float32", 3)])
@pytest.mark.parametrize("family", ["ill_conditioned", "underdetermined"])
def test_cg_verdict_thresholds(dtype, index, family):
    for learned, met in ((14.7, True), (14.69, False), (16.0, True)):
        result = _result()
        _set_digits(result, (300, 300), dtype, family, learned)
        assert gen.verdicts(result)[_keys(result)[index]] is met
    result = _result()  # a family not measured: no verdict
    result["solving"] = [r for r in result["solving"] if r["family"] != family]
    assert _keys(_result())[index] not in gen.verdicts(result)


def test_stretch_verdicts():
    for value, learned, met in ((3.9, 14.8, [True, True]), (4.1, 14.8, [False, True]),
                                (1.0, 14.6, [True, False])):
        result = _result(stretch=True)
        _set_product(result, gen.STRETCH, "float32", "gaussian", value)
        _set_digits(result, gen.STRETCH, "float64", "noisy", learned)
        stretch = {k: v for k, v in gen.verdicts(result).items() if k.startswith("stretch")}
        assert list(stretch.values()) == met


# ---------------------------------------------------------------------- tables, headline


def test_tables_and_headline_render_the_result():
    result = _result()
    _set_product(result, (5000, 500), "float64", "gaussian", 5.0)
    text = gen.tables(result)
    assert "| (5000, 500) | n 78.1×, d 31.2× |" in text
    assert "5.00" in text and "not run (`--stretch` or `--full`)" in text
    assert text.count("| no |") == 1 and text.count("| yes |") == 3
    assert "15.0 / 15.2 / 15.5" in text
    assert "| ill_conditioned | 2 · 3/3 · 2/4 |" in text
    assert "| deployed | 0 | 0 | 3 |" in text
    judged = copy.deepcopy(result)
    judged["solving"][0] |= {"judge": "mpmath", "judge_agreement": [15.9]}
    judged["solving"][1] |= {"family": "rank_deficient", "judge_agreement": [14.2, 15.0]}
    assert ("≥ 14.2 digits (worst problem: rank_deficient, float32, ≥ 15.9 on the other "
            "families)") in gen.tables(judged)
    line = gen.headline(result)
    assert "5.00× (float64)" in line and "1.00× (float32)" in line
    assert "0.20 digit" in line and "3 of 4 targets met" in line
    stretch = gen.tables(_result(stretch=True))
    assert "Stretch (50000, 2000): run (2 problems per family and dtype)" in stretch
    assert "| (50000, 2000) | n 781×, d 125× |" in stretch
    assert "(50000" not in line
    assert re.search(r"; at \(50000, 2000\): ≤ [\d.]+× \(float64\) / [\d.]+× \(float32\) "
                     r"torch's error, learned CG ≤ -?[\d.]+ digit behind exact CG; ",
                     gen.headline(_result(stretch=True)))


def test_beyond_training():
    assert gen.beyond((64, 16)) == "in range"
    assert gen.beyond((64, 1600)) == "n 1×, d 100×"


# ---------------------------------------------------------------------- end to end


def test_main_on_tiny_settings(tmp_path, monkeypatch):
    tiny = gen.Settings(((10, 4), (50, 20)), ("gaussian",), 2, ((8, 3),), 2, 0)
    monkeypatch.setitem(gen.MODES, "quick", tiny)
    monkeypatch.setattr(gen, "TARGET_SHAPES", ((50, 20),))
    monkeypatch.setattr(gen, "FAMILIES", {"gaussian": FAMILIES["gaussian"]})
    result = gen.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "generalization.json").read_text())
    assert (tmp_path / "generalization_ratios.png").stat().st_size > 0
    assert saved["command"] == "python3 -m studies.generalization --quick"
    assert gen.tables(saved) == gen.tables(result)
    assert len(gen.verdicts(saved)) == 2  # the products' (no CG at the target shape)
    assert all("A v" in key for key in gen.verdicts(saved))
    assert np.isfinite(gen.worst_ratio(saved["products"], (50, 20), "float32", "deployed",
                                       "g"))
    assert "(8, 3) mpmath" in gen.tables(saved)


def test_tables_do_not_mutate_the_result():
    result = _result()
    before = copy.deepcopy(result)
    gen.tables(result)
    gen.headline(result)
    assert result == before
