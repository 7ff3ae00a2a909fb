"""A fast out-of-place 2-D transpose of CPU tensors (float32, float64), compiled on first use.

torch's CPU copy of a transposed view moves one element at a time: about 10× memcpy's time
per MiB (a 1 MiB ``(32, 8192)`` float32 block: 170–320 µs against memcpy's 26–32 µs on
the development machine). The Monarch multiply's row-major output needs exactly such a
copy (:mod:`kernels.monarch_reference`), so :func:`transpose_into` moves AVX-register
tiles instead (45–75 µs for the same block; ``kernels/native/transpose.c``).

The C source is compiled by the system C compiler (``$CC``, else ``cc``) the first time it
is needed, into a cache directory (``$NEURALNUM_CACHE``, else ``$XDG_CACHE_HOME/neuralnum``
or ``~/.cache/neuralnum``) under a name that hashes the source, the flags and the CPU (the
build uses ``-march=native``), written atomically, and loaded with :mod:`ctypes`. Where
there is no compiler, the build fails, or ``NEURALNUM_NATIVE=0``, :func:`transpose_into`
falls back to torch's copy, which gives the same result bit for bit (a transpose only
moves values); :func:`native_status` says which path is in use and why.
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
from pathlib import Path

import torch

__all__ = ["native_status", "transpose_into"]

_SOURCE = Path(__file__).with_name("native") / "transpose.c"
_FLAGS = ("-O3", "-march=native", "-shared", "-fPIC")
_SYMBOLS = {torch.float32: "neuralnum_transpose_f32", torch.float64: "neuralnum_transpose_f64"}


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
    symbol = _SYMBOLS.get(src.dtype)
    library = _library()[0] if symbol is not None else None
    if (library is None or src.device.type != "cpu" or dst.device.type != "cpu"
            or src.stride(1) != 1 or dst.stride(1) != 1 or src.numel() == 0):
        return dst.copy_(src.T)
    rows, cols = src.shape
    # named in torch.profiler's tables; the range costs ~10 µs, so only while profiling
    with (torch.profiler.record_function("neuralnum::transpose")
          if torch.autograd.profiler._is_profiler_enabled else contextlib.nullcontext()):
        getattr(library, symbol)(src.data_ptr(), src.stride(0), dst.data_ptr(),
                                 dst.stride(0), rows, cols, torch.get_num_threads())
    return dst


def native_status() -> str:
    """``"native: <path>"`` when the compiled kernel is in use, else ``"torch: <why>"``."""
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
        path = _cache_dir() / f"transpose-{_build_key(compiler, flags)}.so"
        if not path.exists():
            error = _compile(compiler, flags, path)
            if error:
                errors.append(error)
                continue
        library = ctypes.CDLL(str(path))
        for symbol in _SYMBOLS.values():
            function = getattr(library, symbol)
            function.argtypes = [ctypes.c_void_p, ctypes.c_int64] * 2 + [
                ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
            function.restype = None
        return library, ""
    return None, "build failed: " + " | ".join(errors)


def _cache_dir() -> Path:
    root = os.environ.get("NEURALNUM_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "neuralnum"
    return Path(root)


def _build_key(compiler: str, flags: tuple[str, ...]) -> str:
    """Hash of the source, compiler, flags and CPU (``-march=native`` ties the binary to it)."""
    digest = hashlib.sha256(_SOURCE.read_bytes())
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
            done = subprocess.run([compiler, *flags, str(_SOURCE), "-o", str(out)],
                                  capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                return f"{' '.join(flags)}: {done.stderr.strip()[-300:]}"
            os.replace(out, path)
    except (OSError, subprocess.SubprocessError) as error:
        return f"{' '.join(flags)}: {error}"
    return ""
