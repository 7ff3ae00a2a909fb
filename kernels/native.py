"""Compiled CPU kernels for the Monarch reference (float32, float64), built on first use.

Layouts that torch (and any BLAS) handle poorly get C kernels here:

* :func:`transpose_into` — an out-of-place 2-D transpose. torch's CPU copy of a
  transposed view moves one element at a time, many times slower per byte than memcpy;
  this one moves AVX-register tiles (``native/transpose.c``).
* :func:`interleaved_bmm` — a batched matmul whose batch index is the *innermost*
  (unit-stride) one of all three operands. No matrix of that layout has a unit stride, so
  a BLAS cannot take it and ``torch.bmm`` copies every operand first; the kernel vectorises
  along the batch instead (``native/interleaved_bmm.c``). It is the layout of the Monarch
  multiply's second factor in row-major activations (:mod:`kernels.monarch_reference`),
  so the permutation ``P`` costs no copy there.
* :func:`block_bmm` — a batched matmul of small blocks read in place (strided views of the
  activations), vectorised along the output columns, where a BLAS packs both operands of
  every block first (``native/block_bmm.c``).
* :func:`monarch_rows` — the row-major Monarch forward, both factors chunk after chunk in
  one call (``native/monarch_rows.c``).

The C sources are compiled together by the system C compiler (``$CC``, else ``cc``) the
first time they are needed, into a cache directory (``$NEURALNUM_CACHE``, else
``$XDG_CACHE_HOME/neuralnum`` or ``~/.cache/neuralnum``) under a name that hashes the
sources, the flags and the CPU (the build uses ``-march=native``), written atomically, and
loaded with :mod:`ctypes`. Where there is no compiler, the build fails, or
``NEURALNUM_NATIVE=0``, the functions fall back to torch (the same values: a transpose
only moves them; ``torch.bmm`` sums in its own order) or, for :func:`monarch_rows`, leave
the loop to the caller; :func:`native_status` says which path is in use and why.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["block_bmm", "interleaved_bmm", "monarch_rows", "native_status", "transpose_into"]

_NATIVE = Path(__file__).with_name("native")
_SOURCES = tuple(_NATIVE / name for name in ("transpose.c", "interleaved_bmm.c", "block_bmm.c",
                                             "monarch_rows.c"))
_HEADERS = (_NATIVE / "common.h",)
_FLAGS = ("-O3", "-march=native", "-shared", "-fPIC")
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
#: kernel → (argument types, return type, symbol per dtype)
_KERNELS = {
    "transpose": ([_PTR, _I64] * 2 + [_I64, _I64, ctypes.c_int], None,
                  {torch.float32: "neuralnum_transpose_f32",
                   torch.float64: "neuralnum_transpose_f64"}),
    "interleaved_bmm": ([_PTR, _I64, _I64] * 3 + [_I64] * 4 + [ctypes.c_int] * 2, ctypes.c_int,
                        {torch.float32: "neuralnum_interleaved_bmm_f32",
                         torch.float64: "neuralnum_interleaved_bmm_f64"}),
    "block_bmm": ([_PTR, _I64, _I64, _I64, _PTR, _I64, _I64, _PTR] + [_I64] * 6
                  + [ctypes.c_int] * 2, ctypes.c_int,
                  {torch.float32: "neuralnum_block_bmm_f32",
                   torch.float64: "neuralnum_block_bmm_f64"}),
    "monarch_rows": ([_PTR, _I64, _I64, _PTR, _I64, _PTR, _PTR, _I64, _PTR] + [_I64] * 6
                     + [ctypes.c_int] * 2, ctypes.c_int,
                     {torch.float32: "neuralnum_monarch_rows_f32",
                      torch.float64: "neuralnum_monarch_rows_f64"}),
}


def transpose_into(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``dst[j, i] = src[i, j]`` for ``src: (r, c)`` and ``dst: (c, r)``; returns ``dst``.

    Both must be CPU tensors of one dtype. The native kernel runs for float32 / float64
    with a unit last stride on both sides (leading strides free) and uses
    ``torch.get_num_threads()`` threads; anything else is ``dst.copy_(src.T)``. Not
    differentiable: call it on tensors outside autograd (as a custom ``Function`` does).
    """
    if src.ndim != 2 or dst.shape != src.shape[::-1]:
        raise ValueError(f"need src (r, c) and dst (c, r), got {tuple(src.shape)} and "
                         f"{tuple(dst.shape)}")
    if src.dtype != dst.dtype:
        raise TypeError(f"src and dst must share a dtype, got {src.dtype} and {dst.dtype}")
    kernel = _kernel("transpose", src, dst)
    if kernel is None or src.stride(1) != 1 or dst.stride(1) != 1 or src.numel() == 0:
        return dst.copy_(src.T)
    rows, cols = src.shape
    with _profiled("neuralnum::transpose"):
        kernel(src.data_ptr(), src.stride(0), dst.data_ptr(), dst.stride(0), rows, cols,
               torch.get_num_threads())
    return dst


def interleaved_bmm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, *,
                    accumulate: bool = False) -> torch.Tensor:
    """``out = a @ b`` (``out += a @ b`` with ``accumulate``) for ``a: (B, M, K)``,
    ``b: (B, K, N)``, ``out: (B, M, N)`` whose batch index is innermost; returns ``out``.

    The native kernel runs for float32 / float64 CPU tensors whose batch stride is 1
    (other strides free) with ``torch.get_num_threads()`` threads; anything else is
    ``torch.bmm`` into ``out``. ``out`` must not overlap ``a`` or ``b``. Not
    differentiable: call it on tensors outside autograd.
    """
    batch, m, n, k = _bmm_sizes(a, b, out)
    kernel = _kernel("interleaved_bmm", a, b, out)
    if kernel is None or any(t.stride(0) != 1 for t in (a, b, out) if batch > 1):
        return _torch_bmm(a, b, out, accumulate)
    return _launch("interleaved_bmm", kernel, out, a.data_ptr(), a.stride(1), a.stride(2),
                   b.data_ptr(), b.stride(1), b.stride(2), out.data_ptr(), out.stride(1),
                   out.stride(2), batch, m, n, k, int(accumulate), torch.get_num_threads())


def block_bmm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, *,
              accumulate: bool = False) -> torch.Tensor:
    """``out = a @ b`` (``out += a @ b`` with ``accumulate``) for ``a: (B, M, K)``,
    ``b: (B, K, N)``, ``out: (B, M, N)``, small blocks read in place; returns ``out``.

    The native kernel runs for float32 / float64 CPU tensors where ``b`` and ``out`` have
    unit stride along ``N`` (``a`` and every other stride free) with
    ``torch.get_num_threads()`` threads; anything else is ``torch.bmm`` into ``out``.
    ``out`` must not overlap ``a`` or ``b``. Not differentiable: call it on tensors
    outside autograd.
    """
    batch, m, n, k = _bmm_sizes(a, b, out)
    kernel = _kernel("block_bmm", a, b, out)
    if kernel is None or (n > 1 and (b.stride(2) != 1 or out.stride(2) != 1)):
        return _torch_bmm(a, b, out, accumulate)
    return _launch("block_bmm", kernel, out, a.data_ptr(), *a.stride(), b.data_ptr(),
                   b.stride(0), b.stride(1), out.data_ptr(), out.stride(0), out.stride(1),
                   batch, m, n, k, int(accumulate), torch.get_num_threads())


def monarch_rows(x: torch.Tensor, R_t: torch.Tensor, L_t: torch.Tensor, y: torch.Tensor,
                 h: torch.Tensor, chunk: int, *, keep: bool) -> bool:
    """The row-major Monarch forward ``y = P L Pᵀ R x`` in one native call, ``chunk`` rows
    at a time: :func:`block_bmm` then :func:`interleaved_bmm` per chunk, as
    :mod:`kernels.monarch_reference` does in Python, without a Python round trip per
    product (``native/monarch_rows.c``). Returns ``False``, having done nothing, where the
    library is not built or has no kernel for the dtype; the caller then runs its own loop.

    ``x: (N, k·p)`` any strides; ``R_t: (k, p, q)``, ``Rᵀ`` with strides ``(q, ·, 1)``;
    ``L_t: (q, k, s)``, ``Lᵀ`` with strides ``(1, q, k·q)`` (block index innermost);
    ``y: (N, s·q)`` with unit column stride; ``h``: contiguous, ``N·k·q`` values with
    ``keep`` (every chunk's ``h: (k, c, q)`` kept in turn, for the backward), else one
    chunk's.
    """
    (k, p, q), s, n = R_t.shape, L_t.shape[2], x.shape[0]
    if R_t.stride(0) != q or R_t.stride(2) != 1 or L_t.stride() != (1, q, k * q):
        raise ValueError(f"R_t / L_t are not laid out as monarch_rows reads them: strides "
                         f"{R_t.stride()}, {L_t.stride()}")
    if y.stride(1) != 1 or not h.is_contiguous() or h.numel() < (n if keep else chunk) * k * q:
        raise ValueError("y needs a unit column stride and h a contiguous buffer of its size")
    kernel = _kernel("monarch_rows", x, R_t, L_t, y, h)
    if kernel is None or any(t.dtype != x.dtype for t in (R_t, L_t, y, h)):
        return False
    _launch("monarch_rows", kernel, y, x.data_ptr(), x.stride(0), x.stride(1), R_t.data_ptr(),
            R_t.stride(1), L_t.data_ptr(), y.data_ptr(), y.stride(0), h.data_ptr(), n, k, p, q,
            s, chunk, int(keep), torch.get_num_threads())
    return True


def _bmm_sizes(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> tuple[int, ...]:
    """``(B, M, N, K)`` of a batched product; ``ValueError`` / ``TypeError`` naming what
    does not fit."""
    if a.ndim != 3 or b.ndim != 3 or out.ndim != 3:
        raise ValueError(f"need 3-D a, b, out, got {a.ndim}-D, {b.ndim}-D, {out.ndim}-D")
    (batch, m, k), n = a.shape, b.shape[2]
    if b.shape[:2] != (batch, k) or out.shape != (batch, m, n):
        raise ValueError(f"need a (B, M, K), b (B, K, N), out (B, M, N), got "
                         f"{tuple(a.shape)}, {tuple(b.shape)}, {tuple(out.shape)}")
    if not (a.dtype == b.dtype == out.dtype):
        raise TypeError(f"a, b, out must share a dtype, got {a.dtype}, {b.dtype}, {out.dtype}")
    return batch, m, n, k


def _torch_bmm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor,
               accumulate: bool) -> torch.Tensor:
    return out.baddbmm_(a, b) if accumulate else torch.bmm(a, b, out=out)


def _launch(name: str, kernel: Callable[..., int], out: torch.Tensor, *args) -> torch.Tensor:
    """Run a product kernel on ``args`` (nothing for an empty ``out``); ``MemoryError``
    where it could not allocate its packing buffers."""
    if out.numel():
        with _profiled(f"neuralnum::{name}"):
            failed = kernel(*args)
        if failed:
            raise MemoryError(f"{name}: could not allocate its packing buffers")
    return out


def _kernel(name: str, *tensors: torch.Tensor) -> Callable[..., int | None] | None:
    """The compiled ``name`` for the tensors' dtype, or ``None`` (not built, not CPU, or a
    dtype it lacks)."""
    symbol = _KERNELS[name][2].get(tensors[0].dtype)
    library = _library()[0]
    if library is None or symbol is None or any(t.device.type != "cpu" for t in tensors):
        return None
    return getattr(library, symbol)


def _profiled(name: str) -> contextlib.AbstractContextManager:
    """A ``torch.profiler`` range named ``name`` while profiling (it costs ~10 µs), else
    nothing."""
    return (torch.profiler.record_function(name)
            if torch.autograd.profiler._is_profiler_enabled else contextlib.nullcontext())


def native_status() -> str:
    """``"native: <path>"`` when the compiled kernels are in use, else ``"torch: <why>"``."""
    library, why = _library()
    return f"native: {library._name}" if library is not None else f"torch: {why}"


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str]:
    """The loaded kernel library (built if needed), or ``(None, reason)``."""
    if os.environ.get("NEURALNUM_NATIVE", "1") == "0":
        return None, "disabled by NEURALNUM_NATIVE=0"
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None, "no C compiler ($CC or cc) on PATH"
    errors = []
    for flags in ((*_FLAGS, "-fopenmp"), _FLAGS):          # OpenMP where the compiler has it
        path = _cache_dir() / f"kernels-{_build_key(compiler, flags)}.so"
        if not path.exists():
            error = _compile(compiler, flags, path)
            if error:
                errors.append(error)
                continue
        library = ctypes.CDLL(str(path))
        for argtypes, restype, symbols in _KERNELS.values():
            for symbol in symbols.values():
                function = getattr(library, symbol)
                function.argtypes, function.restype = argtypes, restype
        return library, ""
    return None, "build failed: " + " | ".join(errors)


def _cache_dir() -> Path:
    root = os.environ.get("NEURALNUM_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "neuralnum"
    return Path(root)


def _build_key(compiler: str, flags: tuple[str, ...]) -> str:
    """Hash of the sources and headers, compiler, flags and CPU (``-march=native`` ties
    the binary to it)."""
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in (*_SOURCES, *_HEADERS)))
    digest.update(" ".join((compiler, *flags, platform.machine(), _cpu_identity())).encode())
    return digest.hexdigest()[:16]


def _cpu_identity() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return "".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))


def _compile(compiler: str, flags: tuple[str, ...], path: Path) -> str:
    """Build ``path`` atomically (compile to a temporary file, then rename); '' on success."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            out = Path(tmp) / path.name
            done = subprocess.run([compiler, *flags, *map(str, _SOURCES), "-o", str(out)],
                                  capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                return f"{' '.join(flags)}: {done.stderr.strip()[-300:]}"
            os.replace(out, path)
    except (OSError, subprocess.SubprocessError) as error:
        return f"{' '.join(flags)}: {error}"
    return ""
