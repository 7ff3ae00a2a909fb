"""The recipe (neuralnum.training.recipe), its hooks and assembly: configuration, LR control,
noise control and the loss."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from learner_standins import one_thread  # noqa: F401 (autouse fixture)

from neuralnum.core.validation import Precision
from neuralnum.training.assembly import make_optimizer, make_schedule, make_training
from neuralnum.training.hooks import (
    AdaptiveLR,
    AverageRestart,
    BatchSchedule,
    GradientFilter,
    PlateauDecay,
    cosine_similarity,
)
from neuralnum.training.objectives import loss_fn
from neuralnum.training.plugins import ema_average
from neuralnum.training.recipe import ABLATIONS, Recipe

DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("bad, match", [
    ({"dtype": "float16"}, "dtype"), ({"lr": 0.0}, "lr"),
    ({"lr_decay": "linear"}, "lr_decay"), ({"grad_ema": 1.0}, "grad_ema"),
    ({"batch_size": 64, "max_batch_size": 32}, "max_batch_size"), ({"warmup": -1}, "warmup"),
    ({"adaptive_factor": 1.5}, "adaptive_factor"), ({"batch_growth": 0.5}, "batch_growth"),
])
def test_bad_config_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        Recipe(**bad)


def test_defaults_and_baseline_differ_in_every_component():
    full, base = Recipe(), Recipe.baseline()
    for component, fields in ABLATIONS.items():
        off = full.ablation(component)
        assert off != full, component
        for name, value in fields.items():
            assert getattr(off, name) == value
    assert base.eps == 1e-8 and base.adaptive_every == 0 and base.batch_growth == 1
    assert base.grad_ema == 0 and not base.relative_loss and base.warmup == 0
    with pytest.raises(ValueError, match="unknown component"):
        full.ablation("magic")


@given(lr=st.floats(1e-6, 1.0), eps=st.floats(1e-20, 1e-6), batch=st.integers(1, 64),
       dtype=st.sampled_from(["float32", "float64", "mixed"]), ema=st.floats(0, 0.999))
def test_dict_round_trip(lr, eps, batch, dtype, ema):
    recipe = Recipe(lr=lr, eps=eps, batch_size=batch, dtype=dtype, grad_ema=ema)
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    with pytest.raises(ValueError, match="unknown recipe fields"):
        Recipe.from_dict({**recipe.to_dict(), "bogus": 1})


def test_precision():
    assert Recipe(dtype="mixed").precision == Precision("mixed", torch.float64, torch.float32)
    assert Recipe(dtype="mixed").precision.mixed and not Recipe(dtype="float32").precision.mixed
    with pytest.raises(ValueError, match="dtype must be one of"):
        Recipe(dtype="bfloat16")  # a model precision the recipe does not train in


def test_optimizer_uses_recipe_eps_and_betas():
    p = torch.nn.Parameter(torch.zeros(2))
    group = make_optimizer([p], Recipe(eps=1e-16, betas=(0.8, 0.99))).param_groups[0]
    assert group["eps"] == 1e-16 and group["betas"] == (0.8, 0.99)


def test_lr_warmup_cosine_and_step():
    ramp = make_schedule(Recipe(lr=1.0, warmup=4, adaptive_every=0, lr_decay="none"))
    assert [ramp(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    ctl = make_schedule(Recipe(lr=1.0, warmup=0, lr_decay="cosine", total_steps=100,
                               adaptive_every=0, min_lr_factor=1e-3))
    assert ctl(0) == 1.0
    assert ctl(50) == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)
    assert ctl(100) == pytest.approx(1e-3)
    step = make_schedule(Recipe(lr=1.0, warmup=0, lr_decay="step", step_every=10,
                                step_factor=0.9, adaptive_every=0))
    assert step(9) == 1.0 and step(25) == pytest.approx(0.81)
    fit_long = make_schedule(Recipe(lr=1.0, lr_decay="cosine", min_lr_factor=1e-3), 100)
    assert fit_long(50) == pytest.approx(ctl(50))  # total_steps=0: the fit's steps
    with pytest.raises(ValueError, match="total_steps"):
        make_schedule(Recipe(lr_decay="cosine"))


def test_scheduler_applies_the_schedule_to_the_optimizer():
    made = make_training(Recipe(lr=0.5, warmup=2, lr_decay="cosine", total_steps=10,
                                min_lr_factor=0.1), torch.nn.Linear(1, 1), horizon=None)
    lrs = []
    for _ in range(12):
        lrs.append(made.optimizer.param_groups[0]["lr"])
        made.optimizer.step()
        made.scheduler.step()
    schedule = made.scheduler.lr_lambdas[0]
    assert lrs == [0.5 * schedule(s) for s in range(12)]
    assert lrs[:3] == [0.25, 0.5, 0.5] and lrs[-1] == pytest.approx(0.05)


@given(st.lists(st.floats(-1, 1), min_size=1, max_size=40))
def test_adaptive_lr_moves_by_factor(cosines):
    recipe = Recipe(lr=1.0, warmup=0, adaptive_every=10, adaptive_threshold=0.2,
                    adaptive_factor=0.9, lr_decay="none")
    schedule = make_schedule(recipe)
    ctl = AdaptiveLR(recipe, schedule, [])
    expected = 1.0
    for c in cosines:
        ctl.observe(c)
        expected = expected * 0.9 if c < 0.2 else min(1.0, expected / 0.9)
        assert schedule(10) == pytest.approx(max(expected, recipe.min_lr_factor))
    assert ctl.due(20) and not ctl.due(21)


def test_adaptive_lr_gradient_is_the_mean_of_the_half_batch_gradients():
    recipe = Recipe(lr=1.0, warmup=0, adaptive_every=2, lr_decay="none")
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    ctl = AdaptiveLR(recipe, make_schedule(recipe), [p])

    def backward(part):
        (values,) = part
        loss = (p * values).sum()
        loss.backward()
        return float(loss.detach())

    batch = (torch.tensor([1.0, 2.0, -5.0, -6.0], dtype=torch.float64),)
    assert ctl.backward(1, batch, backward) is None  # not due: the loop does it
    ctl.backward(2, batch, backward)
    assert float(p.grad) == pytest.approx((3.0 - 11.0) / 2)
    assert ctl.cosine == pytest.approx(-1.0)
    ctl.after_step(2, 0.0)
    assert ctl.factor == recipe.adaptive_factor and ctl.cosine is None


def test_plateau_decay_and_state_round_trip():
    recipe = Recipe(lr=1.0, warmup=0, adaptive_every=0, plateau_patience=3,
                    plateau_factor=0.5, lr_decay="none")
    schedule = make_schedule(recipe)
    ctl = PlateauDecay(recipe, schedule)
    for loss in [1.0, 0.5, 0.6, 0.6, 0.6]:
        ctl.after_step(0, loss)
    assert schedule(0) == 0.5
    other = PlateauDecay(recipe, make_schedule(recipe))
    other.load_state_dict(ctl.state_dict())
    assert other.state_dict() == ctl.state_dict()


def test_batch_grows_when_loss_falls_tenfold():
    sched = BatchSchedule(Recipe(batch_size=8, max_batch_size=32, batch_growth=2.0), 2)
    sched.observe(1.0)
    assert sched.size == 8
    for _ in range(60):
        sched.observe(1e-3)
    assert sched.size == 32  # capped
    with pytest.raises(ValueError, match="divisible"):
        BatchSchedule(Recipe(batch_size=9, max_batch_size=32), 2)
    fixed = BatchSchedule(Recipe.baseline())
    for loss in [1.0, 1e-6, 1e-9]:
        fixed.observe(loss)
    assert fixed.size == 32


@given(st.lists(st.floats(-10, 10), min_size=1, max_size=20), st.floats(0, 0.99))
def test_gradient_filter_formula(grads, beta):
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    filt = GradientFilter([p], beta, 2.0)
    ema = 0.0
    for g in grads:
        p.grad = torch.tensor([g], dtype=torch.float64)
        filt.apply()
        ema = beta * ema + (1 - beta) * g
        expected = g + 2.0 * ema if beta > 0 else g
        assert float(p.grad) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_weight_average():
    model = torch.nn.Linear(2, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.zero_()
    avg = ema_average(model, 0.5)
    with torch.no_grad():
        model.weight.fill_(4.0)
    avg.update_parameters(model)
    assert torch.equal(avg.module.weight.detach(), torch.full((1, 2), 2.0, dtype=torch.float64))
    assert ema_average(model, 0.0) is None


@pytest.mark.parametrize("dtype", DTYPES)
@given(scale=st.floats(1e-6, 1e6), seed=st.integers(0, 1000))
def test_relative_loss_is_scale_invariant(dtype, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    pred, target = torch.randn(2, 4, 3, generator=gen, dtype=dtype)
    rel = loss_fn(pred, target, relative=True)
    assert float(loss_fn(scale * pred, scale * target, relative=True)) == pytest.approx(
        float(rel), rel=1e-4 if dtype == torch.float32 else 1e-10)
    assert float(loss_fn(pred, target, relative=False)) == pytest.approx(
        float((pred - target).pow(2).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="shape"):
        loss_fn(pred, target[:, :2], relative=True)


def test_cosine_similarity():
    a = [torch.tensor([1.0, 2.0]), torch.tensor([3.0])]
    assert cosine_similarity(a, a) == pytest.approx(1.0)
    assert cosine_similarity(a, [-t for t in a]) == pytest.approx(-1.0)
    assert cosine_similarity(a, [torch.zeros(2), torch.zeros(1)]) == 0.0
    assert math.isfinite(cosine_similarity(a, [torch.ones(2), torch.ones(1)]))


def test_average_restart_begins_the_ema_at_ema_start():
    model = torch.nn.Linear(1, 1, bias=False)
    training = make_training(Recipe(weight_ema=0.9, ema_start=3), model, horizon=6)
    restart = [h for h in training.hooks if isinstance(h, AverageRestart)]
    assert len(restart) == 1 and restart[0].average is training.average
    with torch.no_grad():
        for step in range(6):
            model.weight.fill_(float(step))
            training.average.update_parameters(model)
            for hook in training.hooks:
                hook.after_step(step, 0.0)
    # steps 0-2 forgotten: the average restarts at step 3 (= 3), then 0.9·avg + 0.1·w
    expected = 0.9 * (0.9 * 3.0 + 0.1 * 4.0) + 0.1 * 5.0
    assert training.average.module.weight.item() == pytest.approx(expected, rel=1e-6)
    plain = make_training(Recipe(weight_ema=0.9), model, horizon=6)
    assert not any(isinstance(h, AverageRestart) for h in plain.hooks)
    with pytest.raises(ValueError, match="ema_start"):
        Recipe(weight_ema=0.9, ema_start=-1)
