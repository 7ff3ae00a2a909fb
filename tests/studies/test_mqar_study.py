"""The MQAR study: batch-generator properties (Hypothesis), model set-up, verdicts, tables."""

import json
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from structured.data import IGNORE_INDEX, mqar_batch
from structured.train import Task
from studies import mqar


@st.composite
def _mqar_args(draw):
    num_kv = draw(st.integers(1, 6))
    vocab = draw(st.integers(2 * num_kv + 2, 40))
    seq_len = draw(st.integers(4 * num_kv, 4 * num_kv + 20))
    return draw(st.integers(1, 4)), seq_len, num_kv, vocab, draw(st.integers(0, 2**31))


def _draw(args):
    batch, seq_len, num_kv, vocab, seed = args
    return mqar_batch(batch, seq_len, num_kv=num_kv, vocab_size=vocab,
                      gen=torch.Generator().manual_seed(seed))


@settings(max_examples=60, deadline=None)
@given(_mqar_args())
def test_every_query_key_appears_earlier_exactly_once(args):
    batch, seq_len, num_kv, vocab, _ = args
    x, y = _draw(args)
    assert x.shape == y.shape == (batch, seq_len)
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        queries = [t for t, target in enumerate(row_y) if target != IGNORE_INDEX]
        assert len(queries) == num_kv
        for t in queries:
            key = row_x[t]
            earlier = [i for i in range(t) if row_x[i] == key]
            assert len(earlier) == 1, (row_x, t)
            assert row_x[earlier[0] + 1] == row_y[t]          # the value stored after it
            assert 1 <= key < vocab // 2 <= row_y[t] < vocab


@settings(max_examples=60, deadline=None)
@given(_mqar_args())
def test_targets_only_at_query_positions(args):
    batch, num_kv = args[0], args[2]
    x, y = _draw(args)
    labelled = y != IGNORE_INDEX
    assert not labelled[:, : 2 * num_kv].any()                # never on the key-value pairs
    keys = x[:, : 2 * num_kv: 2]
    # a position is labelled exactly when it holds a key after the key-value block
    is_query = (x[:, :, None] == keys[:, None, :]).any(-1)
    is_query[:, : 2 * num_kv] = False
    assert torch.equal(labelled, is_query)
    assert torch.equal(x[~labelled][x[~labelled] != 0].numel() * torch.ones(()),
                       torch.tensor(2.0 * num_kv * batch))   # other positions hold 0


def _tiny_grid():
    return mqar.Grid(settings=((16, 2),), widths=(8, 16), lrs=(1e-3, 1e-2), steps=2,
                     batch_size=4, vocab=16, eval_batches=1)


def test_test_draw_differs_from_validation_draw():
    cfg = mqar.config(_tiny_grid(), 16, 2, 16, 1e-3)
    val = Task(cfg).eval_set()[0][0]
    test_cfg = replace(cfg, seed=cfg.seed + mqar.TEST_SEED_OFFSET)
    assert not torch.equal(val, Task(test_cfg).eval_set()[0][0])


def test_models_are_matched_to_softmax_attention_and_see_the_previous_token():
    cfg = mqar.config(mqar.GRIDS["quick"], 32, 4, 32, 1e-3)
    models = {label: make() for label, make in mqar.builders(cfg).items()}
    sizes = {label: sum(p.numel() for p in m.parameters()) for label, m in models.items()}
    target = sizes["softmax attention"]
    assert all(abs(n - target) / target < 0.1 for n in sizes.values()), sizes
    for label in ("softmax attention", "linear attention"):
        assert isinstance(models[label].embed, mqar.ShortConv)
    attn = models["softmax attention"]
    assert attn.head.weight is attn.embed.weight                # tie kept


def test_short_conv_is_causal():
    conv = mqar.ShortConv(torch.nn.Embedding(10, 4))
    x = torch.randint(0, 10, (2, 7))
    y = conv(x)
    x2 = x.clone()
    x2[:, 4:] = (x2[:, 4:] + 1) % 10
    assert torch.equal(conv(x2)[:, :4], y[:, :4]) and not torch.equal(conv(x2), y)


def test_slow_decay_filters_reach_further_back():
    cfg = mqar.config(mqar.GRIDS["quick"], 32, 4, 32, 1e-3)
    makers = mqar.builders(cfg)
    rates = {}
    for label in ("M2", "M2 slow decay"):
        model = makers[label](torch.Generator().manual_seed(0))
        mixer = next(m for m in model.modules() if isinstance(m, mqar.SequenceMixer))
        rates[label] = mixer.filter.decay_rates
    assert (rates["M2 slow decay"] < rates["M2"]).all()


def _row(setting, width, model, acc):
    return {"seq_len": setting[0], "num_kv": setting[1], "width": width, "model": model,
            "test_acc": acc, "test_se": 0.01}


def _result(attn_big, attn_small, conv_small, settings=((32, 4), (64, 8))):
    rows = []
    for s in settings:
        rows += [_row(s, 16, "softmax attention", attn_small), _row(s, 64, "softmax attention",
                                                                      attn_big),
                 _row(s, 16, "BaseConv", conv_small), _row(s, 64, "BaseConv", 0.9),
                 _row(s, 16, "M2", 0.5)]
    return {"rows": rows, "mode": "default",
            "grid": {"vocab": 64, "steps": 10, "batch_size": 4, "lrs": (1e-3,)}}


def test_verdicts_on_both_sides_of_every_threshold():
    solved, sep = mqar.SOLVED, mqar.SEPARATION
    assert list(mqar.verdicts(_result(solved, 0.8, 0.8 - sep - 1e-9)).values()) == [True, True]
    assert list(mqar.verdicts(_result(solved - 1e-3, 0.8, 0.8 - sep + 1e-3)).values()) == [
        False, False]
    one_setting_fails = _result(solved, 0.8, 0.5)
    one_setting_fails["rows"][2]["test_acc"] = 0.75               # first setting: 0.05 apart
    assert list(mqar.verdicts(one_setting_fails).values()) == [True, False]
    assert not any(mqar.verdicts({"rows": []}).values())


def test_tables_one_table_per_setting_with_standard_errors():
    result = _result(0.995, 0.9, 0.3)
    result["verdicts"] = mqar.verdicts(result)
    text = mqar.tables(result)
    assert text.count("| model | d = 16 | d = 64 |") == 2
    assert "| softmax attention | 0.900 ± 0.010 | 0.995 ± 0.010 |" in text
    assert "| M2 | 0.500 ± 0.010 |  |" in text and text.count("| yes |") == 2


def test_study_end_to_end(monkeypatch, tmp_path, single_thread):
    monkeypatch.setitem(mqar.GRIDS, "quick", _tiny_grid())
    report = mqar.main(["--quick", "--out", str(tmp_path)])
    assert len(report["sweep"]) == 2 * 5 * 2 and len(report["rows"]) == 2 * 5
    assert report["rows"][0]["model"] == "softmax attention" and report["rows"][0]["width"] == 8
    for row in report["rows"]:
        tried = [r for r in report["sweep"] if (r["model"], r["width"]) == (row["model"],
                                                                           row["width"])]
        assert row["val_acc"] == max(r["val_acc"] for r in tried)
        assert row["lr"] in (1e-3, 1e-2) and 0 <= row["test_acc"] <= 1
        assert 0 <= row["test_se"] <= 0.5 and row["test_queries"] == 4 * 4 * 2
    assert (tmp_path / "mqar.json").exists()
    assert (tmp_path / "mqar_accuracy_vs_width.png").exists()
    json.dumps(report)


@pytest.mark.parametrize("shown", [False, True])
def test_worker_jobs_carry_the_parents_progress_setting(shown):
    from neuralnum.core.runtime import progress_shown, show_progress

    with show_progress(not shown):  # the worker's own default must not leak through
        assert mqar._star((progress_shown, (), shown)) is shown
