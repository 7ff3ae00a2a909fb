"""The interface every sequence model of :mod:`neuralnum.models` shares, and the model
convention of the whole project.

Model convention (``neuralnum.models`` and ``structured.models`` alike): a model is built
from a frozen dataclass config as ``Model(config, *, dtype=None, device=None,
generator=None)`` (or ``build_model(config, ...)``); its weights are drawn from
``generator`` alone (:func:`drawing_from`: never from the global RNG; ``None`` means a
generator seeded with 0); ``config.replace(**changes)`` is a validated copy; the number
of trainable scalars is :func:`count_parameters`.

A :class:`TokenModel` maps tokens ``u: (B, L, d_model)`` to outputs ``(B, L, d_model)``
of the same dtype, with ``1 <= L <= seq_len``; ``d_model`` is the token width of
:class:`neuralnum.models.tokens.TokenLayout`, so the next iterate is read with
``layout.read_iterate(model(tokens))``; ``model(tokens, increment=True)`` returns the
outputs minus the tokens without ever adding the tokens (every residual layer exposes its
``increment``), which is how the learners read a small update of a large iterate at full
precision. Internally a model works at ``width`` channels:
when ``width == d_model`` the layers act on the tokens directly (their residual stream
*is* the output); otherwise a linear ``in_proj`` lifts the tokens to ``width`` channels
and the output is ``u + out_proj(h)``.

Every forward validates its input up front (tensor, dtype equal to the model's, shape,
finite values) and raises ``TypeError``/``ValueError`` naming ``tokens``. A model built
by :mod:`neuralnum.models.construct` additionally carries the exact
:class:`~neuralnum.models.tokens.TokenLayout` it was built for (:meth:`TokenModel.require_layout`)
and rejects any other ``n``, width or a malformed encoding.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from typing import ClassVar, Self

import torch
from torch import nn

from neuralnum.core.validation import check_dtype, check_finite, check_positive_int, check_tensor
from neuralnum.models.tokens import TokenLayout

__all__ = ["Config", "TokenConfig", "TokenModel", "cast_module", "count_parameters",
           "drawing_from"]


_DRAWING_FROM: contextvars.ContextVar[torch.Generator | None] = contextvars.ContextVar(
    "drawing_from", default=None)


def cast_module(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model.to(dtype)``, also updating a ``dtype`` attribute the model validates with."""
    model = model.to(dtype)
    if isinstance(getattr(model, "dtype", None), torch.dtype):
        model.dtype = dtype
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of distinct trainable scalars of ``model`` (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@contextlib.contextmanager
def drawing_from(generator: torch.Generator | None) -> Iterator[torch.Generator]:
    """Make torch's initialisers draw from ``generator`` inside the block.

    ``nn.Linear``, ``nn.init`` and friends draw from the default CPU generator. Inside
    the block that generator holds ``generator``'s state; on exit the advanced state is
    written back into ``generator`` and the global RNG is restored as it was, so a model
    built inside is a function of ``generator`` alone. ``None``: a fresh generator
    seeded with 0. ``generator`` must live on the CPU (build on the CPU, then move).
    Blocks nest: an inner block with the same generator continues its stream.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError(f"generator must be a CPU torch.Generator, got {generator!r}")
    if _DRAWING_FROM.get() is generator:  # nested: the default generator already is it
        yield generator
        return
    token = _DRAWING_FROM.set(generator)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.set_state(generator.get_state())
            yield generator
            generator.set_state(torch.default_generator.get_state())
    finally:
        _DRAWING_FROM.reset(token)


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every model config: frozen, validated in ``__post_init__``."""

    def replace(self, **changes: object) -> Self:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenConfig(Config):
    """Fields every :class:`TokenModel` shares: token width ``d_model``, depth, the longest
    sequence ``seq_len`` and the internal ``width`` (``None``: ``d_model``)."""

    name: ClassVar[str] = ""
    d_model: int
    n_layers: int
    seq_len: int
    width: int | None = None

    def __post_init__(self) -> None:
        for field in ("d_model", "n_layers", "seq_len"):
            check_positive_int(getattr(self, field), field)
        if self.width is not None:
            check_positive_int(self.width, "width")

    @property
    def inner_width(self) -> int:
        """The channels the layers work at."""
        return self.d_model if self.width is None else self.width


class TokenModel(nn.Module):
    """Base class: configuration, input checks, optional width projections.

    Subclasses build their layers in :meth:`build` (called with the weights drawn from
    the constructor's ``generator``): ``self.layers`` (an ``nn.ModuleList``), then
    :meth:`projections`; they override :meth:`mix` if they need more than the layers.
    """

    def __init__(
        self,
        config: TokenConfig,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, TokenConfig):
            raise TypeError(f"config must be a TokenConfig, got {type(config).__name__}")
        self.config = config
        self.d_model, self.n_layers = config.d_model, config.n_layers
        self.seq_len, self.width = config.seq_len, config.inner_width
        self.dtype = check_dtype(torch.float32 if dtype is None else dtype)
        self.layout: TokenLayout | None = None
        with drawing_from(generator):
            self.build(config)
        if device is not None:
            self.to(device)

    def build(self, config: TokenConfig) -> None:
        """Create the layers (parameters in ``self.dtype``, drawn from the global RNG that
        :func:`drawing_from` has swapped in)."""
        raise NotImplementedError

    def projections(self, always: bool = False) -> None:
        """Create ``in_proj``/``out_proj`` if ``width != d_model`` (or ``always``)."""
        self.projected = always or self.width != self.d_model
        if self.projected:
            self.in_proj = nn.Linear(self.d_model, self.width, dtype=self.dtype)
            self.out_proj = nn.Linear(self.width, self.d_model, dtype=self.dtype)

    def require_layout(self, layout: TokenLayout) -> TokenModel:
        """Accept only tokens encoded by ``layout`` (exact ``n`` and width, zero scratch
        channels, the same ``x`` at every token). Returns ``self``."""
        if layout.width != self.d_model:
            raise ValueError(f"layout width {layout.width} != model d_model {self.d_model}")
        if layout.n > self.seq_len:
            raise ValueError(f"layout n={layout.n} exceeds model seq_len={self.seq_len}")
        self.layout = layout
        return self

    def check_input(self, tokens: object) -> torch.Tensor:
        """Validate ``tokens`` against the model (and its layout, if one is required)."""
        check_tensor(tokens, "tokens", 3)
        if tokens.dtype != self.dtype:
            raise TypeError(f"tokens.dtype {tokens.dtype} differs from the model's {self.dtype}")
        if self.layout is not None:
            return self._check_layout(tokens)
        if tokens.shape[2] != self.d_model:
            raise ValueError(f"tokens must have d_model={self.d_model} channels, got shape "
                             f"{tuple(tokens.shape)}")
        if tokens.shape[1] > self.seq_len:
            raise ValueError(f"tokens have length {tokens.shape[1]} > seq_len={self.seq_len}")
        return check_finite(tokens, "tokens")

    def _check_layout(self, tokens: torch.Tensor) -> torch.Tensor:
        layout = self.layout
        layout.check_tokens(tokens)
        if (tokens[..., layout.scratch_slice] != 0).any():
            raise ValueError("tokens have non-zero scratch channels; encode them with "
                             f"TokenLayout(n={layout.n}, d={layout.d}, width={layout.width})")
        x = tokens[..., layout.x_slice]
        if (x != x[:, :1]).any():
            raise ValueError("tokens carry different iterates x at different positions; "
                             "the layout broadcasts one x to every token")
        return tokens

    def mix(self, h: torch.Tensor) -> torch.Tensor:
        """``(B, L, width)`` → ``(B, L, width)``: by default the residual layers in
        ``self.layers`` applied in order."""
        for layer in self.layers:
            h = layer(h)
        return h

    def mix_increment(self, h: torch.Tensor) -> torch.Tensor:
        """``mix(h) − h`` without forming ``h +`` anything at the end: the layers'
        increments (``layer.increment(h)``, with ``layer(h) = h + layer.increment(h)``)
        summed in a stream of their own. Where the increment is far smaller than ``h``
        (a residual model's update near a solution), ``mix(h) − h`` would keep only the
        bits of the increment that survive rounding at ``h``'s scale; this keeps them all."""
        total = torch.zeros_like(h)
        for layer in self.layers:
            step = layer.increment(h)
            h, total = h + step, total + step
        return total

    def forward(self, tokens: torch.Tensor, *, increment: bool = False) -> torch.Tensor:
        """``tokens: (B, L, d_model)`` → ``(B, L, d_model)``, same dtype.

        ``increment=True``: the outputs minus the tokens, computed without adding the
        tokens (:meth:`mix_increment`), so small updates of large inputs lose nothing to
        rounding at the inputs' scale; how a residual read-out (``x − out_x``) gets its
        full precision.
        """
        u = self.check_input(tokens)
        if self.projected:
            lifted = self.out_proj(self.mix(self.in_proj(u)))
            return lifted if increment else u + lifted
        return self.mix_increment(u) if increment else self.mix(u)
