"""Up-front argument checks shared by every package (``neuralnum``, ``structured``).

Each check raises ``TypeError`` (wrong type / dtype) or ``ValueError`` (a value out of
range, a shape, an empty batch, non-finite values) with a message naming the offending
argument. Nothing is silently broadcast or cast, except where a public function's contract
says so: the scipy-shaped front door casts as scipy does (:func:`as_real_array` accepts,
:func:`lapack_dtype` says into what).

The precision vocabulary is defined here too, once: a model's dtype is named as torch
names it (``"float32"``, ``"float64"``, ``"bfloat16"``), plus ``"mixed"`` for float64
master weights with a float32 forward/backward; :func:`parse_precision` is its parser.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse
import torch

__all__ = [
    "PRECISIONS",
    "SUPPORTED_DTYPES",
    "Precision",
    "as_real_array",
    "check_choice",
    "check_config_choices",
    "check_dtype",
    "check_finite",
    "check_nonnegative_int",
    "check_positive_float",
    "check_positive_int",
    "check_problem",
    "check_range",
    "check_tensor",
    "lapack_dtype",
    "parse_precision",
    "to_numpy",
]

SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64)


def _check_int(value: object, name: str, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {what} int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {what} int, got {value!r}")
    return value


def check_positive_int(value: object, name: str) -> int:
    """``value`` if it is an ``int`` >= 1 (not a bool): else ``TypeError`` (not an int) or
    ``ValueError`` (< 1), the message naming ``name``."""
    return _check_int(value, name, 1, "a positive")


def check_nonnegative_int(value: object, name: str) -> int:
    """``value`` if it is an ``int`` >= 0 (not a bool): else ``TypeError`` / ``ValueError``."""
    return _check_int(value, name, 0, "a non-negative")


def check_positive_float(value: object, name: str) -> float:
    """``value`` as a ``float`` if it is a finite real > 0 (not a bool): else ``TypeError``
    (not a real) or ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return float(value)


def check_range(value: object, name: str, low: float | None = None, high: float | None = None,
                *, low_open: bool = False, high_open: bool = False,
                infinite: bool = False) -> float:
    """``value`` as a ``float`` if it is a real (not a bool) within ``[low, high]`` (an end
    is excluded with ``low_open`` / ``high_open``; ``None``: unbounded), finite unless
    ``infinite`` allows ±inf: else ``TypeError`` (not a real) or ``ValueError`` naming
    ``name`` and the range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    bad = math.isnan(value) or (math.isinf(value) and not infinite)
    if bad or below or above:
        lo = "(-inf" if low is None else f"{'(' if low_open else '['}{low:g}"
        hi = "inf)" if high is None else f"{high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {lo}, {hi}, got {value!r}")
    return float(value)


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else ``ValueError`` listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_config_choices(config: object) -> None:
    """Check every ``Literal[...]``-annotated field of the dataclass ``config`` against its
    choices (:func:`check_choice`): the one place a config's named options are checked."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        hint = hints[f.name]
        if typing.get_origin(hint) is typing.Literal:
            check_choice(getattr(config, f.name), f.name, typing.get_args(hint))


@dataclass(frozen=True)
class Precision:
    """Parameter (master) dtype, compute dtype and autocast dtype of a run.

    ``autocast`` is ``None`` unless the forward pass runs under ``torch.autocast`` (the
    ``"bfloat16"`` precision: float32 weights, bfloat16 matmuls).
    """

    name: str
    param_dtype: torch.dtype
    compute_dtype: torch.dtype
    autocast: torch.dtype | None = None

    @property
    def mixed(self) -> bool:
        """Whether the forward pass runs on a lower-precision copy of the weights."""
        return self.param_dtype != self.compute_dtype


_PRECISIONS = {
    "float32": Precision("float32", torch.float32, torch.float32),
    "float64": Precision("float64", torch.float64, torch.float64),
    "bfloat16": Precision("bfloat16", torch.float32, torch.float32, torch.bfloat16),
    "mixed": Precision("mixed", torch.float64, torch.float32),
}
#: Every precision name, in torch's dtype vocabulary (plus ``"mixed"``).
PRECISIONS: tuple[str, ...] = tuple(_PRECISIONS)


def parse_precision(name: object, choices: tuple[str, ...] = PRECISIONS) -> Precision:
    """The :class:`Precision` called ``name``; ``ValueError`` unless it is in ``choices``
    (a subset of :data:`PRECISIONS`: the precisions a caller supports)."""
    return _PRECISIONS[check_choice(name, "precision", choices)]


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


def check_finite(x: torch.Tensor | np.ndarray, name: str, fix: str = ""
                 ) -> torch.Tensor | np.ndarray:
    """Raise ``ValueError`` if ``x`` (a tensor or a NumPy array) holds NaN or ±Inf; the
    message names ``name`` and ends with ``fix`` (what to do) when given."""
    finite = torch.isfinite(x).all() if isinstance(x, torch.Tensor) else np.isfinite(x).all()
    if not finite:
        raise ValueError(f"{name} contains NaN or Inf" + (f": {fix}" if fix else ""))
    return x


# --------------------------------------------------------------------------- arrays
def as_real_array(value: object, name: str) -> np.ndarray | torch.Tensor:
    """``value`` as an array of real numbers, for a scipy-shaped entry point.

    A ``torch.Tensor`` is returned as it is (detached); anything else goes through
    ``np.asarray`` (an ``ndarray`` comes back as the same object, any layout). Accepted:
    booleans, integers and floats up to float64 (cast later by :func:`lapack_dtype`).
    Raises ``TypeError`` for complex dtypes (the fix: the real embedding, or scipy), long
    double (LAPACK would round it to float64: convert explicitly) and non-numeric dtypes;
    ``ValueError`` for masked, sparse and ragged inputs (scipy refuses them too).
    """
    if isinstance(value, torch.Tensor):
        value = value.detach()
        kind = "c" if value.is_complex() else "f" if value.is_floating_point() else "i"
        kind, size = ("b" if value.dtype == torch.bool else kind), value.dtype.itemsize
    else:
        if np.ma.isMaskedArray(value) or scipy.sparse.issparse(value):
            what = "masked" if np.ma.isMaskedArray(value) else "sparse"
            fix = (f"{name}.filled(...) or drop the masked rows" if what == "masked" else
                   f"{name}.toarray(), or scipy.sparse.linalg.lsqr for a large sparse {name}")
            raise ValueError(f"{name} is a {what} array, which is not supported: pass {fix}")
        try:
            value = np.asarray(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} is not a rectangular array of numbers: {err}") from err
        kind, size = value.dtype.kind, value.dtype.itemsize
    _check_real_kind(kind, size, name, value.dtype)
    return value


def _check_real_kind(kind: str, itemsize: int, name: str, dtype: object) -> None:
    if kind == "c":
        raise TypeError(f"{name} has complex dtype {dtype}; only real problems are solved "
                        f"here: solve the real embedding [[Re A, -Im A], [Im A, Re A]] "
                        f"[Re x; Im x] = [Re b; Im b], or call scipy.linalg.lstsq")
    if kind == "f" and itemsize > 8:
        raise TypeError(f"{name} has dtype {dtype}; LAPACK has no extended precision and "
                        f"would round it to float64 silently: convert it explicitly "
                        f"({name}.astype(np.float64)), or use mpmath for more digits")
    if kind not in "biuf":
        raise TypeError(f"{name} has dtype {dtype}, not numbers: pass an array of floats, "
                        f"e.g. np.asarray({name}, dtype=np.float64)")


def to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """``x`` as a NumPy array on the CPU (a tensor's memory is shared where it can be;
    bfloat16, which NumPy lacks, becomes float32 exactly)."""
    if not isinstance(x, torch.Tensor):
        return x
    x = x.detach().cpu()
    return (x.float() if x.dtype == torch.bfloat16 else x).numpy()


def lapack_dtype(*arrays: np.ndarray | torch.Tensor) -> np.dtype:
    """The float dtype scipy's LAPACK wrappers compute ``arrays`` in (its
    ``find_best_blas_type`` on real inputs): float32 when every array is boolean, an
    integer of at most 16 bits, float16 or float32; float64 otherwise (wider integers,
    float64, a mix with float64)."""
    probes = [to_numpy(torch.empty(0, dtype=a.dtype)) if isinstance(a, torch.Tensor)
              else np.empty(0, a.dtype) for a in arrays]
    return np.dtype(scipy.linalg.blas.find_best_blas_type(probes)[1])


def check_problem(
    A: torch.Tensor, b: torch.Tensor, x: torch.Tensor | None = None, *, x_name: str = "x",
    finite_A: bool = True,
) -> tuple[int, int, int]:
    """Validate a batch of least-squares problems; return ``(batch, n, d)``.

    Shapes: ``A: (B, n, d)``, ``b: (B, n)``, optional iterate ``x: (B, d)`` (named
    ``x_name`` in error messages); one dtype (float32 or float64) and one device for all;
    every value finite. ``finite_A=False`` leaves ``A``'s values unread (for a caller that
    checks them on a pass over ``A`` it makes anyway).
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
        if finite_A or name != "A":
            check_finite(t, name)
    return batch, n, d
