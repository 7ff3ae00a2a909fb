"""The Monarch time-to-quality study: the ratio function, the model seam, verdicts, tables."""

import json
import math

import pytest
import torch
from torch import nn

from neuralnum.training.plugins import Schedule
from structured.layers import MonarchLinear
from studies import monarch_gpt
from studies.monarch_gpt import time_to_quality


def test_time_to_quality_interpolates_the_first_crossing():
    ref = [(0.0, 5.0), (10.0, 3.0), (20.0, 2.0)]
    cand = [(0.0, 5.0), (4.0, 3.0), (8.0, 1.0), (9.0, 2.5)]
    q = time_to_quality(ref, cand)
    assert q["target"] == 2.0 and q["reference_time"] == 20.0
    assert q["candidate_time"] == pytest.approx(6.0)          # 3 → 1 between 4 and 8
    assert q["speedup"] == pytest.approx(20.0 / 6.0) and q["gap"] == -1.0


def test_time_to_quality_reference_crossing_can_come_before_its_end():
    ref = [(0.0, 5.0), (10.0, 1.0), (20.0, 2.0)]              # overshoots, ends at 2
    q = time_to_quality(ref, [(0.0, 5.0), (15.0, 2.0)])
    assert q["reference_time"] == pytest.approx(7.5) and q["candidate_time"] == 15.0
    assert q["speedup"] == pytest.approx(0.5)


def test_time_to_quality_never_reached_reports_the_gap():
    q = time_to_quality([(0.0, 4.0), (1.0, 2.0)], [(0.0, 4.0), (1.0, 2.5), (2.0, 2.25)])
    assert q["candidate_time"] is None and q["speedup"] is None
    assert q["gap"] == pytest.approx(0.25)


@pytest.mark.parametrize("bad", [[], [(1.0, 2.0), (0.5, 1.0)]])
def test_time_to_quality_rejects_bad_curves(bad):
    with pytest.raises(ValueError, match="curve"):
        time_to_quality(bad, [(0.0, 1.0)])
    with pytest.raises(ValueError, match="curve"):
        time_to_quality([(0.0, 1.0)], bad)


def test_build_swaps_only_the_mlps_and_counts_their_flops():
    cfg = monarch_gpt.base_config("quick")
    dense, monarch = monarch_gpt.build(cfg), monarch_gpt.build(cfg, 4)
    swapped = [n for n, m in monarch.named_modules() if isinstance(m, MonarchLinear)]
    assert swapped and all(".mlp." in f".{n}." for n in swapped)
    assert len(swapped) == sum(isinstance(m, nn.Linear) for n, m in dense.named_modules()
                               if ".mlp." in f".{n}.")
    torch.testing.assert_close(monarch.embed.weight, dense.embed.weight)   # same seed
    total, mlp = monarch_gpt.linear_weights(dense)
    d, h, layers = cfg.model.d_model, cfg.model.mlp_hidden, cfg.model.n_layers
    assert mlp == layers * 2 * d * h and total == mlp + layers * 4 * d * d + 256 * d
    share = monarch_gpt.flops_per_token(dense, cfg)["mlp_share"]
    assert share > monarch_gpt.flops_per_token(monarch, cfg)["mlp_share"] > 0


def _result(speedups: dict[str, float | None], mlp_share: float) -> dict:
    runs = {"dense": {"params": 10, "train_flops_per_token": 1e6, "mlp_share": mlp_share,
                      "final_val_loss": 2.0, "train_s": 100.0, "lr": 1e-3}}
    quality = {}
    for label, s in speedups.items():
        runs[label] = {**runs["dense"], "final_val_loss": 2.1}
        wall = {"candidate_time": None if s is None else 100 / s, "speedup": s, "gap": 0.1}
        own = {"target": 2.1, "reference_time": 80.0, "candidate_time": 96.0, "gap": 0.0}
        quality[label] = {"wall": wall, "steps": {**wall, "speedup": 1.0},
                          "dense_to_own_loss": own}
    prof = {"dense": {"step_s": 1.0, "mlp_s": 0.5, "mlp_share": 0.5, "step_speedup": 1.0,
                      "mlp_speedup": 1.0, "amdahl_bound": 2.0}}
    grid = {"0.001": {label: 2.5 for label in runs}, "0.002": {label: 2.75 for label in runs}}
    return {"runs": runs, "quality": quality, "profile": prof, "profile_repeats": 7,
            "lr_grid": grid,
            "load_note": "load", "config": {"d_model": 8, "n_layers": 1, "seq_len": 4,
                                            "batch_size": 2, "steps": 3}}


def test_verdicts_on_both_sides_of_every_threshold():
    target, share = monarch_gpt.TARGET_SPEEDUP, monarch_gpt.MLP_SHARE_TARGET
    v = monarch_gpt.verdicts(_result({"monarch-4": target, "monarch-2": None}, share))
    assert list(v.values()) == [True, True, False]
    v = monarch_gpt.verdicts(_result({"monarch-4": target - 1e-9, "monarch-2": math.inf},
                                     share - 1e-9))
    assert list(v.values()) == [False, False, True]


def test_tables_render_numbers_from_the_result():
    result = _result({"monarch-4": 1.6, "monarch-2": None}, 0.7)
    result["verdicts"] = monarch_gpt.verdicts(result)
    text = monarch_gpt.tables(result)
    assert "| monarch-4 | 10 |" in text and "1.60x" in text and "| never | never |" in text
    assert "neverx" not in text
    assert "| 0.001 | 2.100 |" in text                               # peak lr, final loss
    assert "| lr 0.001 | lr 0.002 |" in text and "| monarch-2 | 2.500 | 2.750 |" in text
    assert "| monarch-4 | 2.100 | 80 | 96 | 1.20x |" in text       # how close it gets
    assert "median of 7" in text and text.count("| yes |") == 2


def test_study_end_to_end(tmp_path, single_thread):
    report = monarch_gpt.main(["--quick", "--out", str(tmp_path)])
    assert set(report["runs"]) == set(monarch_gpt.variants(monarch_gpt.base_config("quick")))
    switched = report["runs"]["monarch-4 -> dense"]
    assert switched["params_final"] == report["runs"]["dense"]["params"]
    assert [r["step"] for r in switched["records"]] == [0, 3, 6]
    assert (tmp_path / "monarch_gpt.json").exists() and (tmp_path / "monarch_gpt.png").exists()
    json.dumps(report)


def test_each_model_trains_at_its_own_learning_rate(single_thread):
    """A spec's ``lr`` is that model's: at 0 its weights, and so its loss, never move,
    while the model beside it (same batches, default rate) learns."""
    cfg = monarch_gpt.base_config("quick")
    specs = {"dense": {"nblocks": None, "densify_at": None, "lr": 0.0},
             "monarch-2": {"nblocks": 2, "densify_at": None}}
    runs = monarch_gpt.train_lockstep(cfg, specs)
    frozen = [r["val_loss"] for r in runs["dense"]["records"]]
    assert frozen == [frozen[0]] * len(frozen)
    learning = [r["val_loss"] for r in runs["monarch-2"]["records"]]
    assert learning[-1] < learning[0]


def test_learning_rates_are_chosen_per_model_by_final_validation_loss(monkeypatch):
    """Each label gets the rate of its lowest final validation loss in the grid, whichever
    rate suits the others; a single rate trains nothing."""
    table = {1e-3: {"dense": 2.0, "monarch-2": 3.0}, 2e-3: {"dense": 2.5, "monarch-2": 2.9}}
    monkeypatch.setattr(monarch_gpt, "train_lockstep", lambda cfg, specs: {
        label: {"final_val_loss": table[cfg.lr][label]} for label in specs})
    cfg, specs = monarch_gpt.base_config("quick"), {"dense": {}, "monarch-2": {}}
    chosen, runs = monarch_gpt.choose_learning_rates(cfg, specs, (1e-3, 2e-3))
    grid = {rate: {label: run["final_val_loss"] for label, run in by_label.items()}
            for rate, by_label in runs.items()}
    assert chosen == {"dense": 1e-3, "monarch-2": 2e-3} and grid == table
    assert monarch_gpt.choose_learning_rates(cfg, specs, (5e-3,)) == (
        {"dense": 5e-3, "monarch-2": 5e-3}, {})


@pytest.mark.parametrize(("table", "runs_expected"), [
    ({1e-3: (2.0, 2.5), 2e-3: (2.2, 2.9)}, 2),        # both choose 1e-3: its run is reused
    ({1e-3: (2.0, 3.0), 2e-3: (2.5, 2.9)}, 3)])       # they differ: one more run
def test_the_comparison_reuses_the_grid_run_where_every_model_chose_its_rate(
        monkeypatch, single_thread, table, runs_expected):
    calls = []

    def lockstep(cfg, specs):
        calls.append({label: spec.get("lr", cfg.lr) for label, spec in specs.items()})
        return {label: {"final_val_loss": table[lr][i], "records": [
                    {"step": 0, "train_s": 0.0, "cpu_s": 0.0, "val_loss": 5.0},
                    {"step": 6, "train_s": 1.0, "cpu_s": 1.0, "val_loss": table[lr][i]}]}
                for i, (label, lr) in enumerate(calls[-1].items())}

    monkeypatch.setattr(monarch_gpt, "train_lockstep", lockstep)
    monkeypatch.setattr(monarch_gpt, "variants", lambda cfg: {
        "dense": {"nblocks": None, "densify_at": None},
        "monarch-2": {"nblocks": 2, "densify_at": None}})
    result = monarch_gpt.run_study(monarch_gpt.base_config("quick"), profile_repeats=1,
                                   rates=(1e-3, 2e-3))
    assert len(calls) == runs_expected
    best = {label: min(table, key=lambda r, i=i: table[r][i])
            for i, label in enumerate(("dense", "monarch-2"))}
    assert {label: run["lr"] for label, run in result["runs"].items()} == best
    assert {label: run["final_val_loss"] for label, run in result["runs"].items()} == {
        label: table[best[label]][i] for i, label in enumerate(best)}


def test_the_densified_lane_gets_a_fresh_optimizer_that_continues_the_schedule():
    cfg = monarch_gpt.base_config("quick")
    schedule = Schedule(warmup=cfg.warmup, decay="cosine", horizon=cfg.steps,
                        min_factor=cfg.min_lr_factor)
    lane = monarch_gpt._lane(cfg, {"nblocks": 4, "densify_at": 4, "lr": 2e-3},
                             monarch_gpt.LockstepTask(cfg), schedule)
    monarch_gpt._densify(lane, cfg, schedule, 4)
    model, optimizer = lane.loop.model, lane.loop.optimizer
    assert not any(isinstance(m, MonarchLinear) for m in model.modules())
    assert lane.params_final == sum(p.numel() for p in model.parameters())
    groups = optimizer.param_groups
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters()}
    assert [g["lr"] for g in groups] == [2e-3 * schedule(4)] * len(groups)
    assert not optimizer.state                                  # fresh: no moments yet
