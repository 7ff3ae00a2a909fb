"""Whole-model conversion between dense and Monarch linear layers.

* :func:`sparsify` — dense-to-sparse: every selected ``nn.Linear`` becomes the
  Frobenius-closest :class:`~structured.layers.MonarchLinear` (optimal projection).
* :func:`densify` — reverse sparsification: every ``MonarchLinear`` / ``BlockdiagLinear``
  becomes the ``nn.Linear`` computing exactly the same map, to continue training dense.

Both modify ``model`` **in place** (submodules are swapped on their parents) and return it,
so ``model = sparsify(model, 4)`` and ``sparsify(model, 4)`` are equivalent. A model that
is itself an ``nn.Linear`` cannot be swapped in place: the converted layer is returned.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from structured.layers import BlockdiagLinear, MonarchLinear

__all__ = ["densify", "sparsify"]

LinearFilter = Callable[[str, nn.Linear], bool]


def _swap(model: nn.Module, convert: Callable[[str, nn.Module], nn.Module | None]) -> nn.Module:
    """Replace every module for which ``convert(name, module)`` is not None (root included).

    Depth first in registration order; a replaced module's children are not visited.
    """
    root = convert("", model)
    if root is not None:
        return root
    _swap_children(model, convert, "")
    return model


def _swap_children(module: nn.Module, convert: Callable[[str, nn.Module], nn.Module | None],
                   prefix: str) -> None:
    for child_name, child in list(module.named_children()):
        name = f"{prefix}.{child_name}" if prefix else child_name
        replacement = convert(name, child)
        if replacement is None:
            _swap_children(child, convert, name)
        else:
            setattr(module, child_name, replacement)


def sparsify(model: nn.Module, nblocks: int, filter: LinearFilter | None = None) -> nn.Module:
    """Replace ``nn.Linear`` layers by projected :class:`MonarchLinear` layers (in place).

    ``filter(name, linear) -> bool`` selects the layers (default: all); ``name`` is the
    dotted module path (``""`` for the root). A selected layer whose sizes ``nblocks``
    does not fit raises ``ValueError`` naming it — exclude it with ``filter``. Each new
    layer records its weight's relative projection error in ``.projection_error``.
    Returns ``model`` (or the new layer when ``model`` itself is an ``nn.Linear``).
    """

    def convert(name: str, module: nn.Module) -> nn.Module | None:
        if type(module) is not nn.Linear or (filter is not None and not filter(name, module)):
            return None
        try:
            return MonarchLinear.from_dense(module, nblocks)
        except ValueError as err:
            raise ValueError(f"cannot sparsify layer {name or '<root>'!r}: {err}") from err

    return _swap(model, convert)


def densify(model: nn.Module) -> nn.Module:
    """Replace every ``MonarchLinear`` / ``BlockdiagLinear`` by an equivalent ``nn.Linear``.

    In place; returns ``model`` (or the new layer when ``model`` itself is one of them).
    """

    def convert(_: str, module: nn.Module) -> nn.Module | None:
        if isinstance(module, MonarchLinear | BlockdiagLinear):
            return module.to_dense()
        return None

    return _swap(model, convert)
