"""studies.kernel_bench: the CPU run, and its GPU code paths run on CPU under the interpreter."""

import json

import pytest
import torch

from studies import kernel_bench as kb

TINY = kb.Sizes((16, 64), 5, (256,), 2, 3, torch.float32, 1)
CPU = torch.device("cpu")


def test_gpu_paths_under_interpreter():
    errors = []
    checks = kb.check_correctness(CPU, errors, cases=(
        ("monarch", torch.float64, (16, 7)), ("conv", torch.float32, (1, 2, 256)),
        ("monarch", torch.bfloat16, (64, 9))))
    assert [c["ok"] for c in checks] == [True, True, True]
    monarch = kb.bench_monarch(TINY, CPU, True, errors)
    conv = kb.bench_conv(TINY, CPU, True, errors)
    assert errors == []
    # the ratios are what they say (times are not checked: wall-clock on a shared machine)
    for r in monarch:
        assert r["speedup_vs_bmm"] == r["bmm_ms"] / r["triton_ms"]
        assert r["speedup_vs_dense"] == r["dense_ms"] / r["triton_ms"]
        assert r["flop_ratio"] == r["n"] ** 0.5 / 2 and r["triton_train_ms"] > 0
    assert len(conv) == 2 and [r["gated"] for r in conv] == [False, True]
    assert all(r["speedup_vs_fft"] == r["fft_ms"] / r["triton_ms"] for r in conv)
    targets = kb.target_lines(monarch, conv)   # target sizes absent → unmeasured, not "met"
    assert [t["met"] for t in targets] == [None, None, None]


def test_quick_run_writes_outputs(tmp_path, monkeypatch):
    monkeypatch.setitem(kb.SIZES, "quick", TINY)
    result = kb.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "kernel_bench.json").read_text())
    assert saved["command"] == "python3 -m studies.kernel_bench --quick"
    assert saved["verdicts"] == {} and saved["repeats"] == 1   # no GPU target measured
    assert saved["mode"] == "quick" and "reference paths only" in saved["note"]
    assert {"triton_ms"}.isdisjoint(saved["monarch"][0]) and saved["errors"] == []
    assert len(saved["monarch"]) == 2 and len(saved["conv"]) == 2
    assert (tmp_path / "kernel_bench.png").stat().st_size > 0
    assert "| n |" in (tmp_path / "kernel_bench.md").read_text()
    assert result["monarch"][0]["dense_ms"] > 0


def test_gpu_flag_needs_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(SystemExit):
        kb.main(["--gpu", "--out", str(tmp_path)])
