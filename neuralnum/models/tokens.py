"""The in-context sequence layout of a least-squares problem and its current iterate.

One problem ``(A, b)`` with iterate ``x`` becomes ``n`` tokens of ``width`` channels::

    token i = [ a_i (d) | b_i (1) | x (d) | 0 ... 0 (width - 2d - 1 scratch channels) ]

``a_i`` is row ``i`` of ``A``, ``b_i`` its target, and the iterate ``x`` is broadcast to
every token. A model maps ``(B, n, width)`` tokens to ``(B, n, width)`` outputs and the
next iterate is read from the ``x`` slot of the **last** token (position ``n - 1``),
which a causal model has seen the whole problem at. Architectures, exact constructions,
the learner and the end-to-end baseline (``x = 0``, read ``x*``) all use this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from neuralnum.core.validation import check_finite, check_problem, check_tensor

__all__ = ["TokenLayout"]


@dataclass(frozen=True)
class TokenLayout:
    """Token layout for problems with ``n`` rows and ``d`` unknowns.

    ``width`` defaults to the minimum ``2d + 1``; larger widths add zero scratch
    channels (exact constructions use them for intermediate products).
    """

    n: int
    d: int
    width: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1 or self.d < 1:
            raise ValueError(f"n and d must be >= 1, got n={self.n}, d={self.d}")
        if self.width is None:
            object.__setattr__(self, "width", 2 * self.d + 1)
        if self.width < 2 * self.d + 1:
            raise ValueError(f"width must be >= 2d+1 = {2 * self.d + 1}, got {self.width}")

    # channel slices ----------------------------------------------------------------
    @property
    def a_slice(self) -> slice:
        return slice(0, self.d)

    @property
    def b_index(self) -> int:
        return self.d

    @property
    def x_slice(self) -> slice:
        return slice(self.d + 1, 2 * self.d + 1)

    @property
    def scratch_slice(self) -> slice:
        return slice(2 * self.d + 1, self.width)

    # encode / decode -----------------------------------------------------------------
    def encode(
        self, A: torch.Tensor, b: torch.Tensor, x: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Tokens ``(B, n, width)`` of problems ``A: (B, n, d)``, ``b: (B, n)``, ``x: (B, d)``.

        ``x`` defaults to zeros. Same dtype/device as ``A``; the copy is exact.
        """
        if x is None:
            check_tensor(A, "A", 3)
            x = A.new_zeros(A.shape[0], A.shape[2])
        batch, n, d = check_problem(A, b, x)
        if (n, d) != (self.n, self.d):
            raise ValueError(f"problem has (n, d) = {(n, d)} but the layout expects "
                             f"{(self.n, self.d)}")
        tokens = A.new_zeros(batch, n, self.width)
        tokens[..., self.a_slice] = A
        tokens[..., self.b_index] = b
        tokens[..., self.x_slice] = x.unsqueeze(1)
        return tokens

    def check_tokens(self, tokens: torch.Tensor, name: str = "tokens") -> torch.Tensor:
        """Raise a clear error unless ``tokens`` is a finite ``(B, n, width)`` tensor."""
        check_tensor(tokens, name, 3)
        if tokens.shape[1:] != (self.n, self.width):
            raise ValueError(f"{name} must have shape (B, {self.n}, {self.width}) for layout "
                             f"n={self.n}, d={self.d}, got {tuple(tokens.shape)}")
        return check_finite(tokens, name)

    def decode(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`encode`: ``(A, b, x)`` with ``x`` read at the last token."""
        self.check_tokens(tokens)
        return (tokens[..., self.a_slice].clone(), tokens[..., self.b_index].clone(),
                self.read_iterate(tokens))

    def read_iterate(self, outputs: torch.Tensor) -> torch.Tensor:
        """The iterate ``(B, d)`` a model wrote into the ``x`` slot of the last token."""
        self.check_tokens(outputs, "outputs")
        return outputs[:, -1, self.x_slice].clone()
