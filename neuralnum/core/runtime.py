"""What every training loop shares: seeding, progress, metrics, checkpoints, DDP.

The one training loop (:mod:`neuralnum.training.loop`) builds on this module, and through it
:class:`neuralnum.solvers.learner.Learner` and ``structured.train``; nothing here is written
twice elsewhere.

* :func:`make_generator` — explicit, seeded ``torch.Generator`` (no global RNG state).
* :func:`progress` — a tqdm bar shown only on the main process; :func:`show_progress`
  silences bars in a block; :func:`cli_defaults` applies the environment defaults
  (``NEURALNUM_PROGRESS``, ``NEURALNUM_KERNELS``) at a command-line entry point.
* :class:`MetricsLog` — append-only JSON-lines metrics, truncated on resume.
* :func:`save_checkpoint` / :func:`load_checkpoint` — atomic write (:func:`atomic_write`:
  tmp file, fsync, ``os.replace``) and safe load (``torch.load(weights_only=True)``);
  :func:`check_output_path` — a command's output path, checked before any work.
* :func:`generator_state` / :func:`restore_generator` — exact-resume RNG bookkeeping.
* :func:`training_state` / :func:`restore_training_state` — step, model, optimizer, named
  generators and torch's global RNG in one checkpointable dict, for exact resume.
* :class:`Distributed` / :func:`init_distributed` — ``torchrun`` set-up (gloo on CPU,
  NCCL on CUDA) and rank-aware helpers; gradients are averaged by
  ``DistributedDataParallel`` in :mod:`neuralnum.training.loop`, the one training loop.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from kernels import env_backend, use_backend

__all__ = [
    "CheckpointError",
    "Distributed",
    "MetricsLog",
    "atomic_write",
    "atomic_write_text",
    "check_output_path",
    "cli_defaults",
    "env_progress",
    "generator_state",
    "init_distributed",
    "load_checkpoint",
    "make_generator",
    "progress",
    "progress_shown",
    "restore_generator",
    "restore_training_state",
    "save_checkpoint",
    "show_progress",
    "training_state",
]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or incompatible with the object loading it."""


# --------------------------------------------------------------------------- seeding
def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """Return a ``torch.Generator`` on ``device`` seeded with ``seed`` (an int ≥ 0)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def generator_state(gen: torch.Generator) -> torch.Tensor:
    """The generator's state as a uint8 tensor (checkpoint-safe under ``weights_only``)."""
    return gen.get_state().clone()


def restore_generator(gen: torch.Generator, state: torch.Tensor) -> torch.Generator:
    """Restore a state produced by :func:`generator_state`; returns ``gen``."""
    gen.set_state(state.to(dtype=torch.uint8, device="cpu"))
    return gen


def training_state(
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Everything an exact resume needs, as a dict :func:`save_checkpoint` can write.

    Holds ``step``, the model's, optimizer's and LR scheduler's ``state_dict``, the state
    of each named generator, torch's global CPU RNG state (and CUDA's, when available;
    dropout draws from these) and any ``extra`` plain values. The one resume-state
    builder of the tree (:func:`neuralnum.training.loop.train` writes it).
    """
    state: dict[str, Any] = {
        "step": int(step),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "generators": {k: generator_state(g) for k, g in (generators or {}).items()},
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        **extra,
    }
    return state


def restore_training_state(
    state: Mapping[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
) -> int:
    """Load a :func:`training_state` dict into ``model``/``optimizer``/``scheduler``/
    ``generators``.

    Also restores torch's global RNG. Returns the saved step. Raises
    :class:`CheckpointError` when a named generator is missing from the checkpoint.
    """
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    saved = state["generators"]
    for name, gen in (generators or {}).items():
        if name not in saved:
            raise CheckpointError(f"checkpoint has no state for generator {name!r}")
        restore_generator(gen, saved[name])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"])


# --------------------------------------------------------------------------- progress
_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("progress", default=True)


@contextlib.contextmanager
def show_progress(enabled: bool) -> Iterator[None]:
    """Show (or silence) every :func:`progress` bar inside the ``with`` block."""
    token = _PROGRESS.set(bool(enabled))
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def progress_shown() -> bool:
    """Whether :func:`progress` bars are shown here (the :func:`show_progress` setting); a
    parent hands it to the worker processes it spawns, which do not inherit it."""
    return _PROGRESS.get()


def env_progress(environ: Mapping[str, str] = os.environ) -> bool:
    """``False`` when ``NEURALNUM_PROGRESS=0`` in ``environ`` (for CLI entry points only)."""
    return environ.get("NEURALNUM_PROGRESS", "1") != "0"


@contextlib.contextmanager
def cli_defaults(environ: Mapping[str, str] = os.environ) -> Iterator[None]:
    """The documented environment defaults, read once at a command-line entry point:
    ``NEURALNUM_PROGRESS`` (:func:`show_progress`) and ``NEURALNUM_KERNELS``
    (:func:`kernels.use_backend`)."""
    with show_progress(env_progress(environ)), use_backend(env_backend(environ)):
        yield


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    initial: int = 0,
    desc: str | None = None,
    enabled: bool = True,
) -> tqdm:
    """A tqdm progress bar; silent when ``enabled`` is False (e.g. non-zero ranks) or
    inside ``show_progress(False)``."""
    return tqdm(
        iterable,
        total=total,
        initial=initial,
        desc=desc,
        disable=not (enabled and _PROGRESS.get()),
        dynamic_ncols=True,
        mininterval=0.5,
    )


# --------------------------------------------------------------------------- metrics
def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep them readable
    return value


class MetricsLog:
    """Append-only JSON-lines log of ``{"step": int, **metrics}`` records.

    ``MetricsLog(path, resume_step=k)`` drops records with ``step > k`` first, so a
    resumed run continues the log exactly where its checkpoint was taken.
    A ``path`` of ``None`` keeps records in memory only (:attr:`records`).
    """

    def __init__(self, path: str | os.PathLike[str] | None, *, resume_step: int | None = None):
        self.path = Path(path) if path is not None else None
        self.records: list[dict[str, Any]] = []
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
            return
        if self.path.exists():
            kept = [r for r in self.read(self.path) if r.get("step", 0) <= resume_step]
            self.records = kept
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def log(self, step: int, **metrics: Any) -> dict[str, Any]:
        """Append ``{"step": step, **metrics}`` as one line, in one ``write`` call."""
        record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        self.records.append(record)
        if self.path is not None:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (json.dumps(record) + "\n").encode())
            finally:
                os.close(fd)
        return record

    @staticmethod
    def read(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
        """All records of a JSON-lines file (blank lines skipped). A last line cut short
        (no newline, not JSON: a write the process did not live to finish) is dropped;
        a damaged line before it raises ``ValueError`` naming the file and line."""
        text = Path(path).read_text()
        lines = text.split("\n")
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                if number == len(lines):  # torn: the file does not end in a newline
                    break
                raise ValueError(f"metrics log {path} line {number} is not JSON ({err}): "
                                 f"delete the line, or the log") from err
        return records


# --------------------------------------------------------------------------- checkpoints
def atomic_write(path: str | os.PathLike[str], mode: str, write: Callable[[IO[Any]], None],
                 ) -> Path:
    """Write ``path`` through ``write(fh)`` (``fh`` opened with ``mode``, ``"w"`` or
    ``"wb"``) into a temporary sibling, fsync, then rename; returns the path.

    An interruption leaves either the old file or the new one, never a torn file; the new
    file gets the permissions ``open()`` would give it (``0o666`` less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 → what open() would have made
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C included: no temporary file is left behind
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write ``text`` to ``path`` (a temporary sibling renamed over it, so an
    interruption leaves the old file or the new one, never a torn one); returns the path."""
    return atomic_write(path, "w", lambda fh: fh.write(text))


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Atomically write ``state`` (tensors, numbers, strings, lists, dicts) to ``path``.

    The file is written to a temporary sibling, fsynced and renamed over ``path``, so an
    interruption leaves either the old checkpoint or the new one, never a torn file.
    """
    return atomic_write(path, "wb", lambda fh: torch.save(dict(state), fh))


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu",
    format: str | None = None,
) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``: no arbitrary unpickling.

    Raises :class:`CheckpointError` naming the file when it is missing or unreadable, or
    when ``format`` is given and the file's ``"format"`` entry differs (another kind of
    checkpoint, or another version of this one).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file, or a pickle that weights_only refuses
        reason = str(exc).strip().split("\n")[0].split(". ")[0][:120]
        raise CheckpointError(f"cannot load checkpoint {path}: it is damaged or not a "
                              f"checkpoint ({type(exc).__name__}: {reason}); write it again "
                              f"(re-run the command that made it) or pass another "
                              f"file") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict (got {type(state)})")
    if format is not None and state.get("format") != format:
        raise CheckpointError(f"{path} is not a {format} checkpoint (format "
                              f"{state.get('format')!r})")
    return state


def check_output_path(path: str | os.PathLike[str], flag: str = "", *,
                      directory: bool = True, suffix: str = "") -> Path:
    """``path`` if a run can write there: a directory (``directory``) or a file (ending in
    ``suffix`` when given), existing or creatable (its nearest existing ancestor is a
    writable directory). Otherwise an ``OSError`` (a ``ValueError`` for the suffix)
    naming ``flag`` (when given) and what to do; for checking a command's output before
    any work starts."""
    path = Path(path)
    where = f"{flag} {path}" if flag else str(path)
    if path.exists() and path.is_dir() != directory:
        error = NotADirectoryError if directory else IsADirectoryError
        kind = "a directory" if path.is_dir() else "a file"
        raise error(f"{where} is {kind}: pass a {'directory' if directory else 'file'} path")
    if suffix and not directory and path.suffix != suffix:
        example = path.with_suffix(suffix) if path.suffix else path / f"learner{suffix}"
        raise ValueError(f"{where} names the file to write and must end in {suffix}, e.g. "
                         f"{example}")
    ancestor = path if path.is_dir() else path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(f"{where}: {ancestor} is a file, not a directory; pass a "
                                 f"path under a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"{where}: cannot write in {ancestor}; pass a path you can "
                              f"write to")
    return path


# --------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class Distributed:
    """The process's place in a (possibly single-process) data-parallel job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, global_batch: int) -> int:
        """This rank's share of ``global_batch``; the global batch must divide evenly."""
        if global_batch % self.world_size:
            raise ValueError(
                f"global batch {global_batch} is not divisible by world size {self.world_size}"
            )
        return global_batch // self.world_size

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place mean of ``tensor`` over ranks (identity when single-process)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor.div_(self.world_size)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str | torch.device | None = None) -> Distributed:
    """Set up data parallelism from ``torchrun``'s environment, or a single process.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised with NCCL
    when CUDA is available and gloo otherwise; each rank gets ``cuda:LOCAL_RANK`` or the
    CPU. Without ``torchrun`` this returns a single-process :class:`Distributed`.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    use_cuda = dev.type == "cuda"
    if world_size > 1 and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)

