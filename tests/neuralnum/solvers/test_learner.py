"""neuralnum.solvers.learner / objectives / solvers: training, exact resume, DDP, solving."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from learner_standins import ScaledGradient, one_thread  # noqa: F401 (autouse fixture)

import neuralnum
from neuralnum.core.runtime import CheckpointError
from neuralnum.problems import reference
from neuralnum.problems.families import GaussianFamily, SpectrumFamily
from neuralnum.problems.targets import FixedStep, GDStep, InverseLipschitzStep, contraction_factor
from neuralnum.solvers.learner import Learner
from neuralnum.solvers.operators import LearnedOperator
from neuralnum.training.objectives import SolutionObjective, UpdateObjective, objective_from_dict
from neuralnum.training.recipe import Recipe

DTYPES = [torch.float32, torch.float64]
NAME = {torch.float32: "float32", torch.float64: "float64"}
N, D = 8, 2
FAMILY = GaussianFamily(n=N, d=D)
FAST = dict(lr=0.05, batch_size=16, max_batch_size=64, warmup=2, adaptive_every=3)


def make(dtype=torch.float64, init=0.5, recipe=None, **kw):
    recipe = recipe or Recipe(dtype=NAME[dtype], **FAST)
    return Learner(ScaledGradient(N, D, init), "gd", recipe, n=N, d=D, **kw)


def exact(dtype):
    learner = make(dtype, init=1.0)
    return learner


def problems(batch, seed, dtype, family=FAMILY):
    return family.sample(batch, torch.Generator().manual_seed(seed), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_lowers_error(dtype):
    learner = make(dtype)
    records = learner.fit(FAMILY, steps=60, log_every=20, eval_batch=64)
    assert [r["step"] for r in records] == [20, 40, 60]
    assert records[-1]["mse"] < records[0]["mse"] / 10
    assert records[-1]["digits"] > records[0]["digits"]
    assert learner.model.w.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_model_step_is_gd(dtype):
    P = problems(4, 1, dtype)
    x = torch.randn(4, D, generator=torch.Generator().manual_seed(2), dtype=dtype)
    eps = torch.finfo(dtype).eps
    got, want = exact(dtype).step(P.A, P.b, x), GDStep()(P.A, P.b, x)
    assert torch.allclose(got, want, rtol=100 * eps, atol=100 * eps)


def test_mixed_precision_keeps_float64_masters_and_computes_in_float32():
    mixed = make(recipe=Recipe(dtype="mixed", **FAST))
    full = make(torch.float64)
    P = problems(4, 3, torch.float64)
    x = P.x_star + 1
    out_m, out_f = mixed.forward(P.A, P.b, x), full.forward(P.A, P.b, x)
    assert out_m.dtype == torch.float64 and mixed.model.w.dtype == torch.float64
    gap = float(((out_m - out_f).abs().max() / out_f.abs().max()).detach())
    assert 1e-12 < gap < 1e-5  # float32 rounding, not float64 and not garbage
    mixed.fit(FAMILY, steps=3, log_every=3, eval_batch=8)
    assert mixed.model.w.grad.dtype == torch.float64


@pytest.mark.parametrize("dtype", DTYPES)
def test_resume_is_exact(tmp_path, dtype):
    # the cosine horizon is pinned: the 12-step run stands in for a crash of the 24-step one
    recipe = Recipe(dtype=NAME[dtype], **{**FAST, "grad_ema": 0.9, "weight_ema": 0.0,
                                          "total_steps": 24})
    straight = make(dtype, recipe=recipe)
    full = straight.fit(FAMILY, steps=24, log_every=4, eval_batch=16,
                        metrics=tmp_path / "a.jsonl")
    ckpt, log = tmp_path / "b.pt", tmp_path / "b.jsonl"
    make(dtype, recipe=recipe).fit(FAMILY, steps=12, log_every=4, eval_batch=16,
                                   checkpoint=ckpt, checkpoint_every=4, metrics=log)
    resumed = make(dtype, recipe=recipe)  # a fresh object, as after a crash
    rest = resumed.fit(FAMILY, steps=24, log_every=4, eval_batch=16, checkpoint=ckpt,
                       checkpoint_every=4, metrics=log, resume=True)
    assert rest == full  # every loss, lr, batch size and eval metric identical
    assert [json.loads(s) for s in log.read_text().splitlines()] == full
    assert torch.equal(resumed.model.w, straight.model.w)


def test_until_mse_and_callbacks_stop(tmp_path):
    with pytest.raises(ValueError, match="total_steps"):  # cosine over an open-ended fit
        make().fit(FAMILY, until_mse=math.inf)
    learner = make(recipe=Recipe(dtype="float64", **FAST, lr_decay="none"))
    seen = []
    records = learner.fit(FAMILY, until_mse=math.inf, log_every=2, eval_batch=8)
    assert records[-1]["step"] == 2
    records = make().fit(FAMILY, steps=50, log_every=2, eval_batch=8,
                         callbacks=[lambda lr, rec: seen.append(rec["step"]) or len(seen) == 3])
    assert seen == [2, 4, 6] and records[-1]["step"] == 6
    with pytest.raises(ValueError, match="steps"):
        learner.fit(FAMILY)


def test_pool_finisher_and_weight_average_paths():
    recipe = Recipe(dtype="float64", fresh=False, pool_size=64, finisher_steps=5,
                    weight_ema=0.5, **FAST)
    learner = make(recipe=recipe)
    records = learner.fit(FAMILY, steps=10, log_every=5, eval_batch=16)
    assert records[-1].get("final") is True
    assert records[-1]["mse"] < records[0]["mse"]


@pytest.mark.parametrize("dtype", DTYPES)
@given(delta=st.floats(-0.3, 0.3), bias=st.floats(-1e-3, 1e-3), seed=st.integers(0, 10**6),
       iters=st.integers(1, 40))
def test_iterated_error_bound(dtype, delta, bias, seed, iters):
    """x_k of a step with per-step error e_j obeys
    ‖x_k − x*‖ ≤ ρ^k‖x_0 − x*‖ + Σ_j ρ^(k−1−j)·η·n·‖e_j‖ (ρ, η: exact GD's)."""
    learner = make(dtype, init=1.0 + delta)
    with torch.no_grad():
        learner.model.c.fill_(bias)
    P = problems(3, seed, torch.float64, SpectrumFamily(n=N, d=D, cond=4.0))
    A, b, x_star = P.A.to(dtype), P.b.to(dtype), P.x_star.to(dtype)
    eta = GDStep().eta(A)
    rho = contraction_factor(A.double(), eta.double())
    x = torch.zeros_like(x_star)
    bound = (x - x_star).double().norm(dim=1)
    for _ in range(iters):
        out = learner.forward(A, b, x)
        e = (out - UpdateObjective().label(A, b, x, x_star)).double().norm(dim=1)
        x = learner.step(A, b, x)
        bound = rho * bound + eta.double() * N * e
    err = (x - x_star).double().norm(dim=1)
    # Each step rounds relative to ‖x_k‖ ≤ ‖x*‖ + bound (the iterate may grow when
    # delta makes the step expand), so the slack scales with that magnitude.
    magnitude = 1 + x_star.double().norm(dim=1) + bound
    slack = 1e3 * torch.finfo(dtype).eps * magnitude * iters
    assert (err <= bound + slack).all()


@pytest.fixture(scope="module")
def trained():
    """A stand-in learner trained briefly on κ ≤ 5 problems, per dtype."""
    out = {}
    for dtype in DTYPES:
        learner = make(dtype, recipe=Recipe(dtype=NAME[dtype], **{**FAST, "lr": 0.05}))
        learner.fit(SpectrumFamily(n=N, d=D, cond=5.0), steps=80, log_every=80,
                    eval_batch=64)
        out[dtype] = learner
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=10)
@given(seed=st.integers(0, 10**6), cond=st.floats(1.0, 5.0))
def test_solve_agrees_with_lstsq_to_reached_precision(trained, dtype, seed, cond):
    learner = trained[dtype]
    P = problems(4, seed, dtype, SpectrumFamily(n=N, d=D, cond=cond))
    x_ref = reference.lstsq(P.A, P.b)
    x = learner.solve(P.A, P.b, warn=False)
    # the learned operator (on the equilibrated problem the solver builds) is affine:
    # g(x) = W·M (x − x*) + e with W = diag(w), M = AᵀA/n and e = g(x*) its error at the
    # solution, so its fixed point is x* − (W M)⁻¹ e: CG lands within ‖e‖/(min w·λ_min(M))
    op = LearnedOperator(learner, P.A, P.b)
    x_eq, ref_eq = op.to_equilibrated(x), op.to_equilibrated(x_ref)
    e = op.gradient(ref_eq, torch.arange(4)).double().norm(dim=1)
    lam = torch.linalg.eigvalsh(op.A.double().mT @ op.A.double() / N)[:, 0]
    w = learner.model.w.detach().double().abs().min()
    bound = e / (w * lam) * 1.5 + 1e3 * torch.finfo(dtype).eps * (
        1 + ref_eq.double().norm(dim=1))
    assert ((x_eq - ref_eq).double().norm(dim=1) <= bound).all()
    # stopping at the operator's precision floor ("stagnated") is how a learned solve
    # normally ends, and is reported apart from "converged"; a divergence must not happen
    assert not learner.last_solve.diverged.any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_solve_shapes_iters_tol_and_front_door(dtype):
    learner = exact(dtype)
    P = problems(3, 5, dtype, SpectrumFamily(n=N, d=D, cond=2.0))
    eps = torch.finfo(dtype).eps
    assert learner.solve(P.A, P.b, method="gd", iters=3).shape == (3, D)
    assert (learner.last_solve.iterations == 3).all()
    x = learner.solve(P.A, P.b, tol=1e3 * eps)
    assert learner.last_solve.converged.all() and (learner.last_solve.iterations < 200).all()
    x1 = learner.solve(P.A[0], P.b[0], iters=200, x0=torch.zeros(D, dtype=dtype))
    assert x1.shape == (D,)
    assert torch.allclose(x1, x[0], atol=1e3 * eps)
    # scipy-shaped front door: (n, d), (n,) / (n, k) / batched; numpy in, numpy out
    A_np, B_np = P.A[0].numpy(), P.b[:2].T.numpy().copy()
    x_np = neuralnum.lstsq(A_np, B_np, solver=learner).x
    assert isinstance(x_np, np.ndarray) and x_np.shape == (D, 2)
    ref_np = neuralnum.lstsq(A_np, B_np).x
    # a solver on the normal equations stalls where the computed gradient is rounding
    # noise: each entry of Aᵀ(Ax − b) sums ~n products, an error ~n·eps·‖A‖²‖x‖, which maps
    # to an error in x of κ² times that relative to ‖x‖ (here κ = 2, n = N = 8); ×2 for
    # scipy's own rounding (the bound gives 64·eps·(1 + |x|))
    atol = 2 * 2.0**2 * N * float(eps) * (1 + np.abs(ref_np).max())
    assert np.allclose(x_np, ref_np, rtol=0, atol=atol)
    assert neuralnum.lstsq(P.A[0], P.b[0], solver=learner).x.shape == (D,)
    assert neuralnum.lstsq(P.A, P.b, solver=learner, iters=2).x.shape == (3, D)
    with pytest.raises(ValueError, match="rows"):
        neuralnum.lstsq(A_np, B_np[:-1])  # b's rows must match A's
    with pytest.raises(TypeError, match="learned solver"):
        neuralnum.lstsq(P.A, P.b, iters=3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bad_input_raises(dtype):
    learner = exact(dtype)
    P = problems(2, 0, dtype)
    bad = P.A.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="A contains NaN"):
        learner.solve(bad, P.b)
    with pytest.raises(ValueError, match="b must have shape"):
        learner.step(P.A, P.b[:, :-1], P.x_star)
    with pytest.raises(ValueError, match=r"cannot solve A of shape .* use the shipped "
                                         r"shape-general solver \(neuralnum.lstsq\(A, b, "
                                         r"solver=\"learned\"\)"):
        learner.solve(problems(2, 0, dtype, GaussianFamily(n=N, d=D + 1)).A,
                      problems(2, 0, dtype, GaussianFamily(n=N, d=D + 1)).b)
    other = torch.float64 if dtype == torch.float32 else torch.float32
    with pytest.raises(TypeError, match="dtype"):
        learner.solve(P.A.to(other), P.b.to(other))
    with pytest.raises(ValueError, match="tol"):
        learner.solve(P.A, P.b, tol=-1.0)
    with pytest.raises(ValueError, match="learner was built"):
        learner.fit(GaussianFamily(n=N + 1, d=D), steps=1)
    with pytest.raises(TypeError, match="arch"):
        Learner(42, "gd")
    with pytest.raises(TypeError, match="target"):
        Learner(ScaledGradient(N, D), "nonsense", n=N, d=D)


def test_save_load_and_incompatible_checkpoints(tmp_path):
    learner = make(init=0.8)
    path = learner.save(tmp_path / "l.pt")
    loaded = Learner.load(path, arch=ScaledGradient(N, D))
    P = problems(3, 9, torch.float64)
    assert torch.equal(loaded.solve(P.A, P.b, iters=5), learner.solve(P.A, P.b, iters=5))
    with pytest.raises(CheckpointError, match="custom module"):
        Learner.load(path)
    with pytest.raises(CheckpointError, match="incompatible: d"):
        Learner(ScaledGradient(N, D + 1), "gd", n=N, d=D + 1).load_weights(path)
    with pytest.raises(CheckpointError, match="incompatible: objective"):
        Learner(ScaledGradient(N, D), "solution", n=N, d=D).load_weights(path)
    torch.save({"format": "something else"}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a neuralnum"):
        learner.load_weights(tmp_path / "x.pt")


def test_objectives_round_trip_and_end_to_end_solve():
    for obj in (UpdateObjective(GDStep(InverseLipschitzStep()), spread=2.0),
                UpdateObjective(GDStep(FixedStep(0.1))), SolutionObjective()):
        assert objective_from_dict(obj.to_dict()) == obj
    e2e = Learner(ScaledGradient(N, D), "solution", n=N, d=D)
    P = problems(2, 4, torch.float64)
    x = e2e.solve(P.A, P.b, iters=50)
    assert x.shape == (2, D) and (e2e.last_solve.iterations == 1).all()
    e2e.fit(FAMILY, steps=2, log_every=2, eval_batch=4)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_single_process(tmp_path):
    script = Path(__file__).with_name("learner_ddp_script.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parents[3]), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                    f"--master_port={_free_port()}", str(script), str(tmp_path / "ddp.json")],
                   check=True, env=env, timeout=120, capture_output=True)
    subprocess.run([sys.executable, str(script), str(tmp_path / "one.json")], check=True,
                   env=env, timeout=120, capture_output=True)
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    one = json.loads((tmp_path / "one.json").read_text())
    assert ddp["world"] == 2 and one["world"] == 1
    assert [r["step"] for r in ddp["records"]] == [3, 6, 9, 12]
    for a, b in zip(ddp["records"], one["records"], strict=True):
        assert a["batch"] == b["batch"]
        for key in ("loss", "mse"):
            assert a[key] == pytest.approx(b[key], rel=1e-9)


@pytest.mark.parametrize("arch", ["baseconv", "linear_attention"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_real_arch_from_exact_construction_solves_to_machine_precision(arch, dtype):
    learner = Learner(arch, "gd", Recipe(dtype=NAME[dtype]), n=N, d=D).init_construction()
    P = problems(4, 11, dtype, SpectrumFamily(n=N, d=D, cond=3.0))
    x = torch.randn(4, D, generator=torch.Generator().manual_seed(1), dtype=dtype)
    metrics = learner.evaluate(P.A, P.b, x, UpdateObjective().label(P.A, P.b, x, P.x_star))
    assert metrics["digits"] > -math.log10(torch.finfo(dtype).eps) - 3
    x_ref = reference.lstsq(P.A, P.b)
    err = reference.relative_error(learner.solve(P.A, P.b), x_ref)
    assert (err < 1e3 * torch.finfo(dtype).eps).all()
    noisy = Learner(arch, "gd", Recipe(dtype=NAME[dtype]), n=N, d=D).init_construction(1e-3)
    assert noisy.evaluate(P.A, P.b, x, UpdateObjective().label(P.A, P.b, x, P.x_star))[
        "mse"] > 100 * max(metrics["mse"], torch.finfo(dtype).tiny)
    with pytest.raises(ValueError, match="init_construction"):
        Learner("transformer", "solution", n=N, d=D).init_construction()


def test_end_to_end_transformer_through_the_learner(tmp_path):
    learner = Learner("transformer", "solution", Recipe(lr=1e-3, batch_size=8,
                      max_batch_size=8), n=N, d=D, n_layers=1,
                      arch_options={"width": 8, "n_heads": 2})
    records = learner.fit(FAMILY, steps=4, log_every=2, eval_batch=8)
    assert len(records) == 2 and all(math.isfinite(r["mse"]) for r in records)
    P = problems(3, 2, torch.float64)
    assert learner.solve(P.A, P.b).shape == (3, D)
    assert (learner.last_solve.iterations == 1).all()
    path = learner.save(tmp_path / "t.pt")
    again = Learner.load(path)
    assert torch.equal(again.solve(P.A, P.b), learner.solve(P.A, P.b))


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_prediction_is_not_rounded_at_the_iterates_scale(dtype):
    # small A (1e-3), x = x* + 1e-2·z: the gradient Aᵀ(Ax − b)/n is ~1e-8 of |x|. Read as
    # x − (x + Δx) it would carry an absolute error u·|x|, relative ~1e8·u (float32:
    # garbage); the increment read-out keeps the construction's residual-first error,
    # relative ~u/1e-2
    learner = Learner("linear_attention", "gd", Recipe(dtype=NAME[dtype]), n=N,
                      d=D).init_construction()
    gen = torch.Generator().manual_seed(4)
    A = 1e-3 * torch.randn(64, N, D, generator=gen, dtype=torch.float64)
    x_star = torch.randn(64, D, generator=gen, dtype=torch.float64)
    b = torch.einsum("bnd,bd->bn", A, x_star)
    x = x_star + 1e-2 * torch.randn(64, D, generator=gen, dtype=torch.float64)
    A, b, x = A.to(dtype), b.to(dtype), x.to(dtype)
    label = torch.einsum("bnd,bn->bd", A.double(),
                         torch.einsum("bnd,bd->bn", A.double(), x.double()) - b.double()) / N
    with torch.no_grad():
        pred = learner.forward(A, b, x).double()
    rel = ((pred - label).norm(dim=1) / label.norm(dim=1)).median()
    assert rel < 1e4 * torch.finfo(dtype).eps
