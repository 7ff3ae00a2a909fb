"""Training loop: config errors, LR schedule, exact resume, DDP gradient agreement."""

import itertools
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from neuralnum.core.runtime import CheckpointError, MetricsLog, load_checkpoint
from neuralnum.training.plugins import Schedule
from structured.models import ModelConfig
from structured.train import TrainConfig, main, parse_config, train

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: 1 thread

ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL = {"d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 16}
TINY = {"batch_size": 4, "eval_batches": 1, "warmup": 2, "plot": False, "device": "cpu"}


def tiny(arch="m2", **changes):
    """A tiny config: ``changes`` of TrainConfig fields on the TINY model of ``arch``."""
    return TrainConfig(model=ModelConfig(arch=arch, **TINY_MODEL), **{**TINY, **changes})


def _records(path):
    """Logged metrics without wall-clock throughput."""
    return [{k: v for k, v in r.items() if not k.endswith("_per_s")}
            for r in MetricsLog.read(path)]


@pytest.mark.parametrize(("changes", "match"), [
    ({"task": "translation"}, "task must be one of"),
    ({"precision": "fp16"}, "precision must be"),
    ({"precision": "mixed"}, "precision must be"),
    ({"steps": 0}, "steps must be"),
    ({"task": "mqar", "mqar_num_kv": 8}, "mqar needs seq_len"),
])
def test_bad_config_raises_before_work(changes, match):
    with pytest.raises(ValueError, match=match):
        tiny(**changes)


def test_cli_reports_bad_config():
    with pytest.raises(ValueError, match="power-of-two"):
        main(["--task", "lm-causal", "--arch", "m2", "--seq-len", "1000"])
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        main(["--task", "unknown"])
    with pytest.raises(SystemExit):
        main(["--arch", "rwkv"])


def test_cli_flags_fill_the_nested_model_config():
    cfg = parse_config(["--task", "vision", "--arch", "transformer", "--d-model", "32",
                        "--betas", "0.8", "0.9", "--no-plot", "--precision", "bfloat16"])
    assert cfg.model == ModelConfig(kind="vit", arch="transformer", d_model=32, n_layers=2,
                                    seq_len=128)
    assert cfg.betas == (0.8, 0.9) and not cfg.plot and cfg.precision == "bfloat16"
    assert parse_config([]) == TrainConfig()
    assert TrainConfig(task="lm-masked").model.vocab_size == 257  # follows the task


def test_lr_schedule_warmup_then_cosine():
    schedule = Schedule(warmup=4, decay="cosine", horizon=20, min_factor=0.1)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    lrs = [schedule(s) for s in range(4, 21)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    assert lrs[-1] == pytest.approx(0.1)


@pytest.mark.parametrize("task", ["lm-causal", "vision"])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, task):
    cfg = tiny(task=task, steps=6, eval_every=2, checkpoint_every=2,
               out_dir=str(tmp_path / "full"))
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
    cfg = tiny(steps=2, out_dir=str(tmp_path))
    train(cfg)
    with pytest.raises(CheckpointError, match="different config"):
        train(replace(cfg, lr=1e-2, resume=True))


@pytest.mark.parametrize("model", ["m2", "transformer"])
def test_bf16_masked_lm_run_writes_metrics_and_plot(tmp_path, model):
    cfg = tiny(model, task="lm-masked", precision="bfloat16", steps=2, eval_every=1,
               out_dir=str(tmp_path), plot=True)
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
    args = ["--task", "lm-masked", "--arch", "m2", "--precision", "float64", "--steps", "3",
            "--eval-every", "3", "--d-model", "16", "--n-layers", "1", "--seq-len", "16",
            "--n-heads", "2", "--batch-size", "4", "--eval-batches", "1", "--warmup", "2",
            "--device", "cpu", "--no-plot"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "NEURALNUM_PROGRESS": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "structured.train",
         *args, "--out-dir", str(tmp_path / "ddp")],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=170, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = tiny(task="lm-masked", precision="float64", steps=3, eval_every=3,
               out_dir=str(tmp_path / "single"))
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
