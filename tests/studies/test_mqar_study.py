"""The MQAR study at toy size: learning-rate choice on validation, report on a test draw."""

import json
from dataclasses import replace

import torch

from structured.train import Task
from studies import mqar

_BASE = mqar.base_config


def _tiny(full: bool):
    base = _BASE(full)
    return replace(base, model=replace(base.model, seq_len=16, d_model=16), mqar_num_kv=2,
                   mqar_vocab=16, steps=2, warmup=1, batch_size=4, eval_every=2,
                   eval_batches=1)


def test_test_draw_differs_from_validation_draw():
    cfg = _tiny(False)
    val = Task(cfg).eval_set()[0][0]
    test_cfg = replace(cfg, seed=cfg.seed + mqar.TEST_SEED_OFFSET)
    assert not torch.equal(val, Task(test_cfg).eval_set()[0][0])


def test_models_are_matched_to_softmax_attention():
    sizes = {label: sum(p.numel() for p in make().parameters())
             for label, make in mqar.builders(mqar.base_config(False)).items()}
    target = sizes["softmax attention"]
    assert all(abs(n - target) / target < 0.1 for n in sizes.values()), sizes


def test_study_end_to_end(monkeypatch, tmp_path, single_thread):
    monkeypatch.setattr(mqar, "base_config", _tiny)
    monkeypatch.setattr(mqar, "LEARNING_RATES", {"quick": (1e-3, 1e-2), "full": ()})
    report = mqar.main(["--quick", "--out", str(tmp_path)])
    assert len(report["sweep"]) == 10 and len(report["rows"]) == 5
    for row in report["rows"]:
        tried = [r for r in report["sweep"] if r["model"] == row["model"]]
        assert row["val_acc"] == max(r["val_acc"] for r in tried)
        assert row["best_lr"] in (1e-3, 1e-2) and 0 <= row["test_acc"] <= 1
    assert (tmp_path / "mqar.json").exists() and (tmp_path / "mqar_curves.png").exists()
    json.dumps(report)


def test_slow_decay_filters_reach_further_back():
    cfg = mqar.base_config(False)
    makers = mqar.builders(cfg)
    rates = {}
    for label in ("M2", "M2 slow decay"):
        model = makers[label](torch.Generator().manual_seed(0))
        mixer = next(m for m in model.modules() if isinstance(m, mqar.SequenceMixer))
        rates[label] = mixer.filter.decay_rates
    assert (rates["M2 slow decay"] < rates["M2"]).all()
