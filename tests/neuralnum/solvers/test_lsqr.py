"""neuralnum.solvers.lsqr / cgls: LSQR against scipy, CGLS, minimum norm, accuracy, guards,
batching.

numpy.linalg (pinv, qr) and mpmath appear only here, as judges and to build test matrices.
"""

from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch
from dense_products import DenseProducts, cg_normal, digits, family, reference
from hypothesis import given
from hypothesis import strategies as st

from neuralnum.solvers import lsqr as lsqr_module
from neuralnum.solvers.cgls import cgls
from neuralnum.solvers.ls_driver import (
    ISTOP_NAMES,
    LsqrInfo,
    Options,
    _finite_rows,
    _stopping_tests,
    options,
)
from neuralnum.solvers.lsqr import _lsqr_norms, _sym_ortho, lsqr

pytestmark = pytest.mark.usefixtures("single_thread")

SOLVERS = [lsqr, cgls]
ESTIMATES = ("r1norm", "r2norm", "anorm", "acond", "arnorm", "xnorm")


def make_a(rng: np.random.Generator, n: int, d: int, cond: float = 10.0) -> np.ndarray:
    """Random (n, d) matrix with singular values logspace(0, -log10(cond))."""
    k = min(n, d)
    u, _ = np.linalg.qr(rng.standard_normal((n, k)))
    v, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return (u * np.logspace(0, -np.log10(cond), k)) @ v.T


def solve(fn, a: np.ndarray, b: np.ndarray, **kw) -> tuple[np.ndarray, LsqrInfo, DenseProducts]:
    """Run ``fn`` on float64 numpy data; return x as numpy, info and the products object."""
    op = DenseProducts(torch.tensor(a))
    if "x0" in kw:
        kw["x0"] = torch.tensor(kw["x0"])
    x, info = fn(op, torch.tensor(b), **kw)
    return x.numpy(), info, op


def scipy_lsqr(a: np.ndarray, b: np.ndarray, **kw) -> tuple:
    """scipy.sparse.linalg.lsqr with its divide-by-zero warnings silenced."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return sla.lsqr(a, b, **kw)


def assert_like_scipy(
    a: np.ndarray, b: np.ndarray, xtol: float = 1e-12, estimates: bool = True, **kw
) -> LsqrInfo:
    """LSQR on each problem of the batch matches scipy: istop, itn, x and the estimates.

    Estimate tolerances: after loss of orthogonality scipy's own anorm/acond/arnorm move by up
    to 6e-6 / 5e-3 (relative) when A is perturbed by 1e-16 relative, so those are compared
    loosely; r1norm/r2norm relative to ||b||, xnorm tightly.  ``estimates=False`` compares
    only istop, itn and x.
    """
    x, info, op = solve(lsqr, a, b, **kw)
    for p in range(a.shape[0]):
        kp = {**kw, "x0": kw["x0"][p]} if "x0" in kw else kw
        ref = scipy_lsqr(a[p], b[p], **kp)
        assert (int(info.istop[p]), int(info.itn[p])) == (ref[1], ref[2]), p
        np.testing.assert_allclose(x[p], ref[0], rtol=0, atol=xtol * (1 + np.abs(ref[0]).max()))
        if not estimates:
            continue
        bnorm, anorm = np.linalg.norm(b[p]), ref[5]
        tols = {
            "r1norm": 1e-9 * (abs(ref[3]) + bnorm),
            "r2norm": 1e-9 * (ref[4] + bnorm),
            "anorm": 1e-4 * anorm,
            "acond": 1e-4 * ref[6],
            "arnorm": 1e-2 * ref[7] + 1e-13 * anorm * bnorm,
            "xnorm": 1e-9 * ref[8] + 1e-300,
        }
        for name, val in zip(ESTIMATES, ref[3:9], strict=True):
            assert abs(float(getattr(info, name)[p]) - val) <= tols[name], (p, name)
    assert torch.equal(op.calls, info.calls)
    return info


# --------------------------------------------------------------------------- LSQR vs scipy


@given(
    n=st.integers(1, 9),
    d=st.integers(1, 9),
    batch=st.integers(1, 3),
    seed=st.integers(0, 10**6),
    damp=st.sampled_from([0.0, 0.3]),
    with_x0=st.booleans(),
)
def test_early_iterates_match_scipy(n, d, batch, seed, damp, with_x0):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((batch, n, d)), rng.standard_normal((batch, n))
    kw = {"damp": damp} | ({"x0": rng.standard_normal((batch, d))} if with_x0 else {})
    _, info, _ = solve(lsqr, a, b, record=True, **kw)
    hist = info.history.numpy()
    for p in range(batch):
        for k in range(1, 6):
            kp = {**kw, "x0": kw["x0"][p]} if with_x0 else kw
            ref = scipy_lsqr(a[p], b[p], iter_lim=k, **kp)[0]
            got = hist[min(k, len(hist) - 1), p]
            assert np.abs(got - ref).max() <= 1e-10 * (1 + np.abs(ref).max()), (p, k)


SMALL, BIG = (60, 30, 3.0), (120, 60, 3.0)  # (n, d, cond): converge well before itn = d
REGIMES = {  # name: (options, (n, d, cond), consistent b, x tolerance)
    "default": ({}, SMALL, False, 1e-12),
    "loose": ({"atol": 1e-3, "btol": 1e-3}, SMALL, False, 1e-12),
    "consistent": ({}, SMALL, True, 1e-12),
    "tight": ({"atol": 1e-14, "btol": 1e-16}, BIG, False, 1e-12),
    "tight_consistent": ({"atol": 1e-14, "btol": 1e-16}, BIG, True, 1e-12),
    "conlim": ({"conlim": 30.0, "atol": 1e-12, "btol": 1e-12}, (60, 30, 1e3), False, 1e-7),
    "iter_lim": ({"iter_lim": 5}, SMALL, False, 1e-12),
    "damp": ({"damp": 0.5, "atol": 1e-10, "btol": 1e-10}, (60, 30, 100.0), False, 1e-12),
    "damp_consistent": ({"damp": 0.05, "atol": 1e-10, "btol": 1e-10}, BIG, True, 1e-12),
    "wide": ({"atol": 1e-12, "btol": 1e-12}, (40, 120, 3.0), False, 1e-12),
}
EXPECTED_ISTOP = {"conlim": 3, "iter_lim": 7, "consistent": 1, "tight_consistent": 1, "wide": 1}


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_final_results_match_scipy(regime):
    kw, (n, d, cond), consistent, xtol = REGIMES[regime]
    rng = np.random.default_rng(sorted(REGIMES).index(regime))
    a = np.array([make_a(rng, n, d, cond) for _ in range(4)])
    b = np.einsum("bnd,bd->bn", a, rng.standard_normal((4, d))) if consistent else None
    b = rng.standard_normal((4, n)) if b is None else b
    info = assert_like_scipy(a, b, xtol=xtol, **kw)
    assert set(info.istop.tolist()) == {EXPECTED_ISTOP.get(regime, 2)}


def test_machine_precision_stops_match_scipy():
    """atol = btol = conlim = 0: only the machine-precision rules 4-6 (and 7) can stop.

    These stops are decided at the rounding floor, so only istop, itn and x are compared.
    """
    rng = np.random.default_rng(21)
    a = np.array([make_a(rng, 20, 10, 10.0) for _ in range(4)])
    b = np.einsum("bnd,bd->bn", a, rng.standard_normal((4, 10)))
    x, info, _ = solve(lsqr, a, b, atol=0.0, btol=0.0, conlim=0.0)
    for p in range(4):
        ref = scipy_lsqr(a[p], b[p], atol=0.0, btol=0.0, conlim=0.0)
        assert (int(info.istop[p]), int(info.itn[p])) == (ref[1], ref[2]) and ref[1] in (4, 5, 6)
        np.testing.assert_allclose(x[p], ref[0], rtol=0, atol=1e-12 * np.abs(ref[0]).max())


def test_default_iter_lim_is_two_d():
    """scipy's default iter_lim = 2 * (number of columns), also for n != d."""
    for n, d in ((3, 7), (9, 2)):
        op = DenseProducts(torch.ones(1, n, d, dtype=torch.float64))
        assert (
            options(op, torch.ones(1, n, dtype=torch.float64), None, 0, 0, 0, 0, None).iter_lim
            == 2 * d
        )


def test_x0_matches_scipy():
    rng = np.random.default_rng(7)
    a, b = np.array([make_a(rng, 60, 30, 3.0) for _ in range(3)]), rng.standard_normal((3, 60))
    for damp in (0.0, 0.4):
        assert_like_scipy(a, b, x0=rng.standard_normal((3, 30)), damp=damp, atol=1e-10, btol=1e-10)


def test_degenerate_starts_match_scipy():
    """iter_lim = 0; b = 0 with x0 != 0 (scipy divides by bnorm = 0); b = A x0 exactly."""
    rng = np.random.default_rng(8)
    a = rng.integers(-3, 4, (2, 6, 4)).astype(float)
    assert_like_scipy(a, rng.standard_normal((2, 6)), iter_lim=0)
    assert_like_scipy(a, np.zeros((2, 6)), x0=rng.standard_normal((2, 4)), estimates=False)
    x0 = rng.integers(-3, 4, (2, 4)).astype(float)  # integers: A x0 is exact in any order
    info = assert_like_scipy(a, np.einsum("bnd,bd->bn", a, x0), x0=x0)
    assert info.istop.tolist() == [0, 0] and info.calls.tolist() == [1, 1]


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (7, 1)])
def test_tiny_shapes_match_scipy_and_pinv(shape):
    rng = np.random.default_rng(sum(shape))
    a, b = rng.standard_normal((3, *shape)), rng.standard_normal((3, shape[0]))
    # scipy's anorm stays 0 when the first beta is exactly 0, which for n = 1 is a rounding
    # coincidence of A v = alfa u; so only istop, itn and x are compared with scipy here
    assert_like_scipy(a, b, estimates=False, atol=1e-12, btol=1e-12)
    for fn in SOLVERS:
        x, _, _ = solve(fn, a, b, atol=1e-12, btol=1e-12, iter_lim=50)
        np.testing.assert_allclose(x, np.einsum("bdn,bn->bd", np.linalg.pinv(a), b), atol=1e-9)


def test_stopping_rule_precedence():
    """Each rule fires on its own and a lower code wins when several hold (scipy's order)."""
    tol = Options(damp=0.0, atol=1e-6, btol=1e-6, ctol=1e-8, iter_lim=10, eps=2.0**-52)
    machine = Options(damp=0.0, atol=0.0, btol=0.0, ctol=0.0, iter_lim=10, eps=2.0**-52)
    base = {"rnorm": 1.0, "bnorm": 1.0, "arnorm": 1.0, "anorm": 1.0, "acond": 1.0, "xnorm": 1.0}
    cases = [
        (machine, {}, 0),
        (machine, {"itn": 10}, 7),
        (machine, {"acond": 1e17}, 6),
        (machine, {"arnorm": 1e-17}, 5),
        (machine, {"rnorm": 1e-17, "arnorm": 1e-3}, 4),
        (machine, {"acond": 1e17, "arnorm": 1e-17}, 5),
        (machine, {"itn": 10, "rnorm": 1e-17, "arnorm": 1e-3}, 4),
        (tol, {}, 0),
        (tol, {"acond": 2e8}, 3),
        (tol, {"arnorm": 1e-7}, 2),
        (tol, {"rnorm": 1.4e-6, "xnorm": 0.5, "arnorm": 1e-3}, 1),
        (tol, {"rnorm": 1.6e-6, "xnorm": 0.5, "arnorm": 1e-3}, 0),
        (tol, {"rnorm": 1.6e-6, "xnorm": 1.0, "arnorm": 1e-3}, 1),
        (tol, {"itn": 10, "acond": 2e8}, 3),
        (tol, {"acond": 2e8, "arnorm": 1e-7}, 2),
        (tol, {"arnorm": 1e-7, "rnorm": 1e-7}, 1),
        (tol, {"itn": 12, "rnorm": 1e-17}, 1),
    ]
    for o, change, code in cases:
        s = {k: torch.tensor([v], dtype=torch.float64) for k, v in (base | change).items()}
        s["itn"] = torch.tensor([change.get("itn", 1)])
        assert int(_stopping_tests(s, o)) == code, (change, code)
    assert len(ISTOP_NAMES) == 9 and LsqrInfo.names is ISTOP_NAMES


def test_sym_ortho_equals_scipys():
    """The batched rotation reproduces scipy's _sym_ortho, signs and zero cases included."""
    from scipy.sparse.linalg._isolve.lsqr import _sym_ortho as scipy_sym_ortho

    vals = [0.0, 1.0, -1.0, 3.0, -0.25, 1e-300, -7e200]
    pairs = [(a, b) for a in vals for b in vals]
    a, b = (torch.tensor(v, dtype=torch.float64) for v in zip(*pairs, strict=True))
    got = torch.stack(_sym_ortho(a, b), dim=1).numpy()
    ref = np.array([[float(t) for t in scipy_sym_ortho(x, y)] for x, y in pairs])
    # torch's CPU sqrt may differ from math.sqrt by one ulp: compare to 4 ulp, signs exactly
    np.testing.assert_allclose(got, ref, rtol=1e-15, atol=0)
    assert np.array_equal(np.sign(got), np.sign(ref))


def test_r1norm_sign_convention_with_damp():
    """scipy returns r1norm = -sqrt(|r1sq|) when r1sq = rnorm^2 - damp^2 xxnorm < 0."""
    one = torch.ones(2, dtype=torch.float64)
    s = {
        "anorm": one,
        "ddnorm": one,
        "res2": 0 * one,
        "phibar": one,
        "alfa": one,
        "xxnorm": torch.tensor([0.5, 2.0], dtype=torch.float64),
    }
    _lsqr_norms(s, tau=one, psi=0 * one, damp=1.0)
    assert s["r1norm"].tolist() == [np.sqrt(0.5), -1.0] and s["r2norm"].tolist() == [1.0, 1.0]


# --------------------------------------------------------------------------- min norm, CGLS


@given(seed=st.integers(0, 10**6), wide=st.booleans(), fn=st.sampled_from(SOLVERS))
def test_minimum_norm_rank_deficient_and_wide(seed, wide, fn):
    rng = np.random.default_rng(seed)
    if wide:
        a = rng.standard_normal((2, 4, 10))
    else:
        a = np.einsum(
            "bnk,bkd->bnd", rng.standard_normal((2, 12, 3)), rng.standard_normal((2, 3, 8))
        )
    b = rng.standard_normal((2, a.shape[1]))
    x, info, _ = solve(fn, a, b, atol=1e-14, btol=1e-14, iter_lim=100)
    ref = np.einsum("bdn,bn->bd", np.linalg.pinv(a), b)
    np.testing.assert_allclose(x, ref, atol=1e-8 * np.abs(ref).max())
    assert set(info.istop.tolist()) <= {1, 2, 4, 5}


def test_x0_keeps_its_null_space_component():
    rng = np.random.default_rng(3)
    a, b, x0 = (
        rng.standard_normal((2, 3, 7)),
        rng.standard_normal((2, 3)),
        rng.standard_normal((2, 7)),
    )
    pinv = np.linalg.pinv(a)
    ref = np.einsum("bdn,bn->bd", pinv, b) + x0 - np.einsum("bdn,bnk,bk->bd", pinv, a, x0)
    for fn in SOLVERS:
        x, _, _ = solve(fn, a, b, x0=x0, atol=1e-14, btol=1e-14, iter_lim=50)
        np.testing.assert_allclose(x, ref, atol=1e-9)


@given(
    n=st.integers(6, 20),
    d=st.integers(1, 6),
    seed=st.integers(0, 10**6),
    damp=st.sampled_from([0.0, 0.0, 0.7]),
)
def test_cgls_reaches_lstsq_solution(n, d, seed, damp):
    rng = np.random.default_rng(seed)
    a = np.array([make_a(rng, n, d, 10.0) * rng.uniform(0.1, 10) for _ in range(3)])
    b = rng.standard_normal((3, n))
    x, info, op = solve(cgls, a, b, damp=damp, atol=1e-14, btol=1e-14, iter_lim=60)
    aug = np.concatenate([a, np.broadcast_to(damp * np.eye(d), (3, d, d))], axis=1)
    ref = np.einsum("bdn,bn->bd", np.linalg.pinv(aug), np.concatenate([b, np.zeros((3, d))], 1))
    np.testing.assert_allclose(x, ref, atol=1e-10 * (1 + np.abs(ref).max()))
    assert set(info.istop.tolist()) <= {1, 2, 4, 5}
    assert torch.equal(op.calls, 1 + 2 * info.itn) and torch.equal(op.calls, info.calls)


@pytest.mark.parametrize("damp", [0.0, 0.5])
def test_cgls_estimates_equal_lsqr_estimates(damp):
    """CGLS's anorm/acond (from CG coefficients) equal LSQR's and its other norms agree."""
    rng = np.random.default_rng(11)
    a, b = np.array([make_a(rng, 15, 6, 50.0) for _ in range(3)]), rng.standard_normal((3, 15))
    for k in (1, 2, 4):
        _, il, _ = solve(lsqr, a, b, damp=damp, iter_lim=k)
        _, ic, _ = solve(cgls, a, b, damp=damp, iter_lim=k)
        for name in ("anorm", "acond", "r2norm", "arnorm", "xnorm"):
            torch.testing.assert_close(getattr(ic, name), getattr(il, name), rtol=1e-9, atol=0)


def test_ill_conditioned_family_keeps_kappa_u_accuracy():
    """kappa = 1e4, n = 20, d = 5, b = A x*: LSQR/CGLS >= 12 digits, normal-equation CG ~ 9."""
    a, b = family(12)
    refs = [reference(a[p], b[p]) for p in range(12)]
    opts = {"atol": 1e-16, "btol": 1e-16, "iter_lim": 60}
    for fn in SOLVERS:
        x, info, _ = solve(fn, a, b, **opts)
        got = [digits(x[p], refs[p]) for p in range(12)]
        assert min(got) >= 12.0, (fn.__name__, got)
        assert set(info.istop.tolist()) <= {1, 4}
    cg = [digits(cg_normal(a[p], b[p]), refs[p]) for p in range(12)]
    assert np.median(cg) <= 10.0 and np.median(got) >= np.median(cg) + 2.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fn", SOLVERS)
def test_float32_and_float64(fn, dtype):
    rng = np.random.default_rng(5)
    a, b = np.array([make_a(rng, 20, 6, 10.0) for _ in range(3)]), rng.standard_normal((3, 20))
    op = DenseProducts(torch.tensor(a, dtype=dtype))
    x, info = fn(op, torch.tensor(b, dtype=dtype), atol=0.0, btol=0.0, iter_lim=40)
    assert x.dtype == dtype and all(getattr(info, k).dtype == dtype for k in ESTIMATES)
    assert x.device == op.device and info.istop.dtype == torch.long
    ref = np.einsum("bdn,bn->bd", np.linalg.pinv(a), b)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(x.double().numpy(), ref, atol=tol * np.abs(ref).max())
    assert set(info.istop.tolist()) <= {4, 5, 7}


# --------------------------------------------------------------------------- invariances, guards


@pytest.mark.parametrize("fn", SOLVERS)
@pytest.mark.parametrize(
    ("dtype", "ea", "eb"),
    [(torch.float64, 400, 300), (torch.float64, 400, 600), (torch.float32, 40, 20)],
)
def test_power_of_two_scale_invariance(fn, dtype, ea, eb):
    rng = np.random.default_rng(2)
    a = torch.tensor(np.array([make_a(rng, 12, 5, 100.0) for _ in range(3)]), dtype=dtype)
    b = torch.tensor(rng.standard_normal((3, 12)), dtype=dtype)
    x, info = fn(DenseProducts(a), b, atol=1e-10, btol=1e-10)
    xs, infos = fn(DenseProducts(a * 2.0**ea), b * 2.0**eb, atol=1e-10, btol=1e-10)
    assert torch.equal(xs, x * 2.0 ** (eb - ea))
    assert torch.equal(infos.istop, info.istop) and torch.equal(infos.itn, info.itn)
    powers = {
        "r1norm": eb,
        "r2norm": eb,
        "anorm": ea,
        "acond": 0,
        "arnorm": ea + eb,
        "xnorm": eb - ea,
    }
    for name, e in powers.items():
        assert torch.equal(getattr(infos, name), getattr(info, name) * 2.0**e), name


FORBIDDEN_TORCH = (
    "svd",
    "svd_lowrank",
    "pca_lowrank",
    "qr",
    "geqrf",
    "ormqr",
    "orgqr",
    "lu",
    "lu_solve",
    "lu_unpack",
    "pinverse",
    "inverse",
    "det",
    "logdet",
    "slogdet",
    "cholesky",
    "cholesky_solve",
    "cholesky_inverse",
    "triangular_solve",
    "norm",
    "lobpcg",
    "matrix_power",
    "matrix_exp",
)


def forbid_linalg(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every torch.linalg function and the torch/Tensor factorisations raise."""

    def boom(*args, **kwargs):
        raise AssertionError("the solver called a linear-algebra routine")

    for name, obj in vars(torch.linalg).items():
        if callable(obj) and not name.startswith("_") and not inspect.isclass(obj):
            monkeypatch.setattr(torch.linalg, name, boom)
    for name in FORBIDDEN_TORCH:
        for owner in (torch, torch.Tensor):
            if callable(getattr(owner, name, None)) and not inspect.ismodule(getattr(owner, name)):
                monkeypatch.setattr(owner, name, boom)


@pytest.mark.parametrize("fn", SOLVERS)
def test_never_calls_torch_linalg(fn, monkeypatch):
    rng = np.random.default_rng(4)
    a = torch.tensor(rng.standard_normal((3, 9, 5)))
    b, x0 = torch.tensor(rng.standard_normal((3, 9))), torch.tensor(rng.standard_normal((3, 5)))
    options = ({}, {"damp": 0.3, "x0": x0}, {"record": True, "conlim": 10.0})
    expected = [fn(DenseProducts(a), b, **kw)[0] for kw in options]
    forbid_linalg(monkeypatch)
    with pytest.raises(AssertionError):
        torch.linalg.vector_norm(b)
    with pytest.raises(AssertionError):
        a.svd()
    for kw, x in zip(options, expected, strict=True):
        assert torch.equal(fn(DenseProducts(a), b, **kw)[0], x)
    assert torch.isfinite(fn(DenseProducts(a.float()), b.float())[0]).all()


# --------------------------------------------------------------------------- batching, calls


def mixed_batch() -> tuple[np.ndarray, np.ndarray]:
    """Problems that stop at different iterations: b = 0, 1 and 2 distinct singular values,
    a generic inconsistent one and an ill-conditioned consistent one."""
    rng = np.random.default_rng(9)
    q, _ = np.linalg.qr(rng.standard_normal((10, 6)))
    a = np.array(
        [
            rng.standard_normal((10, 6)),
            3.0 * q,
            q * np.array([1, 1, 1, 4, 4, 4]),
            rng.standard_normal((10, 6)),
            make_a(rng, 10, 6, 1e5),
        ]
    )
    b = np.einsum("bnd,bd->bn", a, rng.standard_normal((5, 6)))
    b[0] = 0.0
    b[3] = rng.standard_normal(10)
    return a, b


@pytest.mark.parametrize("fn", SOLVERS)
def test_batch_equals_problems_solved_alone(fn):
    a, b = mixed_batch()
    kw = {"atol": 1e-12, "btol": 1e-12, "iter_lim": 30}
    x, info, op = solve(fn, a, b, **kw)
    assert len(set(info.itn.tolist())) >= 4 and int(info.itn[0]) == 0
    for p in range(5):
        xp, ip, _ = solve(fn, a[p : p + 1], b[p : p + 1], **kw)
        np.testing.assert_allclose(x[p], xp[0], rtol=0, atol=1e-13 * (1 + np.abs(xp).max()))
        assert (int(info.istop[p]), int(info.itn[p])) == (int(ip.istop[0]), int(ip.itn[0]))
        assert int(info.calls[p]) == int(ip.calls[0])
    assert torch.equal(op.calls, info.calls)
    assert torch.equal(info.calls, torch.where(info.itn > 0, 1 + 2 * info.itn, 0))
    assert torch.equal(info.matvecs, info.itn)


class RecordingProducts(DenseProducts):
    """DenseProducts that logs the problems in each call's ``idx``."""

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__(A)
        self.log: list[set[int]] = []

    def matvec(self, v, idx):
        self.log.append(set(idx.tolist()))
        return super().matvec(v, idx)

    def rmatvec(self, u, idx):
        self.log.append(set(idx.tolist()))
        return super().rmatvec(u, idx)


@pytest.mark.parametrize("fn", SOLVERS)
def test_stopped_problems_get_no_calls_and_history_freezes(fn):
    a, b = mixed_batch()
    op = RecordingProducts(torch.tensor(a))
    x, info = fn(op, torch.tensor(b), atol=1e-12, btol=1e-12, iter_lim=30, record=True)
    # the last call involving p is at most 2 * itn_p calls after the first one
    for p in range(5):
        calls = [k for k, s in enumerate(op.log) if p in s]
        assert len(calls) == int(info.calls[p])
        assert not calls or calls[-1] <= 2 * int(info.itn[p])
        hist = info.history[:, p]
        assert torch.equal(hist[int(info.itn[p]) :], x[p].expand_as(hist[int(info.itn[p]) :]))
    assert info.history.shape == (int(info.itn.max()) + 1, 5, 6)
    assert torch.equal(info.history[0], torch.zeros(5, 6, dtype=torch.float64))


# --------------------------------------------------------------------------- edge cases, NaN


@pytest.mark.parametrize("fn", SOLVERS)
def test_zero_rhs_and_zero_row_column(fn):
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((3, 8, 5)), rng.standard_normal((3, 8))
    a[1, :, 2] = 0.0
    a[2, 4, :] = 0.0
    b[0] = 0.0
    x, info, op = solve(fn, a, b, atol=1e-14, btol=1e-14, iter_lim=50)
    assert np.all(x[0] == 0) and (int(info.istop[0]), int(info.itn[0]), int(op.calls[0])) == (
        0,
        0,
        0,
    )
    assert x[1, 2] == 0.0
    np.testing.assert_allclose(x, np.einsum("bdn,bn->bd", np.linalg.pinv(a), b), atol=1e-10)


class FaultyProducts(DenseProducts):
    """DenseProducts whose ``kind`` product returns ``value`` for ``problem`` at its call ``at``."""

    def __init__(self, A: torch.Tensor, problem: int, at: int, kind: str, value: float) -> None:
        super().__init__(A)
        self.problem, self.at, self.kind, self.value = problem, at, kind, value

    def _poison(self, out: torch.Tensor, idx: torch.Tensor, kind: str) -> torch.Tensor:
        hit = (idx == self.problem) & (self.calls[self.problem] == self.at) & (kind == self.kind)
        out[hit, 0] = self.value
        return out

    def matvec(self, v, idx):
        return self._poison(super().matvec(v, idx), idx, "matvec")

    def rmatvec(self, u, idx):
        return self._poison(super().rmatvec(u, idx), idx, "rmatvec")


@pytest.mark.parametrize("fn", SOLVERS)
@pytest.mark.parametrize(
    ("at", "kind", "value"),
    [(1, "rmatvec", np.nan), (5, "rmatvec", np.inf), (4, "matvec", np.nan), (6, "matvec", -np.inf)],
)
def test_nonfinite_product_stops_with_last_finite_iterate(fn, at, kind, value):
    rng = np.random.default_rng(12)
    a, b = torch.tensor(rng.standard_normal((3, 10, 6))), torch.tensor(rng.standard_normal((3, 10)))
    kw = {"atol": 1e-12, "btol": 1e-12, "record": True}
    x_ok, info_ok = fn(DenseProducts(a), b, **kw)
    op = FaultyProducts(a, 1, at, kind, value)
    x, info = fn(op, b, **kw)
    assert torch.isfinite(x).all() and int(info.istop[1]) == 8
    k = int(info.itn[1])  # call 1 starts, iteration i makes calls 2i (matvec) and 2i + 1
    assert k == max(at // 2 - 1, 0) and int(op.calls[1]) == at
    torch.testing.assert_close(x[1], info_ok.history[k, 1], rtol=0, atol=0)
    for p in (0, 2):
        torch.testing.assert_close(x[p], x_ok[p], rtol=0, atol=0)
        assert int(info.itn[p]) == int(info_ok.itn[p])


def test_products_with_wrong_output_shape_raise():
    class Transposed(DenseProducts):
        def matvec(self, v, idx):
            return super().rmatvec(torch.zeros(v.shape[0], self.n, dtype=v.dtype), idx)

    with pytest.raises(RuntimeError, match="matvec returned"):
        lsqr(
            Transposed(torch.ones(2, 4, 3, dtype=torch.float64)),
            torch.ones(2, 4, dtype=torch.float64),
        )


def bad_calls():
    a = torch.ones(2, 4, 3, dtype=torch.float64)
    b = torch.ones(2, 4, dtype=torch.float64)
    nan_b, inf_x0 = b.clone(), torch.zeros(2, 3, dtype=torch.float64)
    nan_b[1, 2], inf_x0[0, 0] = np.nan, np.inf
    return [
        (a, torch.ones(2, 3, dtype=torch.float64), {}, ValueError, "shape"),
        (a, torch.ones(4, dtype=torch.float64), {}, ValueError, "shape"),
        (a, b.float(), {}, TypeError, "dtype"),
        (a, b.tolist(), {}, TypeError, "torch.Tensor"),
        (a, nan_b, {}, ValueError, "NaN or Inf"),
        (a, b, {"x0": inf_x0}, ValueError, "NaN or Inf"),
        (a, b, {"x0": torch.zeros(2, 4, dtype=torch.float64)}, ValueError, "shape"),
        (a, b, {"atol": -1e-6}, ValueError, "atol"),
        (a, b, {"btol": -1.0}, ValueError, "btol"),
        (a, b, {"damp": -0.1}, ValueError, "damp"),
        (a, b, {"conlim": -1.0}, ValueError, "conlim"),
        (a, b, {"atol": float("nan")}, ValueError, "atol"),
        (a, b, {"damp": float("inf")}, ValueError, "damp"),
        (a, b, {"iter_lim": -1}, ValueError, "iter_lim"),
        (a, b, {"iter_lim": 2.5}, ValueError, "iter_lim"),
    ]


@pytest.mark.parametrize("fn", SOLVERS)
@pytest.mark.parametrize("case", range(15))
def test_bad_input_gives_clear_errors(fn, case):
    a, b, kw, exc, msg = bad_calls()[case]
    with pytest.raises(exc, match=msg):
        fn(DenseProducts(a), b, **kw)


def test_dense_products_validate_matrix():
    with pytest.raises(ValueError, match="B, n, d"):
        DenseProducts(torch.ones(4, 3))
    with pytest.raises(TypeError, match="float32 or float64"):
        DenseProducts(torch.ones(1, 4, 3, dtype=torch.int64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bases_grow_and_orthogonalize_every_or_some_problems(dtype):
    """The stored rows survive the buffer's growth; orthogonalising against them is CGS
    twice over the rows of the problems asked for, whether all of them or a few."""
    gen = torch.Generator().manual_seed(0)
    batch, m, rows = 4, 6, 11  # more rows than the first buffer holds
    bases = lsqr_module.Bases(True)
    stored = [torch.randn(batch, m, dtype=dtype, generator=gen) for _ in range(rows)]
    for row in stored:
        bases.keep("u", row, torch.arange(batch), batch)
    w = torch.randn(batch, m, dtype=dtype, generator=gen)
    basis = torch.stack(stored, 1)  # (batch, rows, m)
    expected = w
    for _ in range(2):
        expected = expected - (basis.mT @ (basis @ expected.unsqueeze(2))).squeeze(2)
    assert torch.equal(bases.orthogonalize("u", w, torch.arange(batch)), expected)
    some = torch.tensor([1, 3])
    assert torch.equal(bases.orthogonalize("u", w[some], some), expected[some])
    assert torch.equal(lsqr_module.Bases(False).orthogonalize("u", w, some), w)


def test_reorthogonalized_batch_equals_problems_solved_alone():
    """Problems stop at different iterations (the stored rows are then read for a subset):
    each problem's result is the one it gets alone, bit for bit."""
    a, b = mixed_batch()
    kw = {"atol": 1e-12, "btol": 1e-12, "iter_lim": 30, "reorthogonalize": True}
    x, info, _ = solve(lsqr, a, b, **kw)
    assert len(set(info.itn.tolist())) >= 4
    for p in range(5):
        xp, ip, _ = solve(lsqr, a[p : p + 1], b[p : p + 1], **kw)
        np.testing.assert_array_equal(x[p], xp[0])
        assert (int(info.istop[p]), int(info.itn[p])) == (int(ip.istop[0]), int(ip.itn[0]))


def test_finite_rows_flags_every_nonfinite_row():
    state = {"x": torch.zeros(4, 3), "s": torch.ones(4)}
    state["x"][1, 2] = math.inf
    state["x"][2, 0] = -math.inf
    state["s"][3] = math.nan
    assert _finite_rows(state, ("x", "s")).tolist() == [True, False, False, False]
