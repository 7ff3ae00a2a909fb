"""studies.recipe: the finisher rows' helpers, verdicts and README tables."""

import math

import pytest
import torch

from neuralnum.problems.families import family_from_name
from neuralnum.solvers.learner import Learner
from neuralnum.training.recipe import Recipe
from studies import recipe as study
from studies.lsq_common import parse


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_convergence_order_tells_linear_from_quadratic():
    linear = [10.0 ** -k for k in range(2, 12)]
    quadratic = [10.0 ** -(2 ** k) for k in range(1, 6)]
    assert study.convergence_order(linear) == pytest.approx(1.0)
    assert study.convergence_order(quadratic) == pytest.approx(2.0)
    assert math.isnan(study.convergence_order([1e-3, 1e-4]))


def test_projected_seconds_extrapolates_the_last_rate():
    records = [{"fresh_mse": 10.0 ** -k, "wall": 2.0 * k} for k in range(1, 11)]
    assert study.projected_seconds(records, 1e-20) == pytest.approx(20.0)
    assert study.projected_seconds(records, 1e-5) == 0.0
    flat = [{"fresh_mse": 1e-5, "wall": float(k)} for k in range(6)]
    assert study.projected_seconds(flat, 1e-20) == math.inf


def finisher_result(construct_mse: float, at_iteration: int, scratch_mse: float,
                    scratch_wall: float) -> dict:
    def row(start, arch, dtype, curve, adam_at):
        return {"arch": arch, "dtype": dtype, "start": start, "lm_curve": curve,
                "adam_seconds_at_lm": adam_at, "adam_only_mse": 1e-4, "adam_steps": 100,
                "lm_after": 0, "lm_start_mse": 1e-2, "lm_mse": curve[-1]["fresh_mse"],
                "lm_train_mse": curve[-1]["fresh_mse"] / 2, "snapped": 48,
                "lm_iterations_run": len(curve) - 1, "seconds": adam_at + curve[-1]["wall"],
                "rank": 800, "parameters": 4032, "cond_jtj": 1e12, "order": 1.1,
                "projected_extra_seconds": 12.0}
    construct = [{"iteration": 0, "fresh_mse": 1e-2, "wall": 0.0},
                 {"iteration": at_iteration, "fresh_mse": construct_mse, "wall": 10.0}]
    scratch = [{"iteration": 0, "fresh_mse": 1e-4, "wall": 0.0},
               {"iteration": 5, "fresh_mse": scratch_mse, "wall": scratch_wall}]
    return {"finisher_rows": [
        row("construct", "baseconv", "float64", construct, 0.0),
        row("construct", "linear_attention", "float64", construct, 0.0),
        row("scratch", "baseconv", "float64", scratch, 100.0),
        row("scratch", "baseconv", "float32", scratch, 100.0)], "rows": []}


@pytest.mark.parametrize("args, met", [
    ((1e-29, 20, 1e-21, 1000.0), [True, True, True, True]),
    ((1e-27, 20, 1e-21, 1000.0), [False, False, True, True]),   # construction MSE too high
    ((1e-29, 21, 1e-21, 1000.0), [False, False, True, True]),   # too many iterations
    ((1e-29, 20, 1e-19, 1000.0), [True, True, False, True]),    # float64 scratch > 1e-20
    ((1e-29, 20, 1e-12, 1000.0), [True, True, False, False]),   # float32 scratch > 1e-13
    ((1e-29, 20, 1e-21, 1701.0), [True, True, False, False]),   # over 30 minutes
])
def test_finisher_verdicts_on_both_sides_of_each_threshold(args, met):
    verdicts = study.verdicts(finisher_result(*args))
    assert list(verdicts.values()) == met
    assert len(verdicts) == 4


def test_grid_verdicts_on_both_sides():
    def rows(full64, full32, baseline):
        return [{"arch": "baseconv", "dtype": "float64", "recipe": "full",
                 "one_step_mse": full64},
                {"arch": "baseconv", "dtype": "float64", "recipe": "baseline",
                 "one_step_mse": baseline},
                {"arch": "baseconv", "dtype": "float32", "recipe": "full",
                 "one_step_mse": full32}]
    good = study.verdicts({"rows": rows(1e-21, 1e-13, 1e-16)})
    assert all(good.values()) and len(good) == 3
    bad = study.verdicts({"rows": rows(1e-19, 1e-11, 1e-16)})
    assert not any(bad.values())


def test_tables_renders_every_row_and_verdict():
    result = finisher_result(1e-29, 20, 1e-21, 1000.0)
    result["verdicts"] = study.verdicts(result)
    text = study.tables(result)
    assert text.startswith("`python3 -m studies.recipe")
    assert text.count("| baseconv |") == 3 and "1.00e-29 | 5.00e-30 |" in text
    assert text.count("| 1.10 | 48 |") == 4                 # order, channels snapped
    assert text.count("target **met**") == 4
    assert "re-run" not in text
    result["rerun"] = "python3 -m studies.recipe --finisher --rows baseconv/float64/construct"
    assert "; the rows named re-run later, in this order, by `python3 -m studies.recipe " \
        "--finisher --rows baseconv/float64/construct`)" in study.tables(result)
    result["rerun"] = [result["rerun"], "python3 -m studies.recipe --finisher --rows a/b/c"]
    assert ("construct`, then `python3 -m studies.recipe --finisher --rows a/b/c`)"
            in study.tables(result))


def test_an_annealed_row_starts_lm_from_its_own_short_adam_run():
    spec = {"arch": "linear_attention", "dtype": "float64", "start": "scratch",
            "adam_steps": 50, "lm_after": 25, "lm_iterations": 1, "lm_minutes": 0.0,
            "lm": {}, "annealed": True}
    family = family_from_name("spectrum")
    row = study.finisher_row(spec, family, 0)
    warm = Learner("linear_attention", "gd", Recipe(dtype="float64", lr=1e-2), n=family.n,
                   d=family.d, seed=0)
    last = warm.fit(family, 25, seed=0, log_every=25, eval_batch=256,
                    show_progress=False)[-1]
    assert row["lm_curve"][0]["fresh_mse"] == pytest.approx(last["mse"], rel=1e-9)
    assert row["lm_curve"][0]["fresh_mse"] != pytest.approx(dict(row["adam_curve"])[25],
                                                            rel=1e-3)
    assert row["adam_curve"][-1][0] == 50  # the Adam-only baseline still runs its 50 steps


def test_finisher_row_smoke():
    spec = {"arch": "linear_attention", "dtype": "float64", "start": "scratch",
            "adam_steps": 50, "lm_after": 25, "lm_iterations": 3, "lm_minutes": 0.0,
            "lm": {"solver": "eigh", "corrections": 1}}
    row = study.finisher_row(spec, family_from_name("spectrum"), 0)
    assert row["lm_curve"][0]["fresh_mse"] == pytest.approx(
        dict(row["adam_curve"])[25], rel=1e-9)  # LM starts from the Adam weights at 25
    assert row["lm_train_mse"] < row["lm_curve"][0]["train_mse"]
    assert row["rank"] <= row["parameters"]
    assert row["snapped"] == 0                        # linear attention has no channels


def _args(tmp_path, *argv):
    return parse("recipe", "", ["--finisher", "--out", str(tmp_path), *argv],
                 modes={"finisher": ""}, configure=study._finisher_options)


def test_rows_and_lm_minutes_select_and_rebudget_finisher_rows(tmp_path):
    grid = study.finisher_grid(False)
    assert study.selected_specs(_args(tmp_path)) == grid
    args = _args(tmp_path, "--rows", "baseconv/float32/scratch", "baseconv/float64/scratch",
                 "--lm-minutes", "29", "--threads", "2")
    specs = study.selected_specs(args)
    assert [study.row_name(s) for s in specs] == ["baseconv/float64/scratch",
                                                   "baseconv/float32/scratch"]  # grid order
    for spec in specs:
        base = next(g for g in grid if study.row_name(g) == study.row_name(spec))
        assert spec == {**base, "lm_minutes": 29.0, "lm_iterations": 1000}
    # rows without a wall budget (linear attention: cheap) keep their iteration caps
    la = study.finisher_grid(False, 29.0)[-1]
    assert la["arch"] == "linear_attention" and la["lm_minutes"] == 0.0
    assert study.command(args) == ("python3 -m studies.recipe --finisher --rows "
                                   "baseconv/float32/scratch baseconv/float64/scratch "
                                   "--lm-minutes 29 --threads 2")
    with pytest.raises(SystemExit):
        _args(tmp_path, "--rows", "baseconv/float16/scratch")
