"""Offline data: an English byte-level corpus, the digits images, and synthetic MQAR.

Nothing is downloaded; every source ships with an installed package:

* :func:`text_corpus` — English text from CPython itself: the pydoc help topics
  (``pydoc_data.topics``, the Python reference manual's prose) followed by the docstrings of
  every top-level standard-library module (module, class and function docstrings in file
  order, files sorted by name). About 1.3 MB, UTF-8, read as bytes (vocabulary 256).
* :func:`digits` — scikit-learn's 8×8 handwritten digits (1 797 images, 10 classes).
* :func:`mqar_batch` — multi-query associative recall (Zoology's synthetic probe).

Splits are deterministic: the corpus is cut into 2 KiB chunks and chunk ``i`` goes to
validation when ``i % 20 == 10``, to test when ``i % 20 == 19``, else to training; the digits
are permuted once with a fixed seed and split 80/20. Batches are drawn from an explicit
``torch.Generator``.
"""

from __future__ import annotations

import ast
import functools
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "IGNORE_INDEX",
    "ImageSplit",
    "digits",
    "lm_batch",
    "mask_tokens",
    "mqar_batch",
    "text_corpus",
    "text_splits",
]

IGNORE_INDEX = -100          # target value ignored by the loss (cross_entropy's default)
_CHUNK = 2048


def _module_docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return []
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docs = (ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, nodes))
    return [doc for doc in docs if doc]


@functools.cache
def text_corpus() -> bytes:
    """The English corpus as UTF-8 bytes (deterministic for a given Python version)."""
    from pydoc_data.topics import topics  # optional: some Python builds leave pydoc_data out

    parts = [topics[name] for name in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        parts.extend(_module_docstrings(path))
    return "\n\n".join(parts).encode("utf-8")


@functools.cache
def text_splits() -> dict[str, torch.Tensor]:
    """``{"train", "val", "test"}`` → 1-D int64 byte ids (values in ``[0, 256)``)."""
    data = torch.frombuffer(bytearray(text_corpus()), dtype=torch.uint8).long()
    chunks = data.split(_CHUNK)
    picks: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
    for i, chunk in enumerate(chunks):
        split = {10: "val", 19: "test"}.get(i % 20, "train")
        picks[split].append(chunk)
    return {name: torch.cat(parts) for name, parts in picks.items()}


def lm_batch(data: torch.Tensor, batch: int, seq_len: int,
             gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of ``data: (N,)``: inputs ``x`` and next tokens ``y``.

    Both are ``(batch, seq_len)`` int64; ``y[:, t] = x[:, t + 1]`` within a window.
    """
    if data.ndim != 1 or data.numel() <= seq_len + 1:
        raise ValueError(f"data must be 1-D and longer than seq_len + 1 = {seq_len + 1}, "
                         f"got shape {tuple(data.shape)}")
    starts = torch.randint(0, data.numel() - seq_len - 1, (batch, 1), generator=gen)
    index = starts + torch.arange(seq_len + 1)
    window = data[index]
    return window[:, :-1], window[:, 1:]


def mask_tokens(x: torch.Tensor, *, mask_id: int, vocab_size: int, prob: float,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of ``x: (B, L)``: returns ``(inputs, targets)``.

    Each token is selected with probability ``prob``; selected tokens become ``mask_id``
    (80%), a random token (10%) or stay (10%). ``targets`` hold the original token at
    selected positions and :data:`IGNORE_INDEX` elsewhere.
    """
    if not 0 < prob < 1:
        raise ValueError(f"prob must be in (0, 1), got {prob}")
    draw = torch.rand(x.shape, generator=gen)
    how = torch.rand(x.shape, generator=gen)
    noise = torch.randint(0, vocab_size, x.shape, generator=gen)
    selected = draw < prob
    targets = torch.where(selected, x, IGNORE_INDEX)
    inputs = torch.where(selected & (how < 0.8), mask_id, x)
    inputs = torch.where(selected & (how >= 0.8) & (how < 0.9), noise, inputs)
    return inputs, targets


@dataclass(frozen=True)
class ImageSplit:
    """``images: (N, 1, 8, 8)`` float in ``[0, 1]`` and ``labels: (N,)`` int64."""

    images: torch.Tensor
    labels: torch.Tensor


@functools.cache
def _digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits  # optional: the [data] extra
    except ImportError as err:
        raise ImportError('the digits data needs scikit-learn: pip install -e ".[data]"',
                          name=err.name) from err

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float64).unsqueeze(1) / 16.0
    return images, torch.tensor(bunch.target, dtype=torch.long)


def digits(split: str, dtype: torch.dtype = torch.float32) -> ImageSplit:
    """scikit-learn's digits, ``split`` ``"train"`` (80%) or ``"test"`` (20%), fixed permutation."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images, labels = _digits_arrays()
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(labels), generator=gen)
    n_train = int(0.8 * len(labels))
    index = order[:n_train] if split == "train" else order[n_train:]
    return ImageSplit(images[index].to(dtype), labels[index])


def mqar_batch(batch: int, seq_len: int, *, num_kv: int, vocab_size: int,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-query associative recall: ``(inputs, targets)``, both ``(batch, seq_len)`` int64.

    The first ``2·num_kv`` tokens are distinct keys (from ``[1, vocab/2)``) each followed by
    its value (from ``[vocab/2, vocab)``). Every key is queried once more at a random later
    position (in random order); the target there is its value, :data:`IGNORE_INDEX`
    elsewhere. Other positions hold token 0.
    """
    half = vocab_size // 2
    if num_kv < 1 or half - 1 < num_kv:
        raise ValueError(f"need 1 ≤ num_kv ≤ vocab_size/2 − 1, got num_kv={num_kv}, "
                         f"vocab_size={vocab_size}")
    if seq_len < 4 * num_kv:
        raise ValueError(f"seq_len must be ≥ 4·num_kv = {4 * num_kv}, got {seq_len}")
    rows = torch.arange(batch)[:, None]
    keys = torch.rand(batch, half - 1, generator=gen).argsort(dim=1)[:, :num_kv] + 1
    values = torch.randint(half, vocab_size, (batch, num_kv), generator=gen)
    inputs = torch.zeros(batch, seq_len, dtype=torch.long)
    targets = torch.full((batch, seq_len), IGNORE_INDEX, dtype=torch.long)
    inputs[:, 0: 2 * num_kv: 2] = keys
    inputs[:, 1: 2 * num_kv: 2] = values
    free = seq_len - 2 * num_kv
    slots = torch.rand(batch, free, generator=gen).argsort(dim=1)[:, :num_kv] + 2 * num_kv
    which = torch.rand(batch, num_kv, generator=gen).argsort(dim=1)
    inputs[rows, slots] = keys[rows, which]
    targets[rows, slots] = values[rows, which]
    return inputs, targets
