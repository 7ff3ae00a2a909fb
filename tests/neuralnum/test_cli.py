"""python -m neuralnum: train / solve / demo end to end on tiny settings."""

import json

import pytest
import torch
from learner_standins import one_thread  # noqa: F401 (autouse fixture)

from neuralnum.cli import main, parse_command
from neuralnum.solvers.axial_learner import AxialLearner
from neuralnum.solvers.learner import Learner
from neuralnum.solvers.pretrained import pretrained
from neuralnum.training.recipe import Recipe

TINY = ["--n", "6", "--d", "2", "--log-every", "2", "--eval-batch", "8", "--batch-size", "8",
        "--max-batch-size", "8"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_train_then_solve(tmp_path, dtype, capsys):
    ckpt = tmp_path / "l.pt"
    out = main(["train", "--arch", "baseconv", "--dtype", dtype, "--steps", "4",
                "--init", "construct", "--init-noise", "1e-6", "--lr", "1e-7",
                "--out", str(ckpt), *TINY])
    assert out["steps"] == 4 and ckpt.is_file()
    records = [json.loads(s) for s in ckpt.with_suffix(".jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    learner = Learner.load(ckpt)
    assert learner.recipe.dtype == dtype and learner.n == 6
    report = main(["solve", "--checkpoint", str(ckpt), "--n", "6", "--d", "2",
                   "--problems", "4", "--iters", "200", "--judge", "mpmath"])
    text = capsys.readouterr().out
    assert "learned" in text and "scipy" in text
    # a near-exact GD step (weights perturbed by 1e-6), iterated on κ ≤ 5 problems
    assert report["learned"]["rel_error"] < 1e-3
    assert report["learned"]["diverged"] == 0
    # scipy judged by mpmath (an independent solver): rounding-level error, not exactly 0
    assert 0 < report["scipy"]["rel_error"] < 1e3 * torch.finfo(learner.dtype).eps


def test_resume_continues_to_the_same_steps(tmp_path):
    ckpt = tmp_path / "l.pt"
    common = ["train", "--out", str(ckpt), "--checkpoint-every", "2", *TINY]
    main([*common, "--steps", "2"])
    out = main([*common, "--steps", "4", "--resume"])
    assert out["steps"] == 4
    steps = [json.loads(s)["step"] for s in ckpt.with_suffix(".jsonl").read_text().splitlines()]
    assert steps == [2, 4]


def test_demo_runs_end_to_end(tmp_path, capsys):
    main(["demo", "--steps", "2", "--problems", "4", "--judge", "scipy", "--iters", "50",
          "--out", str(tmp_path / "d.pt"), *TINY])
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["steps"] == 2 and set(summary) >= {"learned", "scipy"}


def test_flags_build_the_recipe_and_bad_values_are_refused():
    def recipe(*flags):
        return parse_command(["train", *flags]).recipe

    assert recipe() == Recipe() and recipe("--baseline") == Recipe.baseline()
    assert recipe("--no-fresh", "--betas", "0.8", "0.9", "--lr", "0.5") == Recipe(
        fresh=False, betas=(0.8, 0.9), lr=0.5)
    assert recipe("--baseline", "--dtype", "mixed") == Recipe.baseline(dtype="mixed")
    assert recipe("--lm-minutes", "3", "--lm-geodesic").lm.engine.geodesic
    with pytest.raises(SystemExit):
        main(["train", "--bogus", "1", "--steps", "1"])
    with pytest.raises(SystemExit):
        main(["train", "--fresh", "maybe", "--steps", "1"])
    with pytest.raises(SystemExit):
        main(["train", "--arch", "nope"])
    with pytest.raises(ValueError, match=r"lr must be in \(0, inf\)"):
        main(["train", "--lr", "0", "--steps", "1"])
    with pytest.raises(ValueError, match="give --steps"):
        main(["train", "--n", "6", "--d", "2"])


def test_solve_without_a_checkpoint_uses_the_shipped_shape_general_solver(capsys):
    report = main(["solve", "--n", "60", "--d", "12", "--problems", "4", "--judge",
                   "scipy", "--method", "lsqr"])
    assert report["learned"]["digits"] > 13 and report["learned"]["diverged"] == 0
    assert "learned" in capsys.readouterr().out


def test_a_short_pretrain_moves_toward_the_shipped_weights(tmp_path):
    """The documented command, run briefly: its deployed coefficients end closer to the
    shipped ones than they started, and it writes a loadable checkpoint with provenance."""
    start = AxialLearner().coefficients()
    shipped = pretrained().coefficients()
    out = tmp_path / "axial.pt"
    provenance = main(["pretrain", "--steps", "150", "--finisher-steps", "4",
                       "--lm-problems", "48", "--eval-batch", "24", "--n-max", "8",
                       "--d-max", "4", "--group", "8", "--no-show-progress",
                       "--out", str(out)])
    learned = AxialLearner.load(out)
    assert learned.provenance == provenance and provenance["adam_steps"] == 150

    def distance(c):
        return float((c.rows - shipped.rows).norm() + (c.cols - shipped.cols).norm())

    assert distance(learned.coefficients()) < 1e-3 * distance(start)
