"""Study verdicts: synthetic results on both sides of every threshold, the result tables
they render saying "met" exactly when the verdict is met, and the results-index
headlines built from the same results.

(The main job's ``demo`` block is here too. The studies ``iterative``, ``ood``,
``vs_scipy``, ``recipe``, ``mqar``, ``monarch_speed`` and ``monarch_gpt`` test their
verdicts beside their own tests.)
"""

import copy

import pytest

from studies import (
    demo,
    kernel_bench,
    kernel_compile,
    m2_bert,
    m2_common,
    m2_lm,
    m2_vision,
    monarch_projection,
    multiplication,
    reference,
)

EPS32, EPS64 = 2.0**-24, 2.0**-53     # unit roundoff u of float32 / float64


def _says(text: str, met: bool) -> bool:
    """Whether a rendered block reports the verdict ``met`` (and never the other)."""
    return ("**met**" in text) == met and ("**not met**" in text) != met


# ------------------------------------------------------------------ reference
def _family(name, reached, within):
    return {"family": name, "kappa_median": 2.0, "digits_scipy_min": 14.3,
            "digits_numpy_min": 14.3, "digits_scipy_f32_min": 6.2, "gd_reached": reached,
            "gd_iters_median": 58.0 if reached else None, "gd_iters_bound_median": 60.0,
            "gd_within_bound": within, "gd_f32_final_mse_mean": 2.75e-15}


@pytest.mark.parametrize("within, met", [(8, True), (7, False)])
def test_reference_verdict(within, met):
    result = {"config": {"batch": 8, "max_iters": 1000}, "tolerance": 1e-12,
              "families": [_family("gaussian", 8, within), _family("ill_conditioned", 0, 0)]}
    assert reference.verdicts(result) == {"gd_within_contraction_bound": met}
    text = reference.tables(result)
    assert _says(text, met) and "not within 1000" in text and "| 58 |" in text


# ------------------------------------------------------------------ multiplication
def _multiplication(ratio_product, ratio_gd, mse32, mse64):
    floors = {"baseconv": 1e-8, "linear_attention": 2e-8}
    runs = [{"task": t, "arch": a, "floor": floors.get(a, 1e-8 * r)}
            for t, r in (("product", ratio_product), ("gd_term", ratio_gd))
            for a in multiplication.ARCHS]
    return {"command": "python3 -m studies.multiplication --quick", "dtype": "float64",
            "config": {"gd_iters": 200}, "runs": runs,
            "ratio_softmax_over_polynomial": {"product": ratio_product, "gd_term": ratio_gd},
            "constructed_gd_mse": {"float32": {"baseconv": mse32, "linear_attention": 1e-15},
                                   "float64": {"baseconv": 1e-33, "linear_attention": mse64}},
            "softmax_product_sweep": {d: [[1e-2, 1e-8], [1e-3, 1e-10], [1e-4, 1e-9]]
                                      for d in ("float32", "float64")},
            "iterated_constructed_gd_mse_vs_xstar": {
                d: {"baseconv": 1e-15, "linear_attention": 1e-15} for d in ("float32",
                                                                           "float64")}}


@pytest.mark.parametrize("args, failing", [
    ((100.0, 1e4, 100 * EPS32**2, 100 * EPS64**2), None),
    ((99.9, 1e4, 1e-15, 1e-32), "softmax_vs_polynomial:product"),
    ((1e3, 99.0, 1e-15, 1e-32), "softmax_vs_polynomial:gd_term"),
    ((1e3, 1e3, 101 * EPS32**2, 1e-32), "construction_at_roundoff:float32"),
    ((1e3, 1e3, 1e-15, 101 * EPS64**2), "construction_at_roundoff:float64"),
])
def test_multiplication_verdicts(args, failing):
    result = _multiplication(*args)
    got = multiplication.verdicts(result)
    assert len(got) == 4 and {k for k, met in got.items() if not met} == (
        {failing} if failing else set())
    text = multiplication.tables(result)
    assert text.count("**not met**") == (failing is not None) and "1.0e-10 (ε = 1e-3)" in text


def test_multiplication_result_names():
    assert multiplication.result_name("float64") == "multiplication"
    assert multiplication.result_name("float32") == "multiplication_float32"


# ------------------------------------------------------------------ language models
def _lm(loss_m2, speed_m2, speed_dense=40_000.0, at_4096=True):
    tf_speed = 10_000.0
    return {"command": "python3 -m studies.m2_lm --quick", "labels": ["GPT", "M2-GPT"],
            "throughput_repeats": 10,
            "quality": [{"model": "GPT", "params": 100, "tokens": 1000, "val_loss": 2.0},
                        {"model": "M2-GPT", "params": 100, "tokens": 1000, "val_loss": loss_m2},
                        {"model": "M2-GPT-dense", "params": 99, "tokens": 1000,
                         "val_loss": 1.9}],
            "throughput": [{"seq_len": 1024, "GPT_tok_per_s": 5.0, "M2-GPT_tok_per_s": 4.0,
                            "M2-GPT-dense_tok_per_s": 4.0},
                           {"seq_len": 4096 if at_4096 else 8192, "GPT_tok_per_s": tf_speed,
                            "M2-GPT_tok_per_s": speed_m2,
                            "M2-GPT-dense_tok_per_s": speed_dense}]}


@pytest.mark.parametrize("loss, speed, quality, throughput", [
    (2.0 * 1.05, 30_000.0, True, True),          # both exactly at the threshold
    (2.0 * 1.0501, 30_000.0, False, True),
    (1.5, 29_990.0, True, False),
])
def test_language_model_verdicts(loss, speed, quality, throughput):
    result = _lm(loss, speed)
    assert m2_common.lm_verdicts(result) == {
        "M2-GPT:quality": quality, "M2-GPT:throughput": throughput,
        "M2-GPT-dense:quality": True, "M2-GPT-dense:throughput": True}
    assert m2_lm.verdicts is m2_common.lm_verdicts is m2_bert.verdicts
    text = m2_lm.tables(result)
    assert "tokens/s L = 4096 (best of 10)" in text and "| 1.0 |" not in text
    assert text.count("**not met**") == (not quality) + (not throughput)
    assert m2_lm.headline is m2_common.lm_headline is m2_bert.headline
    assert m2_lm.headline(result).startswith(
        f"M2-GPT: {loss / 2.0:.3f}× GPT's loss, {speed / 10_000:.2f}× its tokens/s at "
        "L = 4096; M2-GPT-dense: ")


def test_language_model_throughput_not_measured_is_not_met():
    got = m2_common.lm_verdicts(_lm(1.0, 1e9, 1e9, at_4096=False))
    assert got["M2-GPT:throughput"] is False and got["M2-GPT:quality"] is True


# ------------------------------------------------------------------ vision
@pytest.mark.parametrize("acc, params, met", [
    (0.90, 99, True), (0.8999, 99, False), (0.95, 100, False)])
def test_vision_verdict(acc, params, met):
    row = {"test_acc_min": 0.8, "test_acc_max": 0.99, "test_loss_mean": 0.3, "seeds": 2}
    result = {"command": "python3 -m studies.m2_vision --quick", "steps": 300, "rows": [
        {**row, "model": "ViT", "params": 100, "test_acc_mean": 0.90},
        {**row, "model": "M2-ViT", "params": params, "test_acc_mean": acc}]}
    assert m2_vision.verdicts(result) == {"M2-ViT:accuracy_with_fewer_params": met}
    assert m2_vision.headline(result) == (
        f"M2-ViT {100 * acc:.1f}% vs ViT 90.0% test accuracy with {params} vs 100 "
        "parameters (8×8 digits)")
    assert _says(m2_vision.tables(result), met)


# ------------------------------------------------------------------ Monarch projection
def _projection(finetuned_16, densified_16):
    def run(nb, seed, finetuned, densified):
        return {"nblocks": nb, "seed": seed, "dense": 0.97, "sparsified": 0.7,
                "finetuned": finetuned, "densified": densified, "dense_continued": 0.97,
                "monarch_from_scratch": 0.96, "projection_error": [0.8, 0.8]}

    return {"command": "python3 -m studies.monarch_projection --quick", "seeds": [0, 1],
            "steps": 600, "finetune_steps": 150,
            "projection": [{"matrix": "gaussian", "nblocks": nb, "monarch_rel_error": 0.8,
                            "low_rank_rel_error": 0.7} for nb in (4, 16)],
            "sparsify": [run(4, 0, 0.97, 0.97), run(4, 1, 0.96, 0.96),
                         run(16, 0, 0.96, 0.96), run(16, 1, finetuned_16, densified_16)]}


@pytest.mark.parametrize("finetuned, densified, verdict", [
    (0.96, 0.96, {"densify_exact": True, "finetune_recovers_dense": True}),   # mean 0.96
    (0.9598, 0.9598, {"densify_exact": True, "finetune_recovers_dense": False}),
    (0.99, 0.9899, {"densify_exact": False, "finetune_recovers_dense": True}),
])
def test_projection_verdicts(finetuned, densified, verdict):
    result = _projection(finetuned, densified)
    assert monarch_projection.verdicts(result) == verdict
    text = monarch_projection.tables(result)
    assert text.count("**not met**") == sum(not v for v in verdict.values())


# ------------------------------------------------------------------ kernel bench / compile
def _bench(speed_bmm, speed_dense, speed_fft, ok=True):
    monarch = [{"n": 4096, "batch": 8192, "flop_ratio": 32.0, "triton_ms": 1.0,
                "bmm_ms": speed_bmm, "dense_ms": speed_dense,
                "speedup_vs_bmm": speed_bmm, "speedup_vs_dense": speed_dense}]
    conv = [{"L": 4096, "batch": 8, "channels": 768, "gated": False, "triton_ms": 1.0,
             "fft_ms": speed_fft, "speedup_vs_fft": speed_fft}]
    return {"command": "python3 -m studies.kernel_bench --gpu", "mode": "gpu",
            "device": "H200", "monarch": monarch, "conv": conv,
            "targets": kernel_bench.target_lines(monarch, conv),
            "correctness": [{"kernel": "monarch", "max_rel_err": 1e-13 if ok else 2e-12,
                             "tol": 1e-12, "ok": ok}]}


@pytest.mark.parametrize("args, failing", [
    ((1.5, 0.6 * 32, 2.0), set()),
    ((1.49, 0.6 * 32, 2.0), {"fused_vs_bmm"}),
    ((1.5, 0.59 * 32, 2.0), {"fraction_of_flop_ratio"}),
    ((1.5, 0.6 * 32, 1.99), {"conv_vs_fft"}),
    ((1.5, 0.6 * 32, 2.0, False), {"correctness"}),
])
def test_kernel_bench_verdicts(args, failing):
    result = _bench(*args)
    got = kernel_bench.verdicts(result)
    assert set(got) == {"fused_vs_bmm", "fraction_of_flop_ratio", "conv_vs_fft", "correctness"}
    assert {k for k, met in got.items() if not met} == failing
    # the target lines' own "met" agrees with the verdicts
    assert all(line["met"] == got[line["key"]] for line in result["targets"])
    text = kernel_bench.tables(result)
    assert text.count("**not met**") == len(failing) and "median of" in text


def test_kernel_bench_cpu_run_has_no_verdicts():
    result = {"command": "python3 -m studies.kernel_bench --quick", "mode": "quick",
              "device": "CPU", "repeats": 3, "monarch": [{"n": 256, "batch": 256,
                                                          "bmm_ms": 1.0}], "conv": []}
    assert kernel_bench.verdicts(result) == {}
    text = kernel_bench.tables(result)
    assert "**not measured**" in text and "bmm ms (median of 3)" in text


@pytest.mark.parametrize("shared, met", [(232448, True), (232449, False)])
def test_kernel_compile_verdict(shared, met):
    row = {"kernel": "k", "num_warps": 4, "num_stages": 1, "registers": 128,
           "stack_bytes": 0, "shared_bytes": 1024, "fits": True}
    result = {"command": "python3 -m studies.kernel_compile --quick", "arch": 90,
              "triton": "3", "monarch": [row], "conv": [{**row, "shared_bytes": shared,
                                                        "fits": shared <= 232448}]}
    assert kernel_compile.verdicts(result) == {"all_fit": met}
    assert _says(kernel_compile.tables(result), met)
    empty = copy.deepcopy(result) | {"monarch": [], "conv": []}
    assert kernel_compile.verdicts(empty) == {"all_fit": False}


# ------------------------------------------------------------------ demo (the main job)
@pytest.mark.parametrize("learned_digits, met", [(14.61, True), (14.59, False)])
def test_demo_verdict_is_half_a_digit_of_scipy(learned_digits, met):
    result = {"command": "python3 -m neuralnum demo", "arch": "linear_attention",
              "dtype": "float64", "steps": 6000, "train_seconds": 44.0,
              "one_step_mse": 5.8e-32, "family": "spectrum", "problems": 32, "method": "cg",
              "learned": {"mse": 1.8e-31, "rel_error": 3.3e-16, "digits": learned_digits,
                          "diverged": 0.0, "iterations": 8.0, "model_calls": 18.0},
              "scipy": {"mse": 1.1e-30, "rel_error": 8.2e-16, "digits": 15.1,
                        "diverged": 0.0}}
    assert list(demo.verdicts(result).values()) == [met]
    text = demo.tables(result)
    assert _says(text, met) and "| learned operator, CG | 1.80e-31 |" in text
    assert f"| {learned_digits:.2f} | 8 | 18 |" in text
    assert demo.headline(result) == (f"learned CG {learned_digits:.2f} digits vs scipy 15.10 "
                                     "(linear attention, float64)")
