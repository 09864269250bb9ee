"""New layers: n_layers → L̂, inserted at any positions, exact for pre-norm models.

A new block whose attention output W_O and MLP down projection (and their biases) are zero adds
nothing to the residual stream: it is the identity, whatever its other weights are.

``identity``: the other matrices are random with the neighbour's scale, norms copied from it.
``copy``: every other weight is a copy of the neighbour (the nearest old layer before the new
one, or after it at the very start), a better start for training.

Post-norm blocks normalize after the residual add, so a zeroed block still applies its norms:
not exact, allowed only with ``approximate=True``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from growformer.config import ModelConfig
from growformer.expand._ops import (
    Expansion,
    FillQueue,
    GrowthError,
    Rng,
    check_choice,
    check_not_smaller,
    fresh_tensor,
    sample_std,
)
from growformer.resize import ParamResize, ResizeRecord

LAYER_INITS = ("identity", "copy")
PLACEMENTS = ("end", "middle", "interleave")
_ZEROED = ("attn.o.", "mlp.down.")


def new_layer_positions(n_old: int, n_new: int, where: str | Sequence[int]) -> list[int]:
    """Positions, in the grown stack of ``n_new`` layers, that hold the new layers.

    ``end``: after the last layer. ``middle``: all together after old layer ⌈L/2⌉-1.
    ``interleave``: spread evenly, after old layers. A sequence gives the positions directly.
    """
    check_where(where)
    added = n_new - n_old
    if isinstance(where, str):
        if where == "end":
            return list(range(n_old, n_new))
        if where == "middle":
            start = (n_old + 1) // 2
            return list(range(start, start + added))
        positions, placed = [], 0
        for i in range(n_old):
            count = (i + 1) * added // n_old - i * added // n_old
            positions += range(i + 1 + placed, i + 1 + placed + count)
            placed += count
        return positions
    positions = sorted(where)
    if len(positions) != added or len(set(positions)) != added:
        raise GrowthError(
            f"where: expected {added} distinct new-layer positions in [0, {n_new}), "
            f"got {list(where)}"
        )
    if any(not 0 <= p < n_new for p in positions):
        raise GrowthError(f"where: new-layer positions must be in [0, {n_new}), got {list(where)}")
    return positions


def check_where(where: object) -> None:
    """``where`` is one of ``PLACEMENTS`` or a sequence of int positions; else ``GrowthError``."""
    if isinstance(where, str):
        check_choice("where", where, PLACEMENTS)
        return
    if not isinstance(where, Sequence) or any(
        isinstance(p, bool) or not isinstance(p, int) for p in where
    ):
        raise GrowthError(
            f"where must be one of {', '.join(PLACEMENTS)} or a sequence of int layer "
            f"positions; got {where!r}"
        )


def check_layers(
    config: ModelConfig,
    n_layers: int,
    where: str | Sequence[int] = "end",
    init: str = "identity",
    approximate: bool = False,
) -> list[int]:
    """Validate an ``insert_layers`` call before any weight is read; the new layers' positions."""
    check_not_smaller("n_layers", config.n_layers, n_layers)
    check_choice("layer init", init, LAYER_INITS)
    if config.norm_placement == "post" and n_layers > config.n_layers and not approximate:
        raise GrowthError(
            "new layers are not exact in a post-norm model (its norms act even on a zeroed "
            "block); pass approximate=True (--approximate)"
        )
    return new_layer_positions(config.n_layers, n_layers, where)


@torch.no_grad()
def insert_layers(
    config: ModelConfig,
    state: Mapping[str, Tensor],
    n_layers: int,
    *,
    where: str | Sequence[int] = "end",
    init: str = "identity",
    seed: int = 0,
    approximate: bool = False,
) -> Expansion:
    """Grow to ``n_layers`` blocks; old blocks keep their order and weights."""
    c = config
    new_positions = set(check_layers(c, n_layers, where, init, approximate))
    queue = FillQueue()
    rng = Rng(seed, f"layers {c.n_layers}->{n_layers}", queue=queue)
    layer_names: dict[int, list[str]] = {i: [] for i in range(c.n_layers)}
    new_state: dict[str, Tensor] = {}
    record: dict[str, ParamResize] = {}
    for name in state:
        if name.startswith("layers."):
            layer_names[int(name.split(".")[1])].append(name.split(".", 2)[2])
    next_old = 0
    for position in range(n_layers):
        if position not in new_positions:
            _carry_layer(state, next_old, position, layer_names[next_old], new_state, record)
            next_old += 1
            continue
        neighbour = max(next_old - 1, 0)
        for suffix in layer_names[neighbour]:
            source = f"layers.{neighbour}.{suffix}"
            name = f"layers.{position}.{suffix}"
            tensor, carried = _new_layer_weight(state[source], suffix, init, rng, name)
            new_state[name] = tensor
            record[name] = _layer_param_record(source, tensor.ndim, tensor.shape[0], carried)
    queue.flush()
    for name, tensor in state.items():
        if not name.startswith("layers."):
            new_state[name] = tensor
            record[name] = ParamResize.identity(name, tensor.ndim)
    return Expansion(c.replace(n_layers=n_layers), new_state, ResizeRecord(record))


def _carry_layer(
    state: Mapping[str, Tensor],
    old: int,
    position: int,
    suffixes: list[str],
    new_state: dict[str, Tensor],
    record: dict[str, ParamResize],
) -> None:
    for suffix in suffixes:
        source = f"layers.{old}.{suffix}"
        name = f"layers.{position}.{suffix}"
        new_state[name] = state[source]
        record[name] = ParamResize.identity(source, state[source].ndim)


def _new_layer_weight(
    neighbour: Tensor, suffix: str, init: str, rng: Rng, name: str
) -> tuple[Tensor, bool]:
    """The new block's weight ``name`` and whether it is carried (copied) from the neighbour."""
    if suffix.startswith(_ZEROED):
        zeros, zeroed = fresh_tensor(neighbour.shape, neighbour.dtype, neighbour.device)
        return zeros if zeroed else zeros.zero_(), False
    if init == "copy" or "norm." in suffix:
        return neighbour.clone(), True
    if suffix.endswith("bias"):
        return torch.zeros_like(neighbour), False
    return rng.normal_(torch.empty_like(neighbour), sample_std(neighbour), key=name), False


def _layer_param_record(source: str, ndim: int, rows: int, carried: bool) -> ParamResize:
    """A copied weight carries its neighbour's value but not its gradient: the new block's W_O
    and down are zero, so every other weight of it has gradient zero (factor 0: a carried Adam
    moment starts at zero, as a new entry's does). A weight that is not copied is all new."""
    if carried:
        rows_kept = torch.arange(rows)
        return ParamResize.along(source, ndim, 0, rows_kept, grad_scale=torch.zeros(rows))
    return ParamResize.along(source, ndim, 0, torch.full((rows,), -1, dtype=torch.long))
