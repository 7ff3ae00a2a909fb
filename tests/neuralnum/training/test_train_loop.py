"""neuralnum.training.loop (the one loop) and neuralnum.core.flags (config → flags): seams."""


import pytest
import torch
from learner_standins import ScaledGradient, one_thread  # noqa: F401 (autouse fixture)

from neuralnum.core.runtime import CheckpointError, Distributed, save_checkpoint
from neuralnum.core.validation import Precision, parse_precision
from neuralnum.problems.families import GaussianFamily
from neuralnum.training.loop import FINISHER_STREAM, Loop, LoopConfig, RunOptions, train
from neuralnum.training.plugins import Finisher, FinisherProblem, Hook, Schedule, Task

N, D = 8, 2
FAMILY = GaussianFamily(n=N, d=D)


class Quadratic(Task):
    """Batches of targets ``y``; loss ``mean (w − y)²`` of a one-parameter model."""

    def sample(self, size, gen):
        return (torch.randn(size, generator=gen, dtype=torch.float64),)

    def loss(self, model, batch):
        return (model.w - batch[0]).pow(2).mean()

    def evaluate(self, model):
        return {"w": float(model.w.detach())}


class Scalar(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self):
        return self.w


class Newton(Finisher):
    """A closure-based finisher: one exact Newton step on the fixed batch's quadratic
    loss ``mean (w − y)²`` (its gradient from the closure, its curvature 2)."""

    batch_size = 64

    def run(self, problem: FinisherProblem):
        before = float(problem.closure())
        w = problem.params["w"]
        problem.load({"w": w.detach() - w.grad / 2})
        return {"finisher_loss": float(problem.closure()), "loss_before": before}


def _loop(hooks=(), finishers=(), lr=0.1):
    model = Scalar()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return Loop(model, Quadratic(), optimizer, hooks=hooks, finishers=finishers)


@pytest.mark.parametrize("steps", [0, 3])
def test_finisher_gets_a_closure_of_one_fixed_batch_from_its_own_stream(steps):
    loop = _loop(finishers=[Newton()])
    cfg = LoopConfig(steps=steps, batch_size=8, log_every=1, show_progress=False)
    final = train(loop, cfg, Distributed()).records[-1]
    assert final["final"] and final["step"] == steps
    assert final["loss_before"] > final["finisher_loss"]
    # the batch comes from the finishers' stream (seed + FINISHER_STREAM), whatever the
    # first-order phase drew: the step lands on its mean, the loss on its variance
    batch = torch.randn(64, generator=torch.Generator().manual_seed(FINISHER_STREAM),
                        dtype=torch.float64)
    assert float(loop.model.w.detach()) == pytest.approx(float(batch.mean()), rel=1e-12)
    assert final["finisher_loss"] == pytest.approx(float(batch.var(unbiased=False)), rel=1e-12)


def test_loop_config_extends_the_run_options():
    options = RunOptions(steps=5, seed=3, log_every=2, checkpoint="c.pt")
    cfg = LoopConfig.of(options, batch_size=4, desc="x")
    assert (cfg.steps, cfg.seed, cfg.log_every, cfg.batch_size) == (5, 3, 2, 4)
    assert str(cfg.checkpoint) == "c.pt" and cfg.desc == "x"
    with pytest.raises(ValueError, match="log_every"):
        RunOptions(log_every=0)
    with pytest.raises(ValueError, match="batch_size"):
        LoopConfig(batch_size=0)


class Recorder(Hook):
    def __init__(self):
        self.calls = []

    def batch_size(self, size):
        self.calls.append("batch_size")
        return size * 2

    def on_gradients(self, model):
        self.calls.append("on_gradients")
        model.w.grad.zero_()  # a hook may edit the gradient: nothing moves
        return {"edited": 1.0}

    def after_step(self, step, loss):
        self.calls.append(f"after_step {step}")


def test_hooks_choose_batch_edit_gradients_and_log():
    hook = Recorder()
    loop = _loop(hooks=[hook])
    cfg = LoopConfig(steps=2, batch_size=4, log_every=1, show_progress=False)
    result = train(loop, cfg, Distributed())
    assert hook.calls == ["batch_size", "on_gradients", "after_step 0",
                          "batch_size", "on_gradients", "after_step 1"]
    assert float(loop.model.w.detach()) == 0.0
    assert [r["batch"] for r in result.records] == [8, 8]
    assert all(r["edited"] == 1.0 and r["w"] == 0.0 for r in result.records)


def test_resume_refuses_other_formats_and_plugins(tmp_path):
    ckpt = tmp_path / "c.pt"
    cfg = LoopConfig(steps=2, batch_size=4, log_every=1, checkpoint=ckpt,
                     show_progress=False)
    train(_loop(), cfg, Distributed())
    again = LoopConfig(steps=4, batch_size=4, checkpoint=ckpt, resume=True,
                       show_progress=False)
    with pytest.raises(CheckpointError, match="other training plug-ins"):
        train(_loop(hooks=[Recorder()]), again, Distributed())
    save_checkpoint(ckpt, {"format": "neuralnum.train/0"})
    with pytest.raises(CheckpointError, match=r"is not a neuralnum\.train/1 checkpoint"):
        train(_loop(), again, Distributed())


def test_non_finite_loss_stops_with_a_clear_error():
    loop = _loop(lr=1e200)
    with pytest.raises(FloatingPointError, match="loss became"):
        train(loop, LoopConfig(steps=50, batch_size=4, show_progress=False), Distributed())


def test_schedule_scales_floor_and_validation():
    schedule = Schedule(decay="none", min_factor=0.1)
    schedule.scales["plateau"] = 0.5
    schedule.scales["adaptive"] = 0.5
    assert schedule(0) == 0.25
    schedule.scales["adaptive"] = 1e-3
    assert schedule(0) == 0.1
    with pytest.raises(ValueError, match="horizon"):
        Schedule(decay="cosine")
    with pytest.raises(ValueError, match="lr_decay"):
        Schedule(decay="linear", horizon=3)


def test_precision_vocabulary():
    assert parse_precision("bfloat16").autocast == torch.bfloat16
    assert parse_precision("bfloat16").param_dtype == torch.float32
    assert parse_precision("mixed").mixed and not parse_precision("float64").mixed
    assert parse_precision("mixed") == Precision("mixed", torch.float64, torch.float32)
    with pytest.raises(ValueError, match="precision must be one of"):
        parse_precision("bfloat16", ("float32", "float64", "mixed"))



