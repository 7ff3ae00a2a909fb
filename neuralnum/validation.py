"""Up-front input checks shared by every public numerical function.

Each check raises ``TypeError`` (wrong type / dtype) or ``ValueError`` (shape, empty
batch, non-finite values) with a message naming the offending argument. Nothing is
silently broadcast or cast.
"""

from __future__ import annotations

import torch

__all__ = ["SUPPORTED_DTYPES", "check_dtype", "check_finite", "check_problem", "check_tensor"]

SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64)


def check_dtype(dtype: torch.dtype, name: str = "dtype") -> torch.dtype:
    """Return ``dtype`` if it is float32 or float64, else raise ``TypeError``."""
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be torch.float32 or torch.float64, got {dtype}")
    return dtype


def check_tensor(x: object, name: str, ndim: int) -> torch.Tensor:
    """``x`` must be a float32/float64 tensor with ``ndim`` dimensions and no empty axis."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    check_dtype(x.dtype, f"{name}.dtype")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    return x


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise ``ValueError`` if ``x`` holds NaN or ±Inf."""
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def check_problem(
    A: torch.Tensor, b: torch.Tensor, x: torch.Tensor | None = None, *, x_name: str = "x"
) -> tuple[int, int, int]:
    """Validate a batch of least-squares problems; return ``(batch, n, d)``.

    Shapes: ``A: (B, n, d)``, ``b: (B, n)``, optional iterate ``x: (B, d)`` (named
    ``x_name`` in error messages); one dtype (float32 or float64) and one device for all;
    every value finite.
    """
    check_tensor(A, "A", 3)
    check_tensor(b, "b", 2)
    batch, n, d = A.shape
    if b.shape != (batch, n):
        raise ValueError(f"b must have shape {(batch, n)} to match A {tuple(A.shape)}, "
                         f"got {tuple(b.shape)}")
    tensors = {"A": A, "b": b}
    if x is not None:
        check_tensor(x, x_name, 2)
        if x.shape != (batch, d):
            raise ValueError(f"{x_name} must have shape {(batch, d)} to match A "
                             f"{tuple(A.shape)}, got {tuple(x.shape)}")
        tensors[x_name] = x
    for name, t in tensors.items():
        if t.dtype != A.dtype:
            raise TypeError(f"{name}.dtype {t.dtype} differs from A.dtype {A.dtype}")
        if t.device != A.device:
            raise ValueError(f"{name} is on {t.device} but A is on {A.device}")
        check_finite(t, name)
    return batch, n, d
