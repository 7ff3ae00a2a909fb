"""neuralnum.training.finisher: Levenberg–Marquardt on a learner, from the recipe and the CLI."""

import itertools
import json

import pytest
import torch
from learner_standins import one_thread  # noqa: F401 (autouse fixture)

from neuralnum.cli import main, parse_command
from neuralnum.problems.families import family_from_name
from neuralnum.solvers.learner import Learner
from neuralnum.training.assembly import make_training
from neuralnum.training.finisher import FinisherSettings, LMFinisher, finish_lm
from neuralnum.training.fit import ProblemTask, draw_problems
from neuralnum.training.levenberg_marquardt import LMSettings
from neuralnum.training.recipe import Recipe
from neuralnum.training.token_residuals import snap_dead_channels

FAMILY = family_from_name("spectrum")


def drawer(learner: Learner, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return lambda k: draw_problems(learner, FAMILY, k, gen)


def run_lm(learner: Learner, iterations: int, **settings) -> dict:
    """``finish_lm`` on the learner's task: 256 held-out problems, the training set drawn
    from one stream."""
    task = ProblemTask(learner, FAMILY, seed=0, eval_batch=256)
    return finish_lm(task, drawer(learner), FinisherSettings(**settings), iterations)


def construction(dtype: str, noise: float = 1e-3, **recipe) -> Learner:
    learner = Learner("linear_attention", "gd", Recipe(dtype=dtype, **recipe))
    return learner.init_construction(noise, seed=0)


@pytest.mark.parametrize("dtype, bound", [("float64", 1e-24), ("float32", 1e-11)])
def test_finisher_takes_linear_attention_to_its_dtype_floor(dtype, bound):
    learner = construction(dtype)
    report = run_lm(learner, 20, until=bound / 10)
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


def test_float32_model_trains_on_float64_residuals_and_reports_both():
    """``train_precision="float64"`` (the default): a float32 learner's training residuals
    are float64, so its training MSE falls below float32 rounding (to the float32-rounded
    data's floor, 8.6e-16 here) while the fresh MSE of the float32 model stays at that
    model's floor (1.6e-14); the growth rule compares the fresh MSE in float64 (2.6e-15)
    with it, so the set stops growing once fitted. ``"model"``: the float32 loss decides, and the
    training MSE stays at float32 level (1.2e-14)."""
    learner = construction("float32")
    records = run_lm(learner, 10)["records"]
    last = records[-1]
    assert last["train_mse"] < 2e-15 < last["fresh_mse"] <= 1e-11
    assert last["fresh_mse_train_dtype"] < last["fresh_mse"]
    assert len({r["problems"] for r in records[-5:]}) == 1     # grown early, not since
    learner = construction("float32")
    last = run_lm(learner, 10, train_precision="model")["records"][-1]
    assert last["train_mse"] > 5e-15 and last["fresh_mse"] <= 1e-11
    assert last["fresh_mse"] == last["fresh_mse_train_dtype"]


def test_lm_finisher_on_the_loop_seam():
    """The loop hands a finisher its task (held-out problems, draws, residuals), the
    finishers' generator and the log."""
    learner, logged = construction("float64"), []

    class Problem:
        task = ProblemTask(learner, FAMILY, seed=9, eval_batch=64)
        generator = torch.Generator().manual_seed(0)

        @staticmethod
        def log(**metrics):
            logged.append(metrics)

    out = LMFinisher(FinisherSettings(until=1e-26), iterations=20).run(Problem())
    assert out["lm_fresh_mse"] <= 1e-24 and out["lm_rank"] > 0
    assert out["lm_problems"] * learner.d >= 1.5 * out["lm_rank"]
    assert [m["lm"]["iteration"] for m in logged] == list(range(len(logged)))


def test_too_few_training_problems_raise_naming_the_fix():
    with pytest.raises(ValueError, match="use problems >= "):
        learner = construction("float64")
        run_lm(learner, 1, problems=4)


def test_recipe_rejects_bad_lm_settings():
    with pytest.raises(ValueError, match="finisher"):
        Recipe(finisher="newton")
    with pytest.raises(ValueError, match="damping must be in"):
        LMSettings(damping=0.0)
    with pytest.raises(TypeError, match="lm must be a FinisherSettings"):
        Recipe(lm=LMSettings())
    with pytest.raises(ValueError, match="train_precision"):
        FinisherSettings(train_precision="float16")
    with pytest.raises(ValueError, match="solver"):
        LMSettings(solver="lu")


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


def test_demo_hands_baseconv_to_the_lm_finisher():
    cmd = parse_command(["demo", "--arch", "baseconv", "--lm-minutes", "2"])
    assert cmd.fit.steps == 800
    assert (cmd.recipe.finisher, cmd.recipe.finisher_steps) == ("lm", 1000)
    assert cmd.recipe.lm.engine.geodesic
    assert cmd.recipe.lm.minutes == 2.0  # the user's flag wins over the demo's 10
    cmd = parse_command(["demo"])  # linear attention: Adam only
    assert cmd.fit.steps == 6000 and cmd.recipe.finisher_steps == 0


def test_recipe_lm_settings_round_trip_through_a_checkpoint_dict():
    recipe = Recipe(finisher="lm", finisher_steps=7, lm=FinisherSettings(
        problems=900, minutes=3.0, engine=LMSettings(damping=1e-2, solver="dual",
                                                     geodesic=True, corrections=2)))
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert make_training(recipe, torch.nn.Linear(2, 2), horizon=1).finishers == [
        LMFinisher(recipe.lm, 7)]


def baseconv_construction(noise: float = 1e-3) -> Learner:
    learner = Learner("baseconv", "gd", Recipe(dtype="float64"))
    return learner.init_construction(noise, seed=0)


def _increments(learner: Learner, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the RMS of each channel's increment over ``tokens``: ``(width,)``."""
    out, h = [], tokens
    with torch.no_grad():
        for layer in learner.model.layers:
            out.append(layer.increment(h).pow(2).mean(dim=(0, 1)).sqrt())
            h = layer(h)
    return out


def test_snapping_puts_the_constructions_idle_channels_exactly_on_one_branch():
    """The GD construction uses 5 of BaseConv's 21 channels per layer; the other 16 have
    both factors at zero (+ noise): each gets its smaller factor zeroed exactly (the
    smallest change to the function) — its
    increment becomes exactly zero, the other factor stays non-zero (the regular branch)
    — while the live channels are untouched, and the training loss falls."""
    learner = baseconv_construction()
    train = drawer(learner)(64)
    tokens = learner.layout.encode(*train[:3])
    live_before = [inc >= 1e-2 for inc in _increments(learner, tokens)]
    assert [int(live.sum()) for live in live_before] == [5, 5, 5]
    before = learner.evaluate(*train)["mse"]
    factors_before, h = [], tokens
    with torch.no_grad():
        for layer in learner.model.layers:
            factors_before.append([f.pow(2).mean(dim=(0, 1)) for f in layer.factors(h)])
            h = layer(h)
    snapped = snap_dead_channels(learner, train, 1e-4, 128, torch.float64)
    for layer, channel, factor in snapped:                   # the smaller factor went
        gate_ms, conv_ms = (f[channel] for f in factors_before[layer])
        assert (gate_ms <= conv_ms) == (factor == "gate")
    assert len(snapped) == 48
    after = _increments(learner, tokens)
    for layer, channel, _ in snapped:
        assert not live_before[layer][channel] and after[layer][channel] == 0
    h = tokens
    with torch.no_grad():
        for index, layer in enumerate(learner.model.layers):
            gate, conv = layer.factors(h)
            for layer_index, channel, factor in snapped:
                if layer_index == index:
                    other = conv if factor == "gate" else gate
                    assert other[..., channel].abs().max() > 0
            h = layer(h)
    assert learner.evaluate(*train)["mse"] < before


def test_snapping_is_undone_when_the_training_loss_rises():
    """With ``snap_rtol`` near 1 every channel but the largest per layer would go: the
    loss rises, so the weights are restored and nothing is reported."""
    learner = baseconv_construction()
    train = drawer(learner)(64)
    state = {k: v.clone() for k, v in learner.model.state_dict().items()}
    assert snap_dead_channels(learner, train, 0.99, 128, torch.float64) == []
    for key, value in learner.model.state_dict().items():
        assert torch.equal(value, state[key])


def test_snapping_needs_a_model_that_has_it_and_a_threshold():
    learner = construction("float64")                                  # linear attention
    assert snap_dead_channels(learner, drawer(learner)(8), 1e-4, 128, torch.float64) == []
    learner = baseconv_construction()
    assert snap_dead_channels(learner, drawer(learner)(8), 0.0, 128, torch.float64) == []
    with pytest.raises(ValueError, match="snap_rtol"):
        FinisherSettings(snap_rtol=1.0)
    with pytest.raises(ValueError, match="rtol"):
        learner.model.snap_dead_channels(learner.layout.encode(*drawer(learner)(2)[:3]), 0)
