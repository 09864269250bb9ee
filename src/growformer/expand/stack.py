"""Depth growth by copying whole layers: stacking (G_stack), MIDAS and interpolation.

Unlike ``insert_layers`` these copies keep every weight of the copied block, W_O and the MLP
down projection included, so the grown model computes a different function (each copy applies
its block again). That is what the stacking papers do: the copies start already trained.

A growth is given as ``order``: new layer ``j`` is a copy of old layer ``order[j]``. The
resize record names that old layer as each copy's source with nothing scaled, so optimizer
moments are copied along with the weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from growformer.config import ModelConfig
from growformer.expand._ops import Expansion, GrowthError
from growformer.resize import ParamResize, ResizeRecord

STACK_METHODS = ("stack", "midas", "interpolate")


def stack_order(n_old: int, n_new: int) -> list[int]:
    """G_stack: the whole stack repeated in order (2 → 6: 0, 1, 0, 1, 0, 1).

    ``n_new`` must be a multiple of ``n_old``.
    """
    if n_new < n_old or n_new % n_old:
        raise GrowthError(
            f"n_layers: stacking {n_old} layers needs a multiple of {n_old}, got {n_new}"
        )
    return [j % n_old for j in range(n_new)]


BLOCK_POSITIONS = ("middle", "first", "last")


def midas_order(n_old: int, n_new: int, block: int = 1, at: str = "middle") -> list[int]:
    """MIDAS: the middle ``block`` layers duplicated right after themselves, repeatedly.

    4 → 6 with ``block=2``: 0, 1, 2, 1, 2, 3 (the middle block is layers 1-2). ``at="first"`` or
    ``"last"`` duplicates the first or last block instead (4 → 6: 0, 1, 0, 1, 2, 3 and
    0, 1, 2, 3, 2, 3), the other candidates of LAG's adaptive stacking. ``n_new - n_old`` must be
    a multiple of ``block`` and ``block`` at most ``n_old``.
    """
    if at not in BLOCK_POSITIONS:
        raise GrowthError(f"block position must be one of {', '.join(BLOCK_POSITIONS)}; got {at!r}")
    if block < 1 or block > n_old or (n_new - n_old) % block or n_new < n_old:
        raise GrowthError(
            f"n_layers: MIDAS grows by whole blocks of {block} (1 ≤ block ≤ {n_old}); "
            f"cannot go from {n_old} to {n_new}"
        )
    order = list(range(n_old))
    while len(order) < n_new:
        start = {"first": 0, "middle": (len(order) - block) // 2, "last": len(order) - block}[at]
        order[start + block : start + block] = order[start : start + block]
    return order


def interpolate_order(n_old: int, n_new: int) -> list[int]:
    """Apollo's interpolation: new layer ``t`` copies old layer ⌊t·n_old/n_new⌋ (3 → 6:
    0, 0, 1, 1, 2, 2)."""
    if n_new < n_old:
        raise GrowthError(f"n_layers: cannot interpolate {n_old} layers down to {n_new}")
    return [t * n_old // n_new for t in range(n_new)]


def layer_order(
    method: str, n_old: int, n_new: int, block: int = 1, at: str = "middle"
) -> list[int]:
    """The copy order of ``method`` (one of ``STACK_METHODS``); ``block`` and ``at`` are
    MIDAS's."""
    if method == "stack":
        return stack_order(n_old, n_new)
    if method == "midas":
        return midas_order(n_old, n_new, block, at)
    if method == "interpolate":
        return interpolate_order(n_old, n_new)
    raise GrowthError(f"method must be one of {', '.join(STACK_METHODS)}; got {method!r}")


def copy_layers(
    config: ModelConfig, state: Mapping[str, Tensor], order: Sequence[int]
) -> Expansion:
    """A model of ``len(order)`` layers, layer ``j`` a copy of old layer ``order[j]``.

    Not function-preserving (see the module docstring). Every old layer must appear at least
    once. The first copy of a layer shares its tensors by reference, later copies are clones
    (so no two parameters share storage); non-layer weights pass through unchanged.
    """
    n_old = config.n_layers
    if any(not 0 <= i < n_old for i in order) or set(order) != set(range(n_old)):
        raise GrowthError(
            f"layer order must use every old layer 0..{n_old - 1} and nothing else; got "
            f"{list(order)}"
        )
    new_state: dict[str, Tensor] = {}
    record: dict[str, ParamResize] = {}
    for name, tensor in state.items():
        if not name.startswith("layers."):
            new_state[name] = tensor
            record[name] = ParamResize.identity(name, tensor.ndim)
    copied: set[int] = set()
    for j, old in enumerate(order):
        prefix = f"layers.{old}."
        for name, tensor in state.items():
            if name.startswith(prefix):
                new_name = f"layers.{j}.{name[len(prefix) :]}"
                new_state[new_name] = tensor.clone() if old in copied else tensor
                record[new_name] = ParamResize.identity(name, tensor.ndim)
        copied.add(old)
    return Expansion(config.replace(n_layers=len(order)), new_state, ResizeRecord(record))
