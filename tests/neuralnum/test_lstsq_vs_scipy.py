"""``neuralnum.lstsq`` against ``scipy.linalg.lstsq``, by property.

Hypothesis draws shapes (empty, one row, one column, wide, tall, batched), dtypes (booleans,
integers, float16/32/64, mixed), memory layouts (C, Fortran, non-contiguous, negative
strides), containers (NumPy, torch, nested lists), ``b`` 1-D / 2-D / with zero columns,
rank-deficient and exactly singular (zero) matrices, NaN / ±Inf in ``A`` or ``b`` and every
scipy option. The reference path must return what scipy returns — the same values bit for
bit, shapes and dtypes — or raise the same class of error; a learned path must return a
finite result of scipy's shapes and dtype, or a clear one-line error, never a NaN.

Two cases are not scipy's own answers, by design (the module docstring of
:mod:`neuralnum.least_squares`): a ``b`` with zero columns and a non-empty ``A`` (LAPACK
refuses it; ``lstsq`` answers ``x: (d, 0)`` with ``rank``, ``s`` of ``A``), and a batch
(scipy per problem, stacked, ``residues`` NaN where scipy returns none). With
``check_finite=False`` a non-finite ``A`` is drawn only for ``gelsy``: ``gelsd`` and
``gelss`` may never return on one (scipy's documented hazard), which would hang the test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from learner_standins import one_thread  # noqa: F401 (autouse fixture)

import neuralnum
from neuralnum.solvers.learner import Learner
from neuralnum.training.recipe import Recipe

DTYPES = (np.bool_, np.int8, np.uint8, np.int16, np.int32, np.int64, np.float16, np.float32,
          np.float64)
LAYOUTS = ("C", "F", "strided", "reversed")
#: The learned solvers of the learned-path property: (n, d) = (5, 3) in both dtypes.
SHAPE = (5, 3)


@dataclass(frozen=True)
class Case:
    """One drawn call: data, how it is laid out and held, and scipy's options."""

    A: np.ndarray  # (B, n, d) or (n, d), C order, the values
    b: np.ndarray
    layouts: tuple[str, str]
    container: str  # "numpy", "torch" or "list"
    options: dict[str, Any]

    def inputs(self) -> tuple[Any, Any]:
        """Fresh ``A``, ``b`` in the drawn layouts and container (a call may overwrite)."""
        arrays = [_layout(v, how) for v, how in zip((self.A, self.b), self.layouts,
                                                    strict=True)]
        if self.container == "torch":
            # torch has no negative strides: a reversed layout travels as a copy
            return tuple(torch.from_numpy(np.array(v) if any(s < 0 for s in v.strides) else v)
                         for v in arrays)
        if self.container == "list":
            return tuple(v.tolist() for v in arrays)
        return tuple(arrays)


def _layout(v: np.ndarray, how: str) -> np.ndarray:
    """A copy of ``v`` laid out in memory ``how``."""
    if how == "F":
        return np.array(v, order="F")
    if how == "strided":  # every other element of a twice-as-long last axis
        wide = np.zeros((*v.shape[:-1], 2 * v.shape[-1]), v.dtype) if v.ndim else v.copy()
        if v.ndim:
            wide[..., ::2] = v
            return wide[..., ::2]
        return wide
    if how == "reversed":  # negative strides on every axis
        flipped = np.ascontiguousarray(v[(slice(None, None, -1),) * v.ndim])
        return flipped[(slice(None, None, -1),) * v.ndim]
    return np.array(v, order="C")


def _values(rng: np.random.Generator, shape: tuple[int, ...], dtype: type,
            rank: int | None) -> np.ndarray:
    """Standard normal values (of rank ``rank`` per matrix when given; 0: all zeros) in
    ``dtype`` (integers rounded from 3×, booleans the positive entries)."""
    if rank is None:
        v = rng.standard_normal(shape)
    else:
        *lead, n, d = shape
        v = rng.standard_normal((*lead, n, rank)) @ rng.standard_normal((*lead, rank, d))
    if np.dtype(dtype).kind == "b":
        return v > 0
    if np.dtype(dtype).kind in "iu":
        return np.abs(np.round(3 * v)).astype(dtype) if np.dtype(dtype).kind == "u" else \
            np.round(3 * v).astype(dtype)
    return v.astype(dtype)


@st.composite
def cases(draw: st.DrawFn, path: str = "reference") -> Case:
    """A drawn call for ``path``: ``"reference"`` (any shape), ``"learned"`` (mostly the
    learners' :data:`SHAPE`, some other or empty shapes, fewer non-finite values) or
    ``"served"`` (what the learners serve: their shape, finite values, non-empty)."""
    learned = path != "reference"
    served = path == "served"
    batch = draw(st.sampled_from([None, None, 1, 2, *([] if served else [0])]))
    if served:
        n, d = SHAPE
    elif learned:
        n, d = draw(st.sampled_from([SHAPE] * 5 + [(4, 3), (0, 3), (5, 0)]))
    else:
        n, d = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    k = draw(st.sampled_from([None, None, 1, 2, *([] if served else [0])]))
    a_dtype, b_dtype = draw(st.sampled_from(DTYPES)), draw(st.sampled_from(DTYPES))
    rank = draw(st.sampled_from([None, None, 0, 1, 2]))
    rank = None if rank is None or n * d == 0 else min(rank, n, d)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lead = () if batch is None else (batch,)
    A = _values(rng, (*lead, n, d), a_dtype, rank)
    b = _values(rng, (*lead, n, *(() if k is None else (k,))), b_dtype, None)
    options = {"check_finite": draw(st.booleans()),
               "lapack_driver": draw(st.sampled_from([None, "gelsd", "gelsy", "gelss"])),
               "cond": draw(st.sampled_from([None, 1e-3])),
               "overwrite_a": draw(st.booleans()), "overwrite_b": draw(st.booleans())}
    where = None if served else draw(st.sampled_from([None] * (6 if learned else 2)
                                                     + ["A", "b"]))
    target = A if where == "A" else b
    if where is not None and target.size:
        bad = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        target = target.astype(np.result_type(target.dtype, np.float16))
        target.reshape(-1)[draw(st.integers(0, target.size - 1))] = bad
        A, b = (target, b) if where == "A" else (A, target)
        if where == "A" and not options["check_finite"]:
            options["lapack_driver"] = "gelsy"  # gelsd / gelss may never return
    if learned:
        options = {key: options[key] for key in ("check_finite", "overwrite_a",
                                                 "overwrite_b")}
    layouts = (draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(LAYOUTS)))
    # nested lists cannot hold an empty axis's length: lists only for non-empty arrays
    containers = ["numpy", "numpy", "torch", *(["list"] if A.size and b.size else [])]
    container = draw(st.sampled_from(containers))
    return Case(A, b, layouts, container, options)


# --------------------------------------------------------------------------- scipy's answer
def _scipy_one(A: np.ndarray, b: np.ndarray, options: dict[str, Any]) -> tuple:
    """scipy's answer to one problem (zero columns with a non-empty ``A``: the limit)."""
    if b.ndim == 2 and b.shape[1] == 0 and A.size:
        dtype = scipy.linalg.get_lapack_funcs("gelsd", (A, b)).dtype
        _, _, rank, s = scipy.linalg.lstsq(A, np.zeros(A.shape[0], dtype), **options)
        return np.zeros((A.shape[1], 0), dtype), np.zeros(0, dtype), rank, s
    return scipy.linalg.lstsq(A, b, **options)


def _as_scipy_sees(case: Case) -> tuple[np.ndarray, np.ndarray]:
    return tuple(np.asarray(_numpy(v)) for v in case.inputs())


def _scipy_dtype(case: Case) -> np.dtype:
    """The dtype scipy computes ``case`` in."""
    return scipy.linalg.get_lapack_funcs("gelsd", _as_scipy_sees(case)).dtype


def _scipy(case: Case) -> tuple | BaseException:
    """scipy on ``case`` (per problem of a batch, stacked), or the error it raises."""
    A, b = _as_scipy_sees(case)
    try:
        if A.ndim == 2:
            return _scipy_one(A, b, case.options)
        parts = [_scipy_one(A[i], b[i], case.options) for i in range(A.shape[0])]
    except Exception as error:
        return error
    if not parts:
        return None
    x = np.stack([p[0] for p in parts])
    residues = np.full((len(parts), *b.shape[2:]), np.nan, x.dtype)
    for i, p in enumerate(parts):
        if np.size(p[1]):
            residues[i] = p[1]
    s = None if parts[0][3] is None else np.stack([p[3] for p in parts])
    return x, residues, np.array([p[2] for p in parts]), s


def _numpy(value: Any) -> Any:
    return value.numpy() if isinstance(value, torch.Tensor) else value


def _assert_same(ours: Any, theirs: tuple, container: str) -> None:
    assert len(ours) == 4
    for got, want in zip(ours, theirs, strict=True):
        if want is None:
            assert got is None
        elif isinstance(want, int):
            assert isinstance(got, int) and got == want
        else:
            if container == "torch":
                assert isinstance(got, torch.Tensor)
                got = got.numpy()
            else:  # an ndarray, or a NumPy scalar where scipy returns one
                assert type(got) is type(want)
            assert np.shape(got) == np.shape(want) and got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_reference_path_returns_what_scipy_returns(case):
    theirs = _scipy(case)
    try:
        ours = neuralnum.lstsq(*case.inputs(), **case.options)
    except Exception as error:
        assert isinstance(theirs, BaseException), f"scipy answered, we raised {error!r}"
        assert type(error) is type(theirs), (error, theirs)
        return
    assert not isinstance(theirs, BaseException), f"scipy raised {theirs!r}, we answered"
    if theirs is None:  # an empty batch: shapes only
        assert ours.x.shape[0] == 0 and ours.rank.shape == (0,)
        return
    _assert_same(ours, theirs, case.container)


# --------------------------------------------------------------------------- learned path
@pytest.fixture(scope="module")
def learners() -> dict[np.dtype, Learner]:
    """The exact GD construction at :data:`SHAPE`, in float32 and float64."""
    return {np.dtype(name): Learner("linear_attention", "gd", Recipe(dtype=name), n=SHAPE[0],
                                    d=SHAPE[1]).init_construction()
            for name in ("float32", "float64")}


_DT = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def _learned_check(case: Case, learner: Learner) -> None:
    want = _scipy_dtype(case)
    n, d = case.A.shape[-2:]
    serves = (np.isfinite(case.A).all() and np.isfinite(case.b).all()
              and want == _DT[learner.dtype]
              and ((d == SHAPE[1] and 1 <= n <= SHAPE[0]) or n * d == 0))
    try:
        result = neuralnum.lstsq(*case.inputs(), solver=learner, **case.options)
    except (TypeError, ValueError, FloatingPointError) as error:
        assert str(error) and "\n" not in str(error)
        assert not serves, f"refused a problem it serves: {error!r}"
        return
    assert serves, "answered a problem it had to refuse"
    x = _numpy(result.x)
    assert np.isfinite(x).all() and x.dtype == want
    assert x.shape == (*case.A.shape[:-2], d, *case.b.shape[case.A.ndim - 1:])
    assert result.rank is None and result.s is None


@settings(max_examples=120, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=cases("learned"), matching=st.sampled_from([True, True, True, False]))
def test_learned_path_returns_finite_results_or_a_clear_error(case, matching, learners):
    """Mostly the learner of scipy's dtype for the inputs (else the other one)."""
    dtype = _scipy_dtype(case)
    if not matching:
        dtype = np.dtype(np.float32 if dtype == np.float64 else np.float64)
    _learned_check(case, learners[dtype])


@settings(max_examples=60, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=cases("served"))
def test_learned_path_answers_what_it_serves(case, learners):
    """Every dtype, layout, container and rank (zero included) the learner can serve is
    answered, finitely."""
    _learned_check(case, learners[_scipy_dtype(case)])
