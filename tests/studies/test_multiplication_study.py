"""Smoke and correctness checks of ``studies.multiplication`` at tiny sizes."""

from __future__ import annotations

import math

import pytest
import torch

from neuralnum.models import count_parameters
from studies.multiplication import (
    TASKS,
    Config,
    constructed_gd,
    iterated_gd,
    make_model,
    softmax_product_sweep,
    train,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("task", sorted(TASKS))
def test_models_share_a_budget(task):
    models = {a: make_model(a, TASKS[task], torch.float64)
              for a in ("baseconv", "linear_attention", "transformer")}
    base = count_parameters(models["baseconv"])
    assert abs(count_parameters(models["transformer"]) - base) <= 0.25 * base
    tokens, target = TASKS[task].sample(3, torch.Generator().manual_seed(0), torch.float64)
    for model in models.values():
        assert TASKS[task].readout(model(tokens)).shape == target.shape


def test_targets_are_what_they_claim():
    tokens, target = TASKS["product"].sample(4, torch.Generator().manual_seed(1), torch.float64)
    assert torch.equal(target, tokens[:, 0, 0] * tokens[:, 1, 1])
    cons = constructed_gd(torch.float64, 8, 0)
    assert max(cons.values()) < 1e-28  # exact constructions: float64 roundoff squared
    assert max(iterated_gd(torch.float64, 2, 150, 0).values()) < 1e-24


def test_train_runs_and_logs_a_curve():
    cfg = Config(steps={"product": 4, "gd_term": 4}, batch={"product": 8, "gd_term": 8},
                 evals=2, eval_batch=8)
    run = train("linear_attention", TASKS["product"], cfg, torch.float32)
    assert [s for s, _ in run["curve"]] == [0, 2, 4]
    assert math.isfinite(run["floor"]) and run["params"] > 0


def test_softmax_sweep_has_an_interior_optimum():
    sweep = dict(softmax_product_sweep(torch.float32, 256, 0))
    best = min(sweep, key=sweep.get)
    assert 1e-5 < best < 1e-1 and sweep[best] > 1e-12
