"""The compiled kernels (``kernels.native``): the 2-D transpose equals ``src.T`` exactly and
the two batched matmuls (interleaved, block) equal ``torch.bmm``; all write nothing outside
their output, really run (no ATen op dispatched), and fall back to torch, with the reason,
where the library cannot be built."""

import platform
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from kernels import native
from kernels.monarch_reference import monarch_matmul_reference
from kernels.native import block_bmm, interleaved_bmm, native_status, transpose_into
from structured.monarch import MonarchMatrix

NATIVE = native_status().startswith("native")
needs_native = pytest.mark.skipif(not NATIVE, reason=native_status())


class _AtenNames(TorchDispatchMode):
    """Records the names of the ATen ops dispatched inside the ``with`` block."""

    def __enter__(self):
        self.names = []
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _gapped(rows, cols, gap, dtype, seed):
    """``(rows, cols)`` random view with unit column stride and ``gap`` spare columns per
    row, and its zero-filled parent (to see writes outside the view)."""
    parent = torch.randn(rows, cols + gap, dtype=dtype,
                         generator=torch.Generator().manual_seed(seed))
    return parent[:, gap // 2: gap // 2 + cols], parent


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 140), src_gap=st.integers(0, 9),
       dst_gap=st.integers(0, 9), threads=st.sampled_from([1, 2]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_equals_the_transpose_and_writes_only_dst(rows, cols, src_gap, dst_gap, threads, dtype):
    """Ragged edges (sizes not multiples of the 8×8 / 4×4 tiles), gapped leading strides
    on both sides, one and two threads: ``dst`` is ``src.T`` bit for bit and the gaps of
    its parent are untouched."""
    src, _ = _gapped(rows, cols, src_gap, dtype, seed=rows * 1000 + cols)
    dst_parent = torch.zeros(cols, rows + dst_gap, dtype=dtype)
    dst = dst_parent[:, :rows]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = transpose_into(src, dst)
    finally:
        torch.set_num_threads(previous)
    assert out is dst
    assert torch.equal(dst, src.T)
    assert not dst_parent[:, rows:].any()


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_kernel_runs_instead_of_an_aten_copy(dtype):
    """The kernel ran: a 1 MiB-sized transpose dispatches no ATen op at all (torch's
    fallback would dispatch ``copy_``), and its result is exact."""
    src = torch.randn(32, 4096, dtype=dtype)
    dst = torch.empty(4096, 32, dtype=dtype)
    with _AtenNames() as recorded:
        transpose_into(src, dst)
    assert recorded.names == []
    assert torch.equal(dst, src.T)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_other_dtypes_use_torchs_copy(dtype):
    src = torch.randn(9, 13).to(dtype)
    dst = torch.empty(13, 9, dtype=dtype)
    with _AtenNames() as recorded:
        transpose_into(src, dst)
    assert "copy_" in recorded.names
    assert torch.equal(dst, src.T)


def test_column_strided_operands_use_torchs_copy():
    """A source without unit column stride (here a transposed view) is torch's business."""
    src = torch.randn(20, 9).T                                       # (9, 20), strides (1, 9)
    dst = torch.empty(20, 9)
    with _AtenNames() as recorded:
        transpose_into(src, dst)
    assert "copy_" in recorded.names
    assert torch.equal(dst, src.T)


def test_bad_operands_name_the_problem():
    with pytest.raises(ValueError, match=r"dst \(c, r\)"):
        transpose_into(torch.zeros(3, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"src \(r, c\)"):
        transpose_into(torch.zeros(3), torch.zeros(3))
    with pytest.raises(TypeError, match="share a dtype"):
        transpose_into(torch.zeros(3, 4), torch.zeros(4, 3, dtype=torch.float64))


def _laid_out(shape, order, gap, dtype, seed):
    """A view of logical ``shape`` stored with its axes in ``order`` (outermost first),
    ``gap`` spare entries after the innermost axis, and its parent (to see writes outside
    the view)."""
    stored = [shape[axis] for axis in order]
    stored[-1] += gap
    parent = torch.randn(*stored, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    view = parent[..., gap // 2: gap // 2 + shape[order[-1]]]
    return view.permute(*[order.index(axis) for axis in range(3)]), parent


#: kernel → how each operand may be stored: a strategy of axis orders (outermost first)
#: for a, b and out. interleaved_bmm needs the batch (axis 0) innermost in all three;
#: block_bmm needs N (axis 2) innermost in b and out, a any way.
_ORDERS = {
    interleaved_bmm: st.tuples(*[st.permutations([1, 2]).map(lambda o: (*o, 0))] * 3),
    block_bmm: st.tuples(st.permutations([0, 1, 2]),
                         *[st.permutations([0, 1]).map(lambda o: (*o, 2))] * 2),
}


@settings(max_examples=80, deadline=None)
@given(data=st.data(), batch=st.integers(1, 40), m=st.integers(1, 30), n=st.integers(1, 75),
       k=st.integers(0, 9), gaps=st.tuples(*[st.integers(0, 5)] * 3), accumulate=st.booleans(),
       threads=st.sampled_from([1, 2]), dtype=st.sampled_from([torch.float32, torch.float64]))
@pytest.mark.parametrize("bmm", list(_ORDERS), ids=lambda f: f.__name__)
def test_products_equal_bmm_and_write_only_out(bmm, data, batch, m, n, k, gaps, accumulate,
                                               threads, dtype):
    """Batches and columns that fill no vector, several vectors and a ragged tail; tiles
    cut short; ``k = 0``; every storage order the kernel takes, gapped; accumulate; one
    and two threads: ``out`` is ``a @ b`` (plus its old value) and the gaps are
    untouched."""
    orders = data.draw(_ORDERS[bmm], label="orders")
    seed = batch * 10_000 + m * 100 + n
    a, _ = _laid_out((batch, m, k), orders[0], gaps[0], dtype, seed)
    b, _ = _laid_out((batch, k, n), orders[1], gaps[1], dtype, seed + 1)
    out, out_parent = _laid_out((batch, m, n), orders[2], gaps[2], dtype, seed + 2)
    before, parent_before = out.clone(), out_parent.clone()
    want = torch.bmm(a.double(), b.double()) + (before.double() if accumulate else 0)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = bmm(a, b, out, accumulate=accumulate)
    finally:
        torch.set_num_threads(previous)
    assert got is out
    tol = {torch.float32: 1e-5, torch.float64: 1e-13}[dtype]
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)
    out.copy_(before)                                   # now the parent must be as it was
    assert torch.equal(out_parent, parent_before)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bmm", list(_ORDERS), ids=lambda f: f.__name__)
def test_product_kernels_run_instead_of_aten(bmm, dtype):
    """The kernel ran: a Monarch-sized product dispatches no ATen op at all (torch's
    fallback dispatches ``bmm``)."""
    inner = 0 if bmm is interleaved_bmm else 2
    a, _ = _laid_out((64, 128, 32), (1, 2, 0), 0, dtype, seed=1)
    b, _ = _laid_out((64, 32, 32), (1, 2, 0) if inner == 0 else (0, 1, 2), 0, dtype, seed=2)
    out, _ = _laid_out((64, 128, 32), (1, 2, 0) if inner == 0 else (0, 1, 2), 0, dtype, 3)
    with _AtenNames() as recorded:
        bmm(a, b, out)
    assert recorded.names == []
    torch.testing.assert_close(out, torch.bmm(a, b))


@pytest.mark.parametrize("bmm", list(_ORDERS), ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", ["layout", "bfloat16"])
def test_products_of_other_operands_use_torch(bmm, case):
    """Operands a kernel cannot take (interleaved: batch outermost; block: ``out``
    column-major), or a dtype without a kernel: ``torch.bmm``."""
    a, b = torch.randn(5, 3, 4), torch.randn(5, 4, 2)
    out = torch.empty(5, 3, 2) if bmm is interleaved_bmm else torch.empty(5, 2, 3).mT
    if case == "bfloat16":
        a, b, out = a.bfloat16(), b.bfloat16(), out.bfloat16()
    with _AtenNames() as recorded:
        bmm(a, b, out)
    assert "bmm" in recorded.names
    assert torch.equal(out, torch.bmm(a, b))


@pytest.mark.parametrize("bmm", list(_ORDERS), ids=lambda f: f.__name__)
def test_products_bad_operands_name_the_problem(bmm):
    with pytest.raises(ValueError, match="3-D"):
        bmm(torch.zeros(2, 3), torch.zeros(2, 3, 4), torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match=r"b \(B, K, N\)"):
        bmm(torch.zeros(2, 3, 4), torch.zeros(2, 5, 4), torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="share a dtype"):
        bmm(torch.zeros(2, 3, 4), torch.zeros(2, 4, 1, dtype=torch.float64),
            torch.zeros(2, 3, 1))


def test_a_kernel_reporting_failed_allocation_raises_memory_error():
    """A product kernel returns 1 when its packing buffers could not be allocated (it has
    then written nothing): the call raises instead of returning an unwritten ``out``."""
    with pytest.raises(MemoryError, match="block_bmm: could not allocate"):
        native._launch("block_bmm", lambda *args: 1, torch.empty(2, 3))
    out = torch.empty(0, 3)                             # nothing to compute: no call at all
    assert native._launch("block_bmm", lambda *args: 1, out) is out


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """Forget the loaded library and build into an empty cache directory."""
    monkeypatch.setenv("NEURALNUM_CACHE", str(tmp_path))
    native._library.cache_clear()
    yield tmp_path
    native._library.cache_clear()


def test_disabled_falls_back_with_its_reason(monkeypatch, fresh_build):
    monkeypatch.setenv("NEURALNUM_NATIVE", "0")
    assert native_status() == "torch: disabled by NEURALNUM_NATIVE=0"
    src = torch.randn(17, 33)
    assert torch.equal(transpose_into(src, torch.empty(33, 17)), src.T)
    a, b = torch.randn(3, 2, 16).permute(2, 0, 1), torch.randn(2, 4, 16).permute(2, 0, 1)
    out = torch.empty(3, 4, 16).permute(2, 0, 1)
    torch.testing.assert_close(interleaved_bmm(a, b, out), torch.bmm(a, b))
    torch.testing.assert_close(block_bmm(a, b, torch.empty(16, 3, 4)), torch.bmm(a, b))
    assert not list(fresh_build.iterdir())


def test_failed_build_falls_back_with_the_compiler_error(monkeypatch, fresh_build, tmp_path):
    failing = tmp_path / "failing-cc"
    failing.write_text("#!/bin/sh\necho 'cc: fatal error: no such thing' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CC", str(failing))
    status = native_status()
    assert status.startswith("torch: build failed") and "no such thing" in status
    src = torch.randn(8, 8, dtype=torch.float64)
    assert torch.equal(transpose_into(src, torch.empty(8, 8, dtype=torch.float64)), src.T)
    assert not list(fresh_build.glob("*.so"))                        # nothing half-written


def test_missing_compiler_falls_back(monkeypatch, fresh_build):
    monkeypatch.setenv("CC", "no-such-compiler-anywhere")
    assert native_status() == "torch: no C compiler ($CC or cc) on PATH"


@needs_native
def test_build_is_cached_under_a_key_of_source_flags_and_cpu(fresh_build):
    """A fresh cache directory gets one library; loading again reuses it."""
    first = native_status()
    assert first.startswith(f"native: {fresh_build}")
    native._library.cache_clear()
    assert native_status() == first
    assert len(list(fresh_build.glob("kernels-*.so"))) == 1


def _cpu_flags() -> set[str]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    return {flag for line in lines if line.startswith("flags") for flag in line.split()[2:]}


@needs_native
@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 ISA levels")
@pytest.mark.parametrize("march", ["x86-64", "x86-64-v3"])
def test_kernels_build_and_agree_on_older_cpus(monkeypatch, fresh_build, march):
    """The library is built for the CPU it runs on (``-march=native``), and the vector
    width and register tiles follow it (``native/common.h``). Built for SSE2 only
    (``x86-64``) and for AVX2 (``x86-64-v3``), 16 vector registers, it compiles and its
    products and the Monarch multiply agree with torch (a build failure would fall back
    to torch silently, so the status is checked too)."""
    if march == "x86-64-v3" and not {"avx2", "fma"} <= _cpu_flags():
        pytest.skip("this CPU cannot run AVX2 code")
    monkeypatch.setattr(native, "_FLAGS", tuple(
        f"-march={march}" if flag == "-march=native" else flag for flag in native._FLAGS))
    assert native_status().startswith("native")
    for dtype in (torch.float32, torch.float64):
        for bmm, inner in ((interleaved_bmm, (1, 2, 0)), (block_bmm, (0, 1, 2))):
            a, _ = _laid_out((19, 13, 7), (1, 2, 0), 0, dtype, seed=1)
            b, _ = _laid_out((19, 7, 11), inner, 0, dtype, seed=2)
            out, _ = _laid_out((19, 13, 11), inner, 0, dtype, seed=3)
            torch.testing.assert_close(bmm(a, b, out), torch.bmm(a, b))
        x = torch.randn(37, 2 * 3, dtype=dtype)
        R, L = torch.randn(2, 19, 3, dtype=dtype), torch.randn(19, 5, 2, dtype=dtype)
        dense = MonarchMatrix(R, L).to_dense()
        torch.testing.assert_close(monarch_matmul_reference(x, R, L), x @ dense.T)


@needs_native
def test_profiles_name_the_kernel():
    """Under ``torch.profiler`` the native call is a named range (the Monarch study's
    profile shows its share); outside it no range is opened (``test_native_kernel_runs``)."""
    with torch.profiler.profile() as profile:
        transpose_into(torch.randn(16, 64), torch.empty(64, 16))
    assert "neuralnum::transpose" in {event.key for event in profile.key_averages()}
