"""neuralnum.training.loop (the one loop) and neuralnum.core.flags (config → flags): seams."""

import dataclasses

import pytest
import torch
from learner_standins import ScaledGradient, one_thread  # noqa: F401 (autouse fixture)

from neuralnum.core.runtime import CheckpointError, Distributed, save_checkpoint
from neuralnum.core.validation import Precision, parse_precision
from neuralnum.problems.families import GaussianFamily
from neuralnum.training.loop import FINISHER_STREAM, Loop, LoopConfig, RunOptions, train
from neuralnum.training.plugins import (
    Finisher,
    FinisherProblem,
    GradClip,
    Hook,
    Schedule,
    Task,
    make_scheduler,
)

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


def _scheduled_loop(generator=None):
    loop = _loop()
    loop.scheduler = make_scheduler(loop.optimizer, Schedule(warmup=2, horizon=6))
    loop.generator = generator
    return loop


def test_a_run_continued_in_memory_is_the_run_in_one_go():
    """``stop_at`` then ``start`` on the same loop (its generator kept) trains and logs
    exactly what one run does: same batches, same learning rates, same step numbers."""
    whole = _scheduled_loop()
    cfg = LoopConfig(steps=6, batch_size=4, log_every=1, show_progress=False)
    expected = train(whole, cfg, Distributed()).records
    parts = _scheduled_loop(torch.Generator().manual_seed(cfg.seed))
    first = train(parts, dataclasses.replace(cfg, stop_at=2), Distributed()).records
    rest = [train(parts, dataclasses.replace(cfg, start=k, stop_at=k + 1),
                  Distributed()).records for k in range(2, 6)]
    assert first + [r for records in rest for r in records] == expected
    assert float(parts.model.w.detach()) == float(whole.model.w.detach())
    with pytest.raises(ValueError, match=r"Loop\.generator"):
        train(_scheduled_loop(), dataclasses.replace(cfg, start=2), Distributed())


def test_a_scheduler_made_mid_run_starts_where_the_schedule_is():
    schedule = Schedule(warmup=2, horizon=10, min_factor=0.1)
    running = make_scheduler(torch.optim.SGD([torch.zeros(1)], lr=0.5), schedule)
    for _ in range(4):
        running.optimizer.step()
        running.step()
    fresh = make_scheduler(torch.optim.SGD([torch.zeros(1)], lr=0.5), schedule, start=4)
    assert fresh.get_last_lr() == running.get_last_lr() == [0.5 * schedule(4)]
    fresh.optimizer.step()
    fresh.step()
    assert fresh.get_last_lr() == [0.5 * schedule(5)]


def test_grad_clip_caps_the_norm_and_logs_it_before():
    model = Scalar()
    model.w.grad = torch.tensor(-8.0, dtype=torch.float64)
    assert GradClip(2.0).on_gradients(model) == {"grad_norm": 8.0}
    assert float(model.w.grad) == pytest.approx(-2.0)


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



