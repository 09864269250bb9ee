"""Block removal: which of the source's layers the child keeps."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from growformer.shrink.target import ShrinkError


def choose_layers(
    block_change: Tensor, n_layers: int, keep_layers: Sequence[int] | None = None
) -> tuple[int, ...]:
    """The source layers the child keeps, in increasing order (their order in the child).

    ``keep_layers``, when given, is the answer (validated: ``n_layers`` distinct indices of
    source layers). Otherwise the first and last layers are kept, and of the others the
    ``n_layers - 2`` that change their input most (largest ``block_change``, ties to the
    earlier layer); a one-layer child keeps the first layer.
    """
    total = len(block_change)
    if keep_layers is not None:
        return check_keep_layers(keep_layers, n_layers, total)
    if n_layers >= total:
        return tuple(range(total))
    if n_layers == 1:
        return (0,)
    middle = sorted(range(1, total - 1), key=lambda i: (-float(block_change[i]), i))
    return tuple(sorted([0, total - 1, *middle[: n_layers - 2]]))


def check_keep_layers(keep_layers: Sequence[int], n_layers: int, total: int) -> tuple[int, ...]:
    """``keep_layers`` sorted, after checking it names ``n_layers`` distinct layers of
    ``range(total)``; raises ``ShrinkError`` otherwise."""
    layers = list(keep_layers)
    if any(isinstance(i, bool) or not isinstance(i, int) for i in layers):
        raise ShrinkError(f"keep_layers must be layer indices (integers), got {layers}")
    if len(set(layers)) != len(layers):
        raise ShrinkError(f"keep_layers {layers} names a layer twice")
    outside = [i for i in layers if not 0 <= i < total]
    if outside:
        raise ShrinkError(
            f"keep_layers {layers}: {outside} not a layer of the source (allowed 0..{total - 1})"
        )
    if len(layers) != n_layers:
        raise ShrinkError(
            f"keep_layers names {len(layers)} layers but the target has n_layers={n_layers}"
        )
    return tuple(sorted(layers))
