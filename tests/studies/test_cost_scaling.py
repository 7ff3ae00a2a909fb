"""studies.cost_scaling: its timing and fitting helpers on tiny inputs, one tiny run of its
plumbing, and its verdicts, tables and headline on synthetic results on both sides of
every threshold."""

import copy
import json

import pytest
import torch

from studies import cost_scaling


def test_loglog_exponent_recovers_a_power_law():
    sizes = [1e3, 1e4, 1e5, 1e6]
    assert cost_scaling.loglog_exponent(sizes, [3e-7 * s**1.5 for s in sizes]) == (
        pytest.approx(1.5, abs=1e-12))
    assert cost_scaling.loglog_exponent(sizes[:2], [2.0, 2.0]) == pytest.approx(0, abs=1e-12)


def test_alternated_warms_up_then_rotates_the_order():
    calls = []
    seconds = cost_scaling.alternated({"a": lambda: calls.append("a"),
                                       "b": lambda: calls.append("b"),
                                       "c": lambda: calls.append("c")}, 3)
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in seconds.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in seconds.values() for t in v)


def test_exponents_fit_only_the_shapes_past_the_threshold():
    rows = [{"nd": nd, **{f"{s}_seconds": 1e-3 if nd < cost_scaling.FIT_FROM else 1e-9 * nd
                          for s in cost_scaling.SOLVERS}}
            for nd in (cost_scaling.FIT_FROM * f for f in (0.01, 0.1, 1, 10))]
    assert cost_scaling.exponents(rows) == pytest.approx(
        dict.fromkeys(cost_scaling.SOLVERS, 1.0))
    assert set(cost_scaling.exponents(rows[:3]).values()) == {None}


def test_a_tiny_run_of_every_part(monkeypatch, tmp_path):
    monkeypatch.setitem(cost_scaling.SHAPES, "quick", ((40, 4), (80, 8)))
    monkeypatch.setitem(cost_scaling.REPEATS, "quick", 2)
    monkeypatch.setattr(cost_scaling, "PRODUCT_REPEATS", 2)
    monkeypatch.setattr(cost_scaling, "BATCH", (30, 6, 3))
    monkeypatch.setattr(cost_scaling, "FIT_FROM", 100)
    monkeypatch.setattr(cost_scaling, "TARGET_SHAPE", (80, 8))
    result = cost_scaling.main(["--quick", "--out", str(tmp_path)])
    assert torch.get_num_threads() == 1
    row = result["scaling"][1]
    assert row["learned_lsqr_iterations"] == row["scipy_lsqr_iterations"] <= 16
    assert all(row[f"{s}_seconds"] > 0 for s in cost_scaling.SOLVERS)
    assert row["learned_gflops"] > 0 and row["gemv_gflops"] > 0 and row["gemm_gflops"] > 0
    assert 3 <= result["many_small"]["learned_lsqr_iterations"] <= 6
    assert set(result["exponents"]) == set(cost_scaling.SOLVERS)
    assert json.loads((tmp_path / "cost_scaling.json").read_text())["verdicts"] == (
        result["verdicts"])
    assert (tmp_path / "cost_scaling.png").stat().st_size > 0
    assert result["command"] == "python3 -m studies.cost_scaling --quick"


def _result():
    rows = [{"n": n, "d": d, "nd": n * d, "learned_lsqr_seconds": 0.2, "scipy_lsqr_seconds": 0.05,
             "scipy_lstsq_seconds": 1.0, "torch_lstsq_seconds": 0.4,
             "learned_lsqr_iterations": 30.0, "scipy_lsqr_iterations": 30.0,
             "learned_gflops": 1.0, "gemv_gflops": 2.0, "gemm_gflops": 10.0,
             "learned_pair_seconds": 1e-3, "gemv_pair_seconds": 5e-4}
            for n, d in ((1000, 100), (5000, 500))]
    small = {"batch": 10_000, "n": 20, "d": 5, "learned_lsqr_iterations": 5.0,
             "learned_lsqr_seconds": 0.1, "learned_cg_seconds": 0.15,
             "torch_lstsq_seconds": 0.025, "scipy_loop_seconds": 0.5}
    return {"command": "python3 -m studies.cost_scaling --quick", "mode": "quick",
            "repeats": 5, "environment": {"torch_threads": 1, "blas_threads": 1,
                                          "load_before": 2.5, "load_after": 3.1,
                                          "cpu_count": 2},
            "scaling": rows, "exponents": dict.fromkeys(cost_scaling.SOLVERS, 1.0),
            "many_small": small}


KEYS = list(cost_scaling.verdicts(_result()))


def _target(result):
    return result["scaling"][1]


@pytest.mark.parametrize(("index", "where", "key", "met", "unmet"), [
    (0, _target, "learned_lsqr_seconds", 0.5, 0.51),        # ≤ 10 × 0.05 s
    (1, _target, "learned_gflops", 0.5, 0.49),              # ≥ 25% of 2 GF/s
    (2, lambda r: r["many_small"], "learned_lsqr_seconds", 0.125, 0.126),  # ≤ 5 × 25 ms
])
def test_cost_verdict_thresholds(index, where, key, met, unmet):
    name = KEYS[index]
    assert cost_scaling.verdicts(_result())[name]
    for value, expected in ((met, True), (unmet, False)):
        result = copy.deepcopy(_result())
        where(result)[key] = value
        assert cost_scaling.verdicts(result)[name] is expected


def test_target_verdicts_fail_without_the_target_shape():
    result = _result()
    result["scaling"] = result["scaling"][:1]
    verdicts = cost_scaling.verdicts(result)
    assert not verdicts[KEYS[0]] and not verdicts[KEYS[1]] and verdicts[KEYS[2]]


def test_tables_and_headline():
    result = _result()
    text = cost_scaling.tables(result)
    assert text.startswith("`python3 -m studies.cost_scaling --quick` — wall-clock medians of 5")
    assert "| 5000 × 500 | 2,500,000 | 0.2 | 0.05 | 1 | 0.4 | 4.0× | 30 / 30 |" in text
    assert "| exponent p |  | 1.00 | 1.00 | 1.00 | 1.00 |  |  |" in text
    assert "| 5000 × 500 | 1 | 2 | 50% | 10 |" in text
    assert "| learned LSQR | 0.1 | 4.0× |" in text
    for key, met in cost_scaling.verdicts(result).items():
        assert f"| {key} | {'yes' if met else 'no'} |" in text
    assert cost_scaling.headline(result) == (
        "5000 × 500: learned LSQR 4.0× scipy lsqr's wall-clock, its operator at 50% of the "
        "dense GEMV's GF/s; 10 000 problems of 20 × 5: 4.0× batched torch.linalg.lstsq; "
        "3 of 3 targets met")
