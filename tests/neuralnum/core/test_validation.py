"""Input checks: the right exception type, and a message naming the argument."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st
from lsq_strategies import dtypes

from neuralnum.core.validation import (
    PRECISIONS,
    as_real_array,
    check_choice,
    check_dtype,
    check_finite,
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    check_problem,
    check_tensor,
    lapack_dtype,
    parse_precision,
)

dims = st.integers(min_value=1, max_value=4)


@given(dims, dims, dims, dtypes)
def test_valid_problems_pass_and_report_their_shape(batch, n, d, dtype):
    A, b, x = torch.ones(batch, n, d, dtype=dtype), torch.ones(batch, n, dtype=dtype), \
        torch.ones(batch, d, dtype=dtype)
    assert check_problem(A, b) == check_problem(A, b, x) == (batch, n, d)


@given(dims, dims, dims, dtypes, st.sampled_from(["A", "b", "x"]),
       st.sampled_from([math.nan, math.inf, -math.inf]))
def test_non_finite_values_are_named(batch, n, d, dtype, which, bad):
    t = {"A": torch.ones(batch, n, d, dtype=dtype), "b": torch.ones(batch, n, dtype=dtype),
         "x": torch.ones(batch, d, dtype=dtype)}
    t[which].view(-1)[-1] = bad
    with pytest.raises(ValueError, match=f"{which} contains NaN or Inf"):
        check_problem(t["A"], t["b"], t["x"])
    if which == "A":  # finite_A=False leaves A's values to the caller, and only A's
        assert check_problem(t["A"], t["b"], t["x"], finite_A=False) == (batch, n, d)
    else:
        with pytest.raises(ValueError, match=f"{which} contains NaN or Inf"):
            check_problem(t["A"], t["b"], t["x"], finite_A=False)


@given(dims, dims, dims, dtypes, st.sampled_from(["b", "x"]))
def test_shape_mismatch_is_named_and_never_broadcast(batch, n, d, dtype, which):
    t = {"A": torch.ones(batch, n, d, dtype=dtype), "b": torch.ones(batch, n, dtype=dtype),
         "x": torch.ones(batch, d, dtype=dtype)}
    t[which] = torch.ones(1 if batch > 1 else 2, t[which].shape[1], dtype=dtype)
    with pytest.raises(ValueError, match=f"{which} must have shape"):
        check_problem(t["A"], t["b"], t["x"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64, torch.bool,
                                   torch.complex64])
def test_unsupported_dtypes_are_type_errors(dtype):
    with pytest.raises(TypeError, match=r"float32 or torch\.float64"):
        check_dtype(dtype)
    with pytest.raises(TypeError, match=r"A\.dtype"):
        check_problem(torch.ones(2, 3, 2).to(dtype), torch.ones(2, 3).to(dtype))


def test_tensor_checks():
    with pytest.raises(TypeError, match=r"A must be a torch\.Tensor, got ndarray"):
        check_tensor(np.ones((2, 3, 2)), "A", 3)
    with pytest.raises(ValueError, match="A must have 3 dimensions"):
        check_tensor(torch.ones(3, 2), "A", 3)
    with pytest.raises(ValueError, match="A is empty"):
        check_tensor(torch.ones(0, 3, 2), "A", 3)
    with pytest.raises(ValueError, match="A is empty"):
        check_problem(torch.ones(2, 0, 2), torch.ones(2, 0))
    with pytest.raises(ValueError, match="y contains NaN"):
        check_finite(torch.tensor([math.nan]), "y")
    with pytest.raises(TypeError, match=r"b\.dtype .* differs from A\.dtype"):
        check_problem(torch.ones(2, 3, 2), torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="x_star must have shape"):
        check_problem(torch.ones(2, 3, 2), torch.ones(2, 3), torch.ones(2, 3), x_name="x_star")


@pytest.mark.parametrize(("check", "good", "low"), [
    (check_positive_int, 1, 0), (check_nonnegative_int, 0, -1)])
def test_int_checks_raise_type_error_for_non_ints_and_value_error_below(check, good, low):
    assert check(good, "n") == good and check(7, "n") == 7
    for bad in (True, 2.0, "3", None):
        with pytest.raises(TypeError, match="n must be a"):
            check(bad, "n")
    with pytest.raises(ValueError, match=f"n must be a .* int, got {low}"):
        check(low, "n")


def test_float_and_choice_checks():
    assert check_positive_float(2, "eta") == 2.0
    with pytest.raises(TypeError, match="eta"):
        check_positive_float("1", "eta")
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="eta must be finite and > 0"):
            check_positive_float(bad, "eta")
    assert check_choice("b", "mode", ("a", "b")) == "b"
    with pytest.raises(ValueError, match=r"mode must be one of \('a', 'b'\), got 'c'"):
        check_choice("c", "mode", ("a", "b"))


def test_precision_vocabulary_is_torch_dtype_names():
    assert PRECISIONS == ("float32", "float64", "bfloat16", "mixed")
    for name in ("float32", "float64"):
        p = parse_precision(name)
        assert p.param_dtype == p.compute_dtype == getattr(torch, name) and p.autocast is None
    bf16 = parse_precision("bfloat16")
    assert (bf16.param_dtype, bf16.autocast, bf16.mixed) == (torch.float32, torch.bfloat16, False)
    mixed = parse_precision("mixed")
    assert (mixed.param_dtype, mixed.compute_dtype, mixed.mixed) == (
        torch.float64, torch.float32, True)
    for old in ("fp32", "fp64", "bf16"):  # the old names are gone
        with pytest.raises(ValueError, match="precision must be one of"):
            parse_precision(old)
    with pytest.raises(ValueError, match="precision must be one of"):
        parse_precision("mixed", ("float32", "float64"))


@pytest.mark.parametrize(("dtypes", "want"), [
    ((torch.bfloat16, torch.int16), np.float32), ((torch.bool, torch.float16), np.float32),
    ((torch.int32, torch.float32), np.float64), ((torch.float32, torch.float64), np.float64),
    ((np.uint16, np.float32), np.float32), ((np.int64,), np.float64),
])
def test_lapack_dtype_is_scipys_choice_for_numpy_and_torch(dtypes, want):
    arrays = [torch.zeros(2, dtype=t) if isinstance(t, torch.dtype) else np.zeros(2, t)
              for t in dtypes]
    assert lapack_dtype(*arrays) == want
    if not any(t == torch.bfloat16 for t in dtypes):  # NumPy has no bfloat16
        numpy = [a.numpy() if isinstance(a, torch.Tensor) else a for a in arrays]
        assert want == scipy.linalg.get_lapack_funcs("gelsd", numpy).dtype


def test_arrays_are_taken_as_given_and_checked_for_finiteness():
    a = np.ones((3, 2))[::-1]
    assert as_real_array(a, "A") is a
    t = torch.ones(2, requires_grad=True)
    assert not as_real_array(t, "b").requires_grad
    with pytest.raises(ValueError, match="x contains NaN or Inf: drop them"):
        check_finite(np.array([1.0, np.inf]), "x", "drop them")
