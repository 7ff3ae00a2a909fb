"""M2-GPT, M2-BERT, M2-ViT and same-width/depth Transformer baselines from one config.

``ModelConfig(kind, arch, ...)`` picks the model:

============  ==================  =====================
kind          arch="m2"           arch="transformer"
============  ==================  =====================
``"gpt"``     M2-GPT (causal LM)  GPT (causal SDPA)
``"bert"``    M2-BERT (masked LM) BERT (bidirectional)
``"vit"``     M2-ViT (classifier) ViT
============  ==================  =====================

Every block is pre-norm: ``x + mixer(LN(x))`` then ``x + mlp(LN(x))``. M2 blocks use the
gated long-conv :class:`~structured.mixer.SequenceMixer` and the Monarch/block-diagonal
:class:`~structured.mixer.GLUMixer`; Transformer blocks are the project's one softmax
attention block, :class:`neuralnum.models.SoftmaxBlock` (torch SDPA, dense GELU MLP).
Language models take ``idx: (B, L) int64`` and return logits ``(B, L, vocab)``; vision
models take ``images: (B, C, H, W)`` and return logits ``(B, n_classes)``. Learned
positional embeddings and a head tied to the token embedding (LM) are shared by both
architectures.

Models follow the project's convention (:mod:`neuralnum.models.base`)::

    cfg = ModelConfig(kind="gpt", arch="m2", d_model=64, seq_len=128)
    model = build_model(cfg, dtype=torch.float32, generator=make_generator(0))
    count_parameters(model), cfg.replace(seq_len=256)

Weights are drawn in float32 from ``generator`` alone and then cast to ``dtype``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from neuralnum.core.entry import add_debug_flag, run_main
from neuralnum.core.validation import (
    check_config_choices,
    check_positive_int,
    check_range,
)
from neuralnum.models import Config, SoftmaxBlock, count_parameters, drawing_from
from structured.mixer import GLUMixer, LinearKind, SequenceMixer
from structured.monarch import MonarchShape

__all__ = [
    "ARCHS",
    "KINDS",
    "LanguageModel",
    "M2Block",
    "ModelConfig",
    "VisionModel",
    "build_model",
    "make_block",
]

Kind = Literal["gpt", "bert", "vit"]
Arch = Literal["m2", "transformer"]
KINDS: tuple[str, ...] = Kind.__args__
ARCHS: tuple[str, ...] = Arch.__args__
PROG = "python -m structured.models"
_NAMES = {("gpt", "m2"): "M2-GPT", ("gpt", "transformer"): "GPT",
          ("bert", "m2"): "M2-BERT", ("bert", "transformer"): "BERT",
          ("vit", "m2"): "M2-ViT", ("vit", "transformer"): "ViT"}


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class ModelConfig(Config):
    """Everything that defines a model; validated on construction (``ValueError``)."""

    kind: Kind = "gpt"
    arch: Arch = "m2"
    seq_len: int = 256           # LM context; vision uses (image_size / patch_size)²
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4             # transformer only
    mlp_ratio: float = 4.0       # MLP hidden = mlp_ratio · d_model (rounded to nblocks)
    dim_mixer: LinearKind = "monarch"   # M2's GLU projections
    nblocks: int = 4
    filter_order: int = 32       # width of the implicit filter's MLP
    image_size: int = 8
    patch_size: int = 2
    channels: int = 1
    n_classes: int = 10

    def __post_init__(self) -> None:
        check_config_choices(self)
        for name in ("seq_len", "vocab_size", "d_model", "n_layers", "n_heads", "nblocks",
                     "filter_order", "image_size", "patch_size", "channels", "n_classes"):
            check_positive_int(getattr(self, name), name)
        check_range(self.mlp_ratio, "mlp_ratio", 0, low_open=True)
        self._check_shapes()

    def _check_shapes(self) -> None:
        if self.kind == "vit" and self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by "
                             f"patch_size {self.patch_size}")
        if self.arch == "transformer" and self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.arch == "m2" and not _is_power_of_two(self.n_tokens):
            raise ValueError(f"M2 needs a power-of-two sequence length (the Monarch FFT "
                             f"factors it), got {self.n_tokens}")
        if self.arch == "m2" and self.dim_mixer != "dense" and self.d_model % self.nblocks:
            raise ValueError(f"d_model {self.d_model} is not divisible by nblocks {self.nblocks}")
        if self.arch == "m2" and self.dim_mixer == "monarch":
            try:
                MonarchShape.for_features(self.d_model, 2 * self.mlp_hidden, self.nblocks)
                MonarchShape.for_features(self.mlp_hidden, self.d_model, self.nblocks)
            except ValueError as exc:
                raise ValueError(f"Monarch GLU with d_model {self.d_model}, hidden "
                                 f"{self.mlp_hidden}, nblocks {self.nblocks}: {exc}") from None

    @property
    def name(self) -> str:
        """Display name, e.g. ``"M2-GPT"`` or ``"ViT"``."""
        return _NAMES[(self.kind, self.arch)]

    @property
    def causal(self) -> bool:
        return self.kind == "gpt"

    @property
    def n_tokens(self) -> int:
        """Sequence length seen by the blocks."""
        if self.kind == "vit":
            return (self.image_size // self.patch_size) ** 2
        return self.seq_len

    @property
    def mlp_hidden(self) -> int:
        """MLP hidden width, a multiple of ``nblocks`` so structured projections tile it."""
        return max(self.nblocks, round(self.mlp_ratio * self.d_model / self.nblocks)
                   * self.nblocks)


class M2Block(nn.Module):
    """Pre-norm residual M2 block: sequence mixer then dimension mixer, ``(B, L, d)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.ln1 = nn.LayerNorm(d)
        self.mixer = SequenceMixer(d, causal=cfg.causal, filter_order=cfg.filter_order)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = GLUMixer(d, cfg.mlp_hidden, linear=cfg.dim_mixer, nblocks=cfg.nblocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def make_block(cfg: ModelConfig) -> nn.Module:
    """One block of the model ``cfg`` describes: :class:`M2Block` or the softmax block."""
    if cfg.arch == "m2":
        return M2Block(cfg)
    return SoftmaxBlock(cfg.d_model, n_heads=cfg.n_heads, causal=cfg.causal,
                        hidden=cfg.mlp_hidden)


class Backbone(nn.Module):
    """Learned positions + ``n_layers`` blocks + final LayerNorm: ``(B, L, d) → (B, L, d)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(cfg.n_tokens, cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(make_block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos[: x.shape[1]].to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class _Model(nn.Module):
    """The constructor convention: layers from :meth:`build`, drawn from ``generator``
    in float32 on the CPU, then cast to ``dtype`` and moved to ``device``."""

    def __init__(self, cfg: ModelConfig, *, dtype: torch.dtype | None = None,
                 device: str | torch.device | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        with drawing_from(generator):
            self.build(cfg)
        self.to(device=device, dtype=dtype)

    def build(self, cfg: ModelConfig) -> None:
        raise NotImplementedError


class LanguageModel(_Model):
    """M2-GPT / M2-BERT / GPT / BERT: ``idx: (B, L) int64 → logits (B, L, vocab)``."""

    def build(self, cfg: ModelConfig) -> None:
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.backbone = Backbone(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.embed.weight                      # tied

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.ndim != 2 or idx.dtype != torch.long:
            raise ValueError(f"idx must be (batch, seq) int64, got {tuple(idx.shape)} {idx.dtype}")
        if idx.shape[1] > self.cfg.seq_len:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds seq_len {self.cfg.seq_len}")
        return self.head(self.backbone(self.embed(idx)))


class VisionModel(_Model):
    """M2-ViT / ViT: ``images: (B, C, H, W) → logits (B, n_classes)`` (mean-pooled tokens)."""

    def build(self, cfg: ModelConfig) -> None:
        self.patch = nn.Linear(cfg.channels * cfg.patch_size ** 2, cfg.d_model)
        self.backbone = Backbone(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c, s = self.cfg.channels, self.cfg.image_size
        if images.ndim != 4 or images.shape[1:] != (c, s, s):
            raise ValueError(f"images must be (batch, {c}, {s}, {s}), got {tuple(images.shape)}")
        patches = F.unfold(images, self.cfg.patch_size, stride=self.cfg.patch_size)
        tokens = self.patch(patches.transpose(1, 2))              # (B, n_patches, d)
        return self.head(self.backbone(tokens).mean(dim=1))


def build_model(cfg: ModelConfig, *, dtype: torch.dtype | None = None,
                device: str | torch.device | None = None,
                generator: torch.Generator | None = None) -> nn.Module:
    """The model ``cfg`` describes (:class:`VisionModel` or :class:`LanguageModel`),
    weights drawn from ``generator`` (``None``: seed 0); see the module docstring."""
    model_class = VisionModel if cfg.kind == "vit" else LanguageModel
    return model_class(cfg, dtype=dtype, device=device, generator=generator)


_EXAMPLES = """examples:
  python -m structured.models
  python -m structured.models --d-model 256 --n-layers 8 --seq-len 1024
"""


def main(argv: list[str] | None = None) -> None:
    """Print the parameter counts of every model kind at one width and depth."""
    parser = argparse.ArgumentParser(prog=PROG, description=main.__doc__, epilog=_EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    print(f"{'model':<8} {'params':>12}")
    for kind in KINDS:
        for arch in ARCHS:
            cfg = ModelConfig(kind=kind, arch=arch, d_model=args.d_model,
                              n_layers=args.n_layers, seq_len=args.seq_len)
            print(f"{cfg.name:<8} {count_parameters(build_model(cfg)):>12,}")


if __name__ == "__main__":
    run_main(main, PROG)
