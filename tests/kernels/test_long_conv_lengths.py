"""studies.long_conv_lengths: the accuracy-over-L study, at one tiny length per plan."""

import importlib
import json

import pytest

from studies import long_conv_lengths as study


def test_study_writes_rows_for_both_plans(tmp_path, monkeypatch):
    lct = importlib.import_module("kernels.long_conv_triton")
    # L = 512 runs three passes; L = 256 one pass in fp32, three in fp64 (half the limit)
    monkeypatch.setattr(lct, "ONE_PASS_MAX_N", 512)
    monkeypatch.setitem(study.LENGTHS, "quick", (256, 512))
    result = study.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "long_conv_lengths.json").read_text())
    assert saved == result and saved["verdicts"] == {"all_within_tolerance": True}
    assert saved["command"] == "python3 -m studies.long_conv_lengths --quick"
    rows = saved["rows"]
    assert len(rows) == 4
    assert sorted({(r["L"], r["passes"]) for r in rows}) == [(256, 1), (256, 3), (512, 3)]
    assert all(r["ok"] and 0 < r["max_rel_err"] < r["tol"] for r in rows)
    assert (tmp_path / "long_conv_lengths.png").stat().st_size > 0


def _row(length, dtype, err, passes=1):
    tol = 1e-5 if dtype == "torch.float32" else 1e-12
    return {"L": length, "dtype": dtype, "passes": passes, "max_rel_err": err, "tol": tol}


@pytest.mark.parametrize("err32, err64, met", [
    (9.9e-6, 9.9e-13, True), (1.0e-5, 1e-13, False), (1e-7, 1.0e-12, False),
    (2e-5, 1e-16, False), (1e-7, 5e-12, False)])
def test_verdict_thresholds(err32, err64, met):
    result = {"rows": [_row(256, "torch.float32", 1e-7), _row(256, "torch.float64", 1e-16),
                       _row(8192, "torch.float32", err32),
                       _row(8192, "torch.float64", err64, passes=3)]}
    assert study.verdicts(result) == {"all_within_tolerance": met}
    text = study.tables({**result, "command": "python3 -m studies.long_conv_lengths"})
    assert ("**met**" in text) == met and ("**not met**" in text) != met
    assert "| 8192 | one pass (float32) / three passes (float64) |" in text
