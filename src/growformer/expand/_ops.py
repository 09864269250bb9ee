"""Tensor and index primitives shared by the expansions; nothing here knows model structure."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
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

    On CPU a fill is split into chunks of about ``CHUNK`` entries, each with its own seed, run
    on a thread pool (one ``normal_`` runs on one core). Inside ``batched()`` fills are queued
    and run together when the block exits, so small tensors fill in parallel too. The chunking
    depends on neither the thread count nor the batching, so neither do the values.
    """

    CHUNK = 1 << 17
    MAX_QUEUED = 1 << 23

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._calls = 0
        self._queue: list[tuple[Tensor, float, int]] | None = None
        self._after: list[Callable[[], object]] = []
        self._queued = 0

    def normal_(self, out: Tensor, std: float) -> Tensor:
        """Fill ``out`` with Normal(0, std) entries in place (inside ``batched()``: when the block
        exits). Strided views go through a contiguous buffer, as ``normal_`` is slow on them."""
        if not out.is_contiguous():
            buffer = torch.empty_like(out, memory_format=torch.contiguous_format)
            self.normal_(buffer, std)
            self.then(lambda: out.copy_(buffer))
            return out
        self._calls += 1
        base = self.seed * 1_000_003 + self._calls * 8191
        if out.device.type != "cpu" or out.ndim == 0:
            gen = torch.Generator(device=out.device).manual_seed(base)
            return out.normal_(0.0, std, generator=gen)
        rows = max(1, self.CHUNK // max(1, out[0].numel()))
        jobs = [(chunk, std, base + k) for k, chunk in enumerate(out.split(rows))]
        if self._queue is None:
            _run_fills(jobs)
        else:
            self._queue.extend(jobs)
            self._queued += out.numel()
        return out

    def then(self, step: Callable[[], object]) -> None:
        """Run ``step`` once the fills so far are done (now, outside ``batched()``)."""
        if self._queue is None:
            step()
            return
        self._after.append(step)
        if self._queued >= self.MAX_QUEUED:
            self._flush()

    def _flush(self) -> None:
        queue, after = self._queue, self._after
        self._queue, self._after, self._queued = [], [], 0
        _run_fills(queue)
        for step in after:
            step()

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Queue the fills made inside the block and run them in parallel, then the steps given
        to ``then``: at the end of the block, or sooner once ``MAX_QUEUED`` entries wait (which
        bounds the memory of the contiguous buffers)."""
        self._queue, self._after, self._queued = [], [], 0
        try:
            yield
            self._flush()
        finally:
            self._queue, self._after, self._queued = None, [], 0


def _run_fills(jobs: list[tuple[Tensor, float, int]]) -> None:
    def fill(job: tuple[Tensor, float, int]) -> None:
        chunk, std, seed = job
        chunk.normal_(0.0, std, generator=torch.Generator().manual_seed(seed))

    if len(jobs) == 1:
        fill(jobs[0])
    else:
        list(_fill_pool().map(fill, jobs))


@functools.cache
def _fill_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=max(1, torch.get_num_threads()), thread_name_prefix="fill"
    )


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
            rng.then(lambda: out.index_copy_(dim, new_positions.to(out.device), block))
    return out


class Intermediate(dict):
    """The weights between two steps of a composed growth, which no one else holds: an
    expansion releases each tensor once it has grown it, so peak memory stays near the size of
    the result rather than twice it."""


def apply_changes(
    state: Mapping[str, Tensor], changes: Mapping[str, DimChange], rng: Rng
) -> tuple[dict[str, Tensor], ResizeRecord]:
    """Grow the tensors named in ``changes``; pass the others through by reference. An
    ``Intermediate`` state is emptied as it is read."""
    unknown = sorted(set(changes) - set(state))
    if unknown:
        raise KeyError(f"expansion refers to missing weights {unknown}")
    new_state: dict[str, Tensor] = {}
    record: dict[str, ParamResize] = {}
    consume = isinstance(state, Intermediate)
    with rng.batched():
        for name in list(state):
            tensor = state.pop(name) if consume else state[name]
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
