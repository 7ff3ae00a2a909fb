"""Small helpers shared by the Triton kernels: interpreter detection, dtype/precision choice.

Triton decides between compiled and interpreted kernels when a ``@triton.jit`` function is
*decorated*, from the environment variable ``TRITON_INTERPRET``. The kernel modules are
therefore imported lazily by :mod:`kernels` (on the first Triton call), so a test can set
``TRITON_INTERPRET=1`` first. :data:`INTERPRETED` records what was in force at import.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["INTERPRETED", "acc_dtype", "check_device", "dot_precision", "next_pow2", "resolved",
           "to_output"]

INTERPRETED: bool = bool(triton.knobs.runtime.interpret)


def resolved(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` with PyTorch's lazy negative and conjugate bits applied (a copy only if set).

    A view such as ``z.conj().imag`` or ``torch._neg_view(x)`` shares memory with its base
    and carries a bit meaning "negate on read"; PyTorch ops honour it, but a Triton kernel
    reads the raw memory through the data pointer and would see ``−t``. Every tensor a
    kernel reads goes through here first (forward operands and incoming gradients).
    """
    return None if t is None else t.resolve_neg().resolve_conj()


def next_pow2(n: int, minimum: int = 16) -> int:
    """Smallest power of two ``≥ max(n, minimum)`` (tl.arange and tl.dot need one, ≥ 16)."""
    return max(minimum, triton.next_power_of_2(max(int(n), 1)))


def acc_dtype(dtype: torch.dtype) -> tl.dtype:
    """Accumulator for ``dtype``: float64 stays float64, everything else accumulates in fp32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: IEEE for fp32/fp64 (match PyTorch), TF32 default otherwise."""
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def check_device(*tensors: torch.Tensor) -> bool:
    """Validate where the kernel can run; return whether operands must be upcast to fp32.

    CUDA tensors run compiled. CPU tensors need the interpreter (``TRITON_INTERPRET=1``
    set before the kernel module was imported), whose NumPy ``tl.dot`` cannot multiply
    bfloat16: there, bfloat16 operands are upcast to fp32 right before each dot (their
    products are exact in fp32, so this equals a bfloat16 tensor-core dot with fp32
    accumulation up to summation order); float16 is refused under the interpreter.
    """
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    if not tensors[0].is_cuda and not INTERPRETED:
        raise RuntimeError("Triton kernels on CPU tensors need TRITON_INTERPRET=1 in the "
                           "environment before kernels' Triton modules are imported")
    if INTERPRETED and tensors[0].dtype == torch.float16:
        raise TypeError("float16 is not supported under the Triton interpreter; use bfloat16")
    return INTERPRETED and tensors[0].dtype == torch.bfloat16


@triton.jit
def to_output(x, dtype: tl.constexpr, UPCAST: tl.constexpr):
    """Cast ``x`` to ``dtype``; under ``UPCAST`` (interpreter, bf16) round fp32 → bf16 to
    nearest-even by bit arithmetic first, since the interpreter's own cast truncates."""
    if UPCAST:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)
