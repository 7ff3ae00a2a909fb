"""Training loop: config errors, LR schedule, exact resume, DDP gradient agreement."""

import itertools
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from neuralnum.runtime import CheckpointError, MetricsLog, load_checkpoint
from structured.train import TrainConfig, lr_at, main, train

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: 1 thread

ROOT = Path(__file__).resolve().parents[2]
TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 16, "batch_size": 4,
        "eval_batches": 1, "warmup_steps": 2, "plot": False, "device": "cpu"}


def _records(path):
    """Logged metrics without wall-clock throughput."""
    return [{k: v for k, v in r.items() if not k.endswith("_per_s")}
            for r in MetricsLog.read(path)]


@pytest.mark.parametrize(("changes", "match"), [
    ({"task": "translation"}, "task must be one of"),
    ({"model": "rwkv"}, "model must be one of"),
    ({"precision": "fp16"}, "precision must be"),
    ({"seq_len": 100}, "power-of-two"),
    ({"steps": 0}, "steps must be"),
    ({"task": "mqar", "seq_len": 16, "mqar_num_kv": 8}, "mqar needs seq_len"),
])
def test_bad_config_raises_before_work(changes, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**changes)


def test_cli_reports_bad_config():
    with pytest.raises(SystemExit, match="power-of-two"):
        main(["--task", "lm-causal", "--model", "m2", "--seq-len", "1000"])
    with pytest.raises(SystemExit, match="task must be one of"):
        main(["--task", "unknown"])


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, steps=20, min_lr_ratio=0.1)
    assert [lr_at(cfg, s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    lrs = [lr_at(cfg, s) for s in range(4, 21)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    assert lrs[-1] == pytest.approx(0.1)


@pytest.mark.parametrize("task", ["lm-causal", "vision"])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, task):
    cfg = TrainConfig(task=task, model="m2", steps=6, eval_every=2, ckpt_every=2,
                      out_dir=str(tmp_path / "full"), **TINY)
    full = train(cfg)
    part = replace(cfg, out_dir=str(tmp_path / "part"))
    train(part, stop_at=3)
    assert load_checkpoint(tmp_path / "part" / "ckpt.pt")["step"] == 3
    resumed = train(replace(part, resume=True))
    assert resumed["val_loss"] == full["val_loss"] and resumed["step"] == 6
    a = load_checkpoint(tmp_path / "full" / "ckpt.pt")
    b = load_checkpoint(tmp_path / "part" / "ckpt.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for pid, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][pid]["exp_avg_sq"])
    assert _records(tmp_path / "full" / "metrics.jsonl") == \
        _records(tmp_path / "part" / "metrics.jsonl")


def test_resume_refuses_a_different_config(tmp_path):
    cfg = TrainConfig(steps=2, out_dir=str(tmp_path), **TINY)
    train(cfg)
    with pytest.raises(CheckpointError, match="different config"):
        train(replace(cfg, lr=1e-2, resume=True))


@pytest.mark.parametrize("model", ["m2", "transformer"])
def test_bf16_masked_lm_run_writes_metrics_and_plot(tmp_path, model):
    cfg = TrainConfig(task="lm-masked", model=model, precision="bf16", steps=2,
                      eval_every=1, out_dir=str(tmp_path), **{**TINY, "plot": True})
    result = train(cfg)
    assert torch.isfinite(torch.tensor(result["val_loss"]))
    assert (tmp_path / "loss.png").stat().st_size > 0
    records = MetricsLog.read(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2] and "tok_per_s" in records[0]


def test_two_process_ddp_matches_single_process(tmp_path):
    """torchrun with 2 gloo processes: same losses, gradient norms and weights as 1 process.

    Masked LM makes the two halves of each batch hold different numbers of labelled
    tokens, so this also checks the global-count loss normalisation.
    """
    args = ["--task", "lm-masked", "--model", "m2", "--precision", "fp64", "--steps", "3",
            "--eval-every", "3", "--d-model", "16", "--n-layers", "1", "--seq-len", "16",
            "--batch-size", "4", "--eval-batches", "1", "--warmup-steps", "2", "--device", "cpu",
            "--no-plot"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "NEURALNUM_PROGRESS": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "structured.train",
         *args, "--out-dir", str(tmp_path / "ddp")],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=170, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = TrainConfig(task="lm-masked", precision="fp64", steps=3, eval_every=3,
                      out_dir=str(tmp_path / "single"), **{**TINY, "plot": False})
    train(cfg)
    ddp, single = (_records(tmp_path / d / "metrics.jsonl") for d in ("ddp", "single"))
    assert len(ddp) == len(single) == 3
    for a, b in zip(ddp, single, strict=True):
        for key in ("loss", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-12), key
    wa = load_checkpoint(tmp_path / "ddp" / "ckpt.pt")["model"]
    wb = load_checkpoint(tmp_path / "single" / "ckpt.pt")["model"]
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-12, atol=1e-12)
