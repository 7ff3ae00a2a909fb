"""neuralnum.finisher: Levenberg–Marquardt on a learner, from the recipe and the CLI."""

import itertools
import json

import pytest
import torch
from learner_standins import one_thread  # noqa: F401 (autouse fixture)

from neuralnum.__main__ import main
from neuralnum.finisher import FinisherSettings, LMFinisher, finish_lm
from neuralnum.fit import draw_problems
from neuralnum.learner import Learner
from neuralnum.problems import family_from_name
from neuralnum.recipe import Recipe

FAMILY = family_from_name("spectrum")


def drawer(learner: Learner, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return lambda k: draw_problems(learner, FAMILY, k, gen)


def construction(dtype: str, noise: float = 1e-3, **recipe) -> Learner:
    learner = Learner("linear_attention", "gd", Recipe(dtype=dtype, **recipe))
    return learner.init_construction(noise, seed=0)


@pytest.mark.parametrize("dtype, bound", [("float64", 1e-24), ("float32", 1e-11)])
def test_finisher_takes_linear_attention_to_its_dtype_floor(dtype, bound):
    learner = construction(dtype)
    report = finish_lm(learner, drawer(learner), FinisherSettings(iterations=20, until=bound / 10))
    records = report["records"]
    assert records[0]["fresh_mse"] > 1e-6
    assert records[-1]["fresh_mse"] <= bound
    assert report["problems"] * learner.d >= 1.5 * report["rank"]
    assert 0 < report["rank"] <= report["parameters"]
    # the weights were written back into the learner, in its dtype
    assert next(learner.model.parameters()).dtype == getattr(torch, dtype)
    held = draw_problems(learner, FAMILY, 64, torch.Generator().manual_seed(99))
    assert learner.evaluate(*held)["mse"] <= 10 * bound
    assert all(r["train_mse"] <= prev["train_mse"] or r["problems"] > prev["problems"]
               for prev, r in itertools.pairwise(records))


def test_lm_finisher_on_the_loop_seam():
    """The loop hands a finisher its task (learner, sample), generator and log."""
    learner = construction("float64")
    gen, logged = torch.Generator().manual_seed(0), []

    class Task:
        def __init__(self):
            self.learner = learner

        def sample(self, k, generator):
            return draw_problems(learner, FAMILY, k, generator)

    class Problem:
        task, generator = Task(), gen

        @staticmethod
        def log(**metrics):
            logged.append(metrics)

    out = LMFinisher(FinisherSettings(iterations=20, until=1e-26)).run(Problem())
    assert out["lm_fresh_mse"] <= 1e-24 and out["lm_rank"] > 0
    assert [m["lm"]["iteration"] for m in logged] == list(range(len(logged)))


def test_too_few_training_problems_raise_naming_the_fix():
    with pytest.raises(ValueError, match="use problems >= "):
        learner = construction("float64")
        finish_lm(learner, drawer(learner), FinisherSettings(iterations=1, problems=4))


@pytest.mark.parametrize("bad, match", [({"lm_damping": 0.0}, "damping must be > 0"),
                                        ({"lm_solver": "lu"}, "solver"),
                                        ({"finisher": "newton"}, "finisher")])
def test_recipe_rejects_bad_lm_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        Recipe(**{"finisher": "lm", **bad})


def test_fit_runs_the_lm_finisher_and_logs_it(tmp_path):
    learner = construction("float64", lr_decay="none", finisher="lm", finisher_steps=12)
    records = learner.fit(FAMILY, 0, metrics=tmp_path / "m.jsonl", show_progress=False)
    lm = [r["lm"] for r in records if "lm" in r]
    assert len(lm) >= 3 and records[-1]["final"]
    assert records[-1]["mse"] <= 1e-20
    assert records[-1]["lm_rank"] > 0 and records[-1]["lm_fresh_mse"] <= 1e-20


def test_cli_train_with_the_lm_finisher(tmp_path):
    out = tmp_path / "l.pt"
    main(["train", "--arch", "linear_attention", "--init", "construct", "--init-noise",
          "1e-3", "--steps", "0", "--lr-decay", "none", "--finisher", "lm",
          "--finisher-steps", "12", "--out", str(out), "--device", "cpu"])
    lines = [json.loads(x) for x in out.with_suffix(".jsonl").read_text().splitlines()]
    assert any("lm" in r for r in lines)
    assert lines[-1]["mse"] <= 1e-20


def test_demo_hands_baseconv_to_the_lm_finisher(monkeypatch, tmp_path):
    import neuralnum.__main__ as cli

    seen = {}

    def fake_train(args):
        seen["steps"], seen["recipe"] = args.steps, cli.recipe_from_args(args)
        return construction("float64"), {"seconds": 0.0}

    monkeypatch.setattr(cli, "_train", fake_train)
    monkeypatch.setattr(cli, "_solve", lambda args, learner: {})
    cli.main(["demo", "--arch", "baseconv", "--lm-minutes", "2", "--out",
              str(tmp_path / "d.pt")])
    assert seen["steps"] == 800
    assert (seen["recipe"].finisher, seen["recipe"].finisher_steps) == ("lm", 100)
    assert seen["recipe"].lm_minutes == 2.0  # the user's --set wins
    cli.main(["demo", "--out", str(tmp_path / "e.pt")])  # linear attention: Adam only
    assert seen["steps"] == 6000 and seen["recipe"].finisher_steps == 0


def test_recipe_lm_fields_reach_the_finisher_settings():
    s = Recipe(finisher="lm", finisher_steps=7, lm_problems=900, lm_fresh=64,
               lm_damping=1e-2, lm_solver="dual", lm_minutes=3.0,
               lm_geodesic=True, lm_corrections=2).finisher_settings()
    assert (s.iterations, s.problems, s.fresh, s.minutes) == (7, 900, 64, 3.0)
    assert (s.lm.damping, s.lm.solver, s.lm.geodesic, s.lm.corrections) == (
        1e-2, "dual", True, 2)
