"""neuralnum.training.loop (the one loop) and neuralnum.core.flags (config → flags): seams."""

import argparse
from dataclasses import dataclass, field

import pytest
import torch
from learner_standins import ScaledGradient, one_thread  # noqa: F401 (autouse fixture)

from neuralnum.core.flags import add_dataclass_arguments, dataclass_from_args
from neuralnum.core.runtime import CheckpointError, Distributed, save_checkpoint
from neuralnum.core.validation import Precision, parse_precision
from neuralnum.problems.families import GaussianFamily
from neuralnum.solvers.learner import Learner
from neuralnum.training.fit import ProblemTask
from neuralnum.training.loop import (
    Finisher,
    FinisherProblem,
    Hook,
    Loop,
    LoopConfig,
    Schedule,
    Task,
    train,
)
from neuralnum.training.recipe import Recipe

N, D = 8, 2
FAMILY = GaussianFamily(n=N, d=D)


class Quadratic(Task):
    """Batches of targets ``y``; loss ``mean (w − y)²`` of a one-parameter model."""

    def sample(self, size, gen):
        return (torch.randn(size, generator=gen, dtype=torch.float64),)

    def loss(self, model, batch):
        return (model.w - batch[0]).pow(2).mean()

    def residuals(self, forward, batch):
        return (forward() - batch[0]) / batch[0].numel() ** 0.5

    def evaluate(self, model):
        return {"w": float(model.w.detach())}


class Scalar(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self):
        return self.w


class GaussNewton(Finisher):
    """A residual-based finisher (stands in for Levenberg–Marquardt): one Gauss–Newton
    step through ``torch.func.jacrev`` of the pure residual function."""

    batch_size = 64

    def run(self, problem: FinisherProblem):
        params = {k: v.detach().clone() for k, v in problem.params.items()}
        r = problem.residuals(params)
        (jac,) = torch.func.jacrev(problem.residuals)(params).values()
        jac = jac.reshape(r.numel(), -1)
        step = torch.linalg.lstsq(jac, -r.unsqueeze(1)).solution.squeeze(1)
        problem.load({"w": params["w"] + step.reshape(params["w"].shape)})
        self.loss = float(problem.closure())
        return {"finisher_loss": self.loss, "residual_loss": float(r.pow(2).sum())}


def _loop(hooks=(), finishers=(), lr=0.1):
    model = Scalar()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return Loop(model, Quadratic(), optimizer, hooks=hooks, finishers=finishers)


def test_finisher_gets_a_closure_and_pure_residuals_of_one_fixed_batch():
    finisher = GaussNewton()
    loop = _loop(finishers=[finisher])
    result = train(loop, LoopConfig(steps=3, batch_size=8, show_progress=False), Distributed())
    final = result.records[-1]
    assert final["final"] and final["step"] == 3
    # the residual vector's squared sum is the loss, and one Gauss–Newton step solves the
    # linear least-squares problem: w = mean of the finisher's batch, loss = its variance
    assert final["residual_loss"] > final["finisher_loss"]
    gen = torch.Generator().manual_seed(0)
    for size in (8, 8, 8):
        torch.randn(size, generator=gen, dtype=torch.float64)
    batch = torch.randn(64, generator=gen, dtype=torch.float64)
    assert float(loop.model.w.detach()) == pytest.approx(float(batch.mean()), rel=1e-12)
    assert final["finisher_loss"] == pytest.approx(float(batch.var(unbiased=False)), rel=1e-12)


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
    result = train(loop, LoopConfig(steps=2, batch_size=4, show_progress=False), Distributed())
    assert hook.calls == ["batch_size", "on_gradients", "after_step 0",
                          "batch_size", "on_gradients", "after_step 1"]
    assert float(loop.model.w.detach()) == 0.0
    assert [r["batch"] for r in result.records] == [8, 8]
    assert all(r["edited"] == 1.0 and r["w"] == 0.0 for r in result.records)


def test_resume_refuses_other_formats_and_plugins(tmp_path):
    ckpt = tmp_path / "c.pt"
    cfg = LoopConfig(steps=2, batch_size=4, checkpoint=ckpt, show_progress=False)
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


@pytest.mark.parametrize("relative", [False, True])
def test_learner_residuals_square_to_the_loss(relative):
    learner = Learner(ScaledGradient(N, D, 0.7), "gd",
                      Recipe(relative_loss=relative, batch_size=8), n=N, d=D)
    task = ProblemTask(learner, FAMILY, seed=0, eval_batch=4)
    batch = task.sample(8, torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = task.loss(learner.net, batch)
        residuals = task.residuals(learner.net, batch)
    assert residuals.shape == (8 * D,)
    assert float(residuals.pow(2).sum()) == pytest.approx(float(loss), rel=1e-12)


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


# --------------------------------------------------------------------------- cli
@dataclass(frozen=True)
class Inner:
    width: int = 4
    name: str = "a"


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    rate: float = 0.5
    pair: tuple[float, float] = (1.0, 2.0)
    flag: bool = True

    def __post_init__(self):
        if self.rate <= 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")


def _parse(argv, **options):
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Outer, **options)
    return parser.parse_args(argv)


def test_cli_flags_for_nested_tuple_and_bool_fields():
    args = _parse(["--width", "7", "--pair", "3", "4", "--no-flag", "--rate", "2"])
    assert dataclass_from_args(Outer, args) == Outer(Inner(width=7), 2.0, (3.0, 4.0), False)
    assert dataclass_from_args(Outer, _parse([])) == Outer()
    base = Outer(rate=9.0)
    given = _parse(["--name", "b"], suppress=True)
    assert vars(given) == {"inner.name": "b"}
    assert dataclass_from_args(Outer, given, base=base) == Outer(Inner(name="b"), 9.0)
    with pytest.raises(ValueError, match="rate must be"):
        dataclass_from_args(Outer, _parse(["--rate", "-1"]))


def test_cli_refuses_duplicate_flags_and_unknown_types():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate")
    with pytest.raises(ValueError, match="already defined"):
        add_dataclass_arguments(parser, Outer)

    @dataclass
    class Odd:
        thing: object = None

    with pytest.raises(TypeError, match="cannot make a flag"):
        add_dataclass_arguments(argparse.ArgumentParser(), Odd)
