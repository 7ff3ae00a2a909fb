"""The reference study end to end at a tiny size: table, JSON and figure are produced and
the measured GD iteration counts respect the contraction bound."""

from __future__ import annotations

import json

from studies import reference as study


def test_reference_study_runs_and_writes_outputs(tmp_path, monkeypatch, capsys):
    tiny = study.Config(batch=2, max_iters=150, dps=30, seed=0)
    monkeypatch.setattr(study, "CONFIGS", {"quick": tiny, "full": tiny})
    monkeypatch.setattr(study, "FAMILIES", ("gaussian", "rank_deficient"))
    result = study.main(["--quick", "--out", str(tmp_path)])
    assert "gaussian" in capsys.readouterr().out
    saved = json.loads((tmp_path / "reference.json").read_text())
    assert saved["config"] == {"batch": 2, "max_iters": 150, "dps": 30, "seed": 0}
    assert (tmp_path / "reference_gd.png").stat().st_size > 0
    gaussian = result["families"][0]
    assert gaussian["digits_scipy_min"] > 12 and gaussian["digits_scipy_f32_min"] > 4
    assert gaussian["gd_reached"] == gaussian["gd_within_bound"] == 2
    assert "curve" not in gaussian                       # in the figure, not the JSON
    assert saved["verdicts"] == {"gd_within_contraction_bound": True}
    assert saved["command"] == "python3 -m studies.reference --quick"
