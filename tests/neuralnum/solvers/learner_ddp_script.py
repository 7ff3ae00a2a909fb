"""Run by test_learner under ``torchrun --nproc_per_node=2`` (and once without it): fit a
stand-in learner and write its metric records to the JSON file given as argv[1]."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[2]))  # tests/: the shared stand-ins
from learner_standins import ScaledGradient

from neuralnum.core.runtime import init_distributed
from neuralnum.problems.families import GaussianFamily
from neuralnum.solvers.learner import Learner
from neuralnum.training.recipe import Recipe

torch.set_num_threads(1)
dist = init_distributed(device="cpu")
recipe = Recipe(lr=0.05, batch_size=16, max_batch_size=32, adaptive_every=3, warmup=2)
learner = Learner(ScaledGradient(8, 2), "gd", recipe, n=8, d=2)
records = learner.fit(GaussianFamily(n=8, d=2), steps=12, log_every=3, eval_batch=16,
                      distributed=dist)
if dist.is_main:
    Path(sys.argv[1]).write_text(json.dumps({"world": dist.world_size, "records": records}))
dist.close()
