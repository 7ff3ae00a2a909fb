"""Smoke tests of the Monarch studies at toy sizes (their numbers come from the studies)."""

import json

import torch

from studies import monarch_projection, monarch_speed


def test_speed_study_reports_flop_ratio_and_timings():
    report = monarch_speed.run_study([64], batch=8, repeats=1, threads=1)
    row = report["results"][0]
    assert row["nblocks"] == 8 and row["flop_ratio"] == 64 * 64 / (2 * 64 * 8)
    for mode in ("forward", "forward_backward"):
        assert row[mode]["dense"]["min_s"] > 0 and row[mode]["speedup"] > 0
    assert {p["op"] for p in row["profile_forward"]} & {"aten::bmm", "aten::copy_"}


def test_projection_study_end_to_end(monkeypatch):
    monkeypatch.setattr(monarch_projection, "NBLOCKS", (4, 16))
    report = monarch_projection.run_study([0], steps=3, finetune=2, dtype=torch.float64)
    runs = report["sparsify"]
    assert [r["nblocks"] for r in runs] == [4, 16]
    for r in runs:
        assert r["densified"] == r["finetuned"]          # densify is exact
        assert all(0 < e < 1 for e in r["projection_error"])
    assert {r["matrix"] for r in report["projection"]} >= {"gaussian", "trained 256x256"}
    json.dumps(report)
