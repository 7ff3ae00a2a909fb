"""studies.long_conv_lengths: the accuracy-over-L study, at one tiny length per plan."""

import importlib
import json

from studies import long_conv_lengths as study


def test_study_writes_rows_for_both_plans(tmp_path, monkeypatch):
    lct = importlib.import_module("kernels.long_conv_triton")
    # L = 512 runs three passes; L = 256 one pass in fp32, three in fp64 (half the limit)
    monkeypatch.setattr(lct, "ONE_PASS_MAX_N", 512)
    monkeypatch.setitem(study.LENGTHS, "quick", (256, 512))
    rows = study.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "long_conv_lengths.json").read_text())
    assert saved == rows and len(rows) == 4
    assert sorted({(r["L"], r["passes"]) for r in rows}) == [(256, 1), (256, 3), (512, 3)]
    assert all(r["ok"] and 0 < r["max_rel_err"] < r["tol"] for r in rows)
    assert (tmp_path / "long_conv_lengths.png").stat().st_size > 0
