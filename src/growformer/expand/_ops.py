"""Tensor and index primitives shared by the expansions; nothing here knows model structure."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from growformer.config import ModelConfig
from growformer.resize import ParamResize, ResizeRecord

WIDTH_INITS = ("zero", "tile")
FILLS = ("zero", "random", "mean")


class GrowthError(ValueError):
    """A growth target or option that cannot be applied; the message names the field."""


@dataclass(frozen=True)
class Expansion:
    """The result of one expansion: the new config, the new weights and the resize record.

    Unchanged tensors are passed through by reference, not copied.
    """

    config: ModelConfig
    state: dict[str, Tensor]
    record: ResizeRecord


@dataclass(frozen=True)
class DimChange:
    """Grow one dimension of one tensor.

    ``index`` maps each new position to an old one (``-1``: new). New positions are filled with
    ``fill``: zeros, ``random`` (normal with the standard deviation of the old tensor), or
    ``mean`` (the mean of the carried entries along ``dim``). Carried entries are multiplied by
    ``value_scale`` (per new position); ``grad_scale`` only goes into the record.
    """

    dim: int
    index: Tensor
    fill: str = "zero"
    value_scale: Tensor | None = None
    grad_scale: Tensor | None = None


class Rng:
    """Seeded random fills for the free entries of an expansion, reproducible for a seed.

    On CPU a large fill is split into fixed chunks, each with its own generator, and the chunks
    run on a thread pool: ``normal_`` is single-threaded and otherwise dominates growth time.
    The chunking does not depend on the thread count, so results do not either.
    """

    CHUNK = 1 << 20

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._calls = 0

    def normal_(self, out: Tensor, std: float) -> Tensor:
        """Fill ``out`` (any view) with Normal(0, std) entries, in place."""
        self._calls += 1
        base = self.seed * 1_000_003 + self._calls * 8191
        if out.device.type != "cpu" or out.numel() <= self.CHUNK or out.ndim == 0:
            gen = torch.Generator(device=out.device).manual_seed(base)
            return out.normal_(0.0, std, generator=gen)
        rows = max(1, self.CHUNK // max(1, out[0].numel()))
        chunks = list(out.split(rows))

        def fill(k: int) -> None:
            chunks[k].normal_(0.0, std, generator=torch.Generator().manual_seed(base + k))

        with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
            list(pool.map(fill, range(len(chunks))))
        return out


def sample_std(t: Tensor, max_samples: int = 1 << 16) -> float:
    """The standard deviation of ``t``, from 16 evenly spaced contiguous blocks when it is large
    (cheap on memory bandwidth, representative across rows)."""
    flat = t.detach().reshape(-1)
    if flat.numel() < 2:
        return 0.02
    if flat.numel() > max_samples:
        block = max_samples // 16
        starts = torch.linspace(0, flat.numel() - block, 16).long().tolist()
        flat = torch.cat([flat[s : s + block] for s in starts])
    std = float(flat.float().std())
    return std if std > 0 else 0.02


def prefix_index(n_old: int, n_new: int) -> Tensor:
    """Old positions kept in place, new ones appended: ``[0, …, n_old-1, -1, …]``."""
    index = torch.full((n_new,), -1, dtype=torch.long)
    index[:n_old] = torch.arange(n_old)
    return index


def tile_index(n_old: int, n_new: int) -> tuple[Tensor, Tensor]:
    """Cyclic copies (new j copies old ``j mod n_old``) and, per new position, the number of
    copies its source has: dividing the outgoing weights by it keeps the function."""
    index = torch.arange(n_new) % n_old
    counts = torch.bincount(index, minlength=n_old).to(torch.float64)
    return index, counts[index]


def block_rows(block_index: Tensor, block_size: int) -> Tensor:
    """Expand a map of blocks (heads) to a map of rows: block b, row r → ``b*block_size + r``."""
    rows = block_index[:, None] * block_size + torch.arange(block_size)
    rows = torch.where(block_index[:, None] >= 0, rows, torch.full_like(rows, -1))
    return rows.reshape(-1)


def repeat_rows(per_block: Tensor, block_size: int) -> Tensor:
    """A per-block factor repeated for each row of its block."""
    return per_block.repeat_interleave(block_size)


def check_not_smaller(field: str, current: int, target: int) -> None:
    if target < current:
        raise GrowthError(
            f"{field}: target {target} is smaller than the current {current}; growth only "
            "increases sizes (use shrinking, `growformer shrink`, to reduce a model)"
        )


def check_choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise GrowthError(f"{field} must be one of {', '.join(allowed)}; got {value!r}")


def grow_tensor(old: Tensor, change: DimChange, rng: Rng) -> Tensor:
    """Build the grown tensor that ``change`` describes (see ``DimChange``)."""
    dim, index = change.dim, change.index
    shape = list(old.shape)
    shape[dim] = len(index)
    out = torch.empty(shape, dtype=old.dtype, device=old.device)
    carried = index >= 0
    positions = carried.nonzero().squeeze(1)
    values = old
    if len(positions):
        values = _read(old, dim, index[positions])
        if change.value_scale is not None:
            scale = change.value_scale[positions].to(device=old.device, dtype=old.dtype)
            shape_along = [1] * old.ndim
            shape_along[dim] = -1
            values = values * scale.reshape(shape_along)
        _write(out, dim, positions, values)
    new_positions = (~carried).nonzero().squeeze(1)
    if len(new_positions):
        if change.fill not in FILLS:
            raise GrowthError(f"fill must be one of {', '.join(FILLS)}; got {change.fill!r}")
        start = _contiguous_start(new_positions)
        if start is None:
            new_shape = list(shape)
            new_shape[dim] = len(new_positions)
            block = torch.empty(new_shape, dtype=old.dtype, device=old.device)
        else:
            block = out.narrow(dim, start, len(new_positions))
        if change.fill == "zero":
            block.zero_()
        elif change.fill == "random":
            rng.normal_(block, sample_std(old))
        else:
            block.copy_(values.mean(dim, keepdim=True).expand_as(block))
        if start is None:
            out.index_copy_(dim, new_positions.to(out.device), block)
    return out


def apply_changes(
    state: Mapping[str, Tensor], changes: Mapping[str, DimChange], rng: Rng
) -> tuple[dict[str, Tensor], ResizeRecord]:
    """Grow the tensors named in ``changes``; pass the others through by reference."""
    unknown = sorted(set(changes) - set(state))
    if unknown:
        raise KeyError(f"expansion refers to missing weights {unknown}")
    new_state: dict[str, Tensor] = {}
    record: dict[str, ParamResize] = {}
    for name, tensor in state.items():
        change = changes.get(name)
        if change is None:
            new_state[name] = tensor
            record[name] = ParamResize.identity(name, tensor.ndim)
            continue
        new_state[name] = grow_tensor(tensor, change, rng)
        record[name] = ParamResize.along(
            name, tensor.ndim, change.dim, change.index, change.value_scale, change.grad_scale
        )
    return new_state, ResizeRecord(record)


def _contiguous_start(positions: Tensor) -> int | None:
    """The first position if ``positions`` is an increasing run of consecutive integers."""
    n = len(positions)
    first = int(positions[0])
    if int(positions[-1]) - first == n - 1 and (n == 1 or bool((positions.diff() == 1).all())):
        return first
    return None


def _read(old: Tensor, dim: int, index: Tensor) -> Tensor:
    start = _contiguous_start(index)
    if start is not None:
        return old.narrow(dim, start, len(index))
    return old.index_select(dim, index.to(old.device))


def _write(out: Tensor, dim: int, positions: Tensor, values: Tensor) -> None:
    start = _contiguous_start(positions)
    if start is not None:
        out.narrow(dim, start, len(positions)).copy_(values)
    else:
        out.index_copy_(dim, positions.to(out.device), values.contiguous())
