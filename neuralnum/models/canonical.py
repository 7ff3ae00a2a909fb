"""Re-factor a trained linear attention's query/key weights into the form that rounds least.

A head's scores depend on ``W_q, b_q, W_k, b_k`` only through the bilinear form
``S = [W_q b_q]ᵀ [W_k b_k]`` (``(width + 1) × (width + 1)``, rank ≤ ``head_dim``): the
score of positions ``t, s`` is ``[u_t; 1]ᵀ S [u_s; 1]``. Any invertible ``G`` gives the
same ``S`` from ``(G q, G⁻ᵀ k)``, so training lands in an arbitrary such gauge, and a
dense one costs precision: each score is then a sum of products that mix every channel
and cancel. On the exact GD construction (``q = [x, −1]``, ``k_s = [a_s, b_s]``, each
score one residual ``a_sᵀx − b_s``), rotating ``q`` and ``k`` by a random orthogonal
``G`` leaves the function unchanged and costs CG on ill-conditioned problems about as
many digits as the trained weights lose.

:func:`canonicalize_attention` writes every head back in the *interpolative* form of its
``S``: ``head_dim`` pivot rows ``I`` of ``S`` (column-pivoted QR) and ``S = T · S[I]``
with ``T[I] = 1`` exactly, i.e. ``q = Tᵀ [u; 1]`` (each pivot channel read with weight 1,
the others with the few small coefficients of ``T``) and ``k = S[I] [u; 1]``. The trained
construction-like models come out with ``q`` reading the ``x`` and bias channels alone.

In the first layer of a model that acts on the tokens directly, channels the token
layout broadcasts (the iterate ``x``, same at every position) and the bias are the same
at ``t`` and ``s``, so the part of ``S`` that pairs them contributes ``[x; 1]ᵀ B [x; 1]``,
which only sees ``B``'s symmetric part: the antisymmetric part (training leaves one of
size 0.1 there, a direction the loss cannot see) is dropped wherever the symmetrised form
still factors through ``head_dim`` channels. Both steps leave the model's
function unchanged up to rounding on tokens of its layout; on the demo's learner they close
most of learned CG's gap to exact CG on ill-conditioned problems (docs/results.md,
"vs_scipy").
"""

from __future__ import annotations

import scipy.linalg
import torch

from neuralnum.models.linear_attention import LinearAttention
from neuralnum.models.tokens import TokenLayout

__all__ = ["canonicalize_attention", "interpolative_factors"]


#: Relative error up to which an interpolative factorisation counts as exact.
_EXACT = 1e3 * torch.finfo(torch.float64).eps


def interpolative_factors(S: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T, S_I)`` with ``S ≈ T @ S_I``: ``S_I = S[I]`` for ``rank`` pivot rows ``I`` of
    ``S: (m, m)`` (column-pivoted QR of ``Sᵀ``), ``T: (m, rank)`` by least squares with
    ``T[I]`` the identity exactly. Exact when ``rank(S) ≤ rank``; float64 in and out."""
    _, _, pivots = scipy.linalg.qr(S.T.cpu().numpy(), mode="economic", pivoting=True)
    rows = torch.as_tensor(pivots[:rank], device=S.device)
    S_I = S[rows]
    T = torch.linalg.lstsq(S_I.T, S.T).solution.T
    T[rows] = torch.eye(rank, dtype=S.dtype, device=S.device)
    return T, S_I


def _factors(S: torch.Tensor, rank: int, shared: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolative factors of ``S``, of its ``shared`` block symmetrised where that form
    still has rank ≤ ``rank`` (else the symmetrised form has no ``rank``-term factors and
    ``S`` itself is factored)."""
    if shared is not None:
        sym = S.clone()
        block = S[shared[:, None], shared]
        sym[shared[:, None], shared] = (block + block.T) / 2
        T, S_I = interpolative_factors(sym, rank)
        if (T @ S_I - sym).abs().max() <= _EXACT * S.abs().max():
            return T, S_I
    return interpolative_factors(S, rank)


@torch.no_grad()
def canonicalize_attention(model: LinearAttention, layout: TokenLayout | None = None) -> int:
    """Re-factor every head's query/key weights of ``model`` in place (module docstring);
    returns the number of heads re-factored.

    ``layout``: the token layout the model reads (its broadcast ``x`` channels are
    symmetrised in the first layer when the layers act on the tokens directly). Weights
    keep their dtype; the factorisation runs in float64.
    """
    if not isinstance(model, LinearAttention):
        raise TypeError(f"canonicalize_attention needs a LinearAttention, got "
                        f"{type(model).__name__}")
    width = model.width
    shared = None
    if layout is not None and not model.projected:
        if layout.width != width:
            raise ValueError(f"layout width {layout.width} != model width {width}")
        shared = torch.tensor([*range(layout.x_slice.start, layout.x_slice.stop), width])
    heads = 0
    for index, layer in enumerate(model.layers):
        for h in range(layer.n_heads):
            rows = slice(h * layer.head_dim, (h + 1) * layer.head_dim)
            Q = torch.cat([layer.q.weight[rows], layer.q.bias[rows, None]], 1).double()
            K = torch.cat([layer.k.weight[rows], layer.k.bias[rows, None]], 1).double()
            T, S_I = _factors(Q.T @ K, layer.head_dim, shared if index == 0 else None)
            for linear, factor in ((layer.q, T.T), (layer.k, S_I)):
                linear.weight[rows] = factor[:, :-1].to(linear.weight.dtype)
                linear.bias[rows] = factor[:, -1].to(linear.bias.dtype)
            heads += 1
    return heads
