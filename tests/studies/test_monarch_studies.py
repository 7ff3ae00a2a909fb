"""Smoke tests of the Monarch studies at toy sizes (their numbers come from the studies)."""

import json

import torch

from kernels.native import native_status
from studies import monarch_projection, monarch_speed


def test_speed_study_reports_flop_ratio_and_timings():
    report = monarch_speed.run_study([64], batch=8, repeats=3, threads=1)
    row = report["results"][0]
    assert row["nblocks"] == 8 and row["flop_ratio"] == 64 * 64 / (2 * 64 * 8)
    for mode in ("forward", "forward_features_first", "forward_backward"):
        m = row[mode]
        # the speed-up is the ratio of the medians its label names (not of the minimums)
        assert m["speedup"] == m["dense"]["median_s"] / m["monarch"]["median_s"]
        assert m["pct_of_flop_ratio"] == 100 * m["speedup"] / row["flop_ratio"]
    assert {p["op"] for p in row["profile_forward"]} & {"aten::bmm", "neuralnum::monarch_rows"}
    assert report["native"] == native_status()


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


def _speed_result(fwd: dict[int, float], fb: float, ff: dict[int, float] | None = None) -> dict:
    """``fwd`` / ``ff``: % of the FLOP ratio per n, row-major / features-first (default:
    ``fwd`` + 10); ``fb``: forward+backward at every n."""
    ff = ff or {n: pct + 10 for n, pct in fwd.items()}
    rows = [{"n": n, "nblocks": 32, "batch": 1024, "flop_ratio": 16.0,
             "forward": {"speedup": pct * 0.16, "pct_of_flop_ratio": pct},
             "forward_features_first": {"speedup": ff[n] * 0.16, "pct_of_flop_ratio": ff[n]},
             "forward_backward": {"speedup": fb * 0.16, "pct_of_flop_ratio": fb},
             "profile_forward": [{"op": "aten::bmm", "share": 0.75}]}
            for n, pct in fwd.items()]
    return {"results": rows, "threads": 1, "repeats": 7, "load_average_1min": 1.0}


def test_speed_verdicts_on_both_sides_of_every_threshold():
    met = {1024: 40.0, 2048: 50.0, 4096: 50.0}
    assert all(monarch_speed.verdicts(_speed_result(met, 33.0, met)).values())
    for layout, key in (("row-major", "fwd"), ("features-first", "ff")):
        for n in met:
            missed = {**met, n: met[n] - 0.1}
            args = {"fwd": met, "ff": met, key: missed}
            v = monarch_speed.verdicts(_speed_result(args["fwd"], 33.0, args["ff"]))
            assert [t for t, ok in v.items() if not ok] == [
                f"forward ({layout}) at n={n} >= {met[n]:g}% of the FLOP ratio"]
    v = monarch_speed.verdicts(_speed_result(met, 32.9, met))
    assert [ok for ok in v.values()] == [True] * 6 + [False]
    missing = monarch_speed.verdicts(_speed_result({1024: 90.0, 2048: 90.0}, 90.0))
    assert not missing["forward (features-first) at n=4096 >= 50% of the FLOP ratio"]


def test_speed_tables_show_medians_and_percentages():
    result = _speed_result({1024: 41.0, 2048: 55.0, 4096: 60.0}, 35.0)
    result["verdicts"] = monarch_speed.verdicts(result)
    text = monarch_speed.tables(result)
    assert "over 7 alternated repeats" in text
    assert "| 1024 | 32 | 16.0x | 6.6x | 41% | 8.2x | 51% | 5.6x | 35% |" in text
    assert text.count("| yes |") == 7 and "- n = 2048: `aten::bmm` 75%" in text
    assert "block products by torch (not recorded)" in text
    result["native"] = "native: /cache/kernels-0123.so"
    assert "block products by the compiled kernels (`kernels.native`)" in monarch_speed.tables(
        result)
    result["native"] = "torch: disabled by NEURALNUM_NATIVE=0"
    assert "by torch (disabled by NEURALNUM_NATIVE=0)" in monarch_speed.tables(result)
