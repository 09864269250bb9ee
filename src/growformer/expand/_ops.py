"""Tensor and index primitives shared by the expansions; nothing here knows model structure."""

from __future__ import annotations

import functools
import hashlib
import math
import mmap
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

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

    def __post_init__(self) -> None:
        if self.fill not in FILLS:
            raise GrowthError(f"fill must be one of {', '.join(FILLS)}; got {self.fill!r}")

    @functools.cached_property
    def carried_runs(self) -> list[tuple[int, int, int]] | None:
        """``(new_start, old_start, length)`` for each run of consecutive new positions carried
        from consecutive old ones, or None when there are more than ``MAX_RUNS`` (then the
        carried entries move by one gather)."""
        new = (self.index >= 0).nonzero().squeeze(1)
        old = self.index[new]
        starts, lengths = _runs(new, old)
        if len(starts) > MAX_RUNS:
            return None
        return list(zip(new[starts].tolist(), old[starts].tolist(), lengths.tolist(), strict=True))

    @functools.cached_property
    def new_runs(self) -> list[tuple[int, int]]:
        """``(start, length)`` for each run of consecutive new positions."""
        new = (self.index < 0).nonzero().squeeze(1)
        starts, lengths = _runs(new)
        return list(zip(new[starts].tolist(), lengths.tolist(), strict=True))


MAX_RUNS = 64


def _runs(*positions: Tensor) -> tuple[Tensor, Tensor]:
    """Where the runs in which every one of ``positions`` (1-D, of one length) steps by +1
    start, as indices into them, and the runs' lengths."""
    n = len(positions[0])
    breaks = torch.zeros(n, dtype=torch.bool)
    breaks[:1] = True
    for p in positions:
        breaks[1:] |= p.diff() != 1
    starts = breaks.nonzero().squeeze(1)
    return starts, torch.diff(starts, append=torch.tensor([n]))


@dataclass(frozen=True)
class Step:
    """An expansion planned from the config alone, before any weight is read.

    ``changes`` names every tensor it grows (the others pass through); ``name`` (the expansion
    and its sizes, e.g. ``"ffn 2048->3072"``) keeps the random fills of different expansions
    apart. ``apply_steps`` runs one step or a composition of several in one pass per tensor.
    """

    config: ModelConfig
    changes: Mapping[str, DimChange]
    name: str


_Out = TypeVar("_Out", Tensor, Sequence[Tensor])


def _stable_seed(*parts: object) -> int:
    """A 32-bit seed from ``parts``, the same in every process (``hash`` of a str is not).
    32 bits because the CPU generator (mt19937) reads only those of its seed."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


class Rng:
    """Seeded random fills for the free entries of an expansion, reproducible for a seed.

    A fill's values depend only on the seed, ``salt`` (which expansion), the ``key`` the caller
    passes (which tensor; calls without one are numbered in call order) and the shape of what is
    filled: not on the order of the fills, the thread count, or whether a composed growth
    materialized its intermediate stages. On CPU a fill is split into chunks of at most
    ``CHUNK`` entries (whole rows), each with its own generator; a strided chunk (new columns)
    is generated in a small per-thread buffer and copied, so no fill allocates memory the size
    of its block. Given a ``FillQueue`` the fills wait there to run together (see there);
    otherwise each runs at once.
    """

    CHUNK = 1 << 17

    def __init__(self, seed: int, salt: str = "", *, queue: FillQueue | None = None) -> None:
        self.seed = seed
        self.salt = salt
        self.queue = queue
        self._calls = 0

    def normal_(self, out: _Out, std: float, key: str | None = None) -> _Out:
        """Fill ``out`` (a tensor, or several filled as one: their chunks are numbered in turn)
        with Normal(0, std) entries in place (when the queue is flushed, given one); returns
        ``out``."""
        blocks = [out] if isinstance(out, Tensor) else list(out)
        if key is None:
            self._calls += 1
            key = f"#{self._calls}"
        base = _stable_seed(self.seed, self.salt, key)
        chunks: list[_Chunk] = []
        for block in blocks:
            if block.numel() == 0:
                continue
            if block.device.type != "cpu" or block.ndim == 0:
                chunks.append((block, std, (base + len(chunks)) % _SEED_MOD))
                continue
            rows = max(1, self.CHUNK // max(1, block[0].numel()))
            for chunk in block.split(rows):
                chunks.append((chunk, std, (base + len(chunks)) % _SEED_MOD))
        queue = self.queue if self.queue is not None else FillQueue()
        queue.add(key, chunks)
        if self.queue is None:
            queue.flush()
        return out


class FillQueue:
    """Random fills waiting to run together: ``flush`` splits them among a thread pool (one
    ``normal_`` runs on one core) while the caller waits, so the fill threads have the cores to
    themselves and there are few hand-offs. Whoever reads a filled tensor first checks
    ``pending(key)`` and flushes that key."""

    def __init__(self) -> None:
        self._chunks: dict[str, list[_Chunk]] = {}

    def add(self, key: str, chunks: list[_Chunk]) -> None:
        self._chunks.setdefault(key, []).extend(chunks)

    def pending(self, key: str) -> bool:
        return key in self._chunks

    def flush(self, key: str | None = None) -> None:
        """Run the fills queued under ``key`` (all of them when None)."""
        if key is None:
            chunks = [c for queued in self._chunks.values() for c in queued]
            self._chunks = {}
        else:
            chunks = self._chunks.pop(key, [])
        if len(chunks) <= 1 or any(c[0].device.type != "cpu" for c in chunks):
            for chunk in chunks:
                _fill(chunk)
            return
        pool, workers = _fill_pool()
        # A few runs of consecutive chunks per thread: balanced, with few hand-offs.
        share = sum(c[0].numel() for c in chunks) / (4 * workers)
        groups: list[list[_Chunk]] = [[]]
        size = 0
        for chunk in chunks:
            if size >= share:
                groups.append([])
                size = 0
            groups[-1].append(chunk)
            size += chunk[0].numel()
        for _ in pool.map(_fill_all, groups):
            pass


_Chunk = tuple[Tensor, float, int]
_SEED_MOD = 1 << 32
_GRAIN = 32768  # ATen's parallel grain: copies below it stay on the calling thread
_buffers = threading.local()


def _fill_all(chunks: list[_Chunk]) -> None:
    for chunk in chunks:
        _fill(chunk)


def _fill(chunk: _Chunk) -> None:
    out, std, seed = chunk
    gen = torch.Generator(device=out.device).manual_seed(seed)
    if out.is_contiguous():
        out.normal_(0.0, std, generator=gen)
        return
    # normal_ is slow on strided views: fill a contiguous buffer, reused by this thread.
    if out.device.type != "cpu":
        out.copy_(
            torch.empty_like(out, memory_format=torch.contiguous_format).normal_(
                0.0, std, generator=gen
            )
        )
        return
    flat = getattr(_buffers, "flat", None)
    if flat is None or flat.dtype != out.dtype or flat.numel() < out.numel():
        flat = _buffers.flat = torch.empty(max(out.numel(), Rng.CHUNK), dtype=out.dtype)
    buffer = flat[: out.numel()].view(out.shape).normal_(0.0, std, generator=gen)
    # Copied in pieces below the grain, so that a pool thread starts no intra-op threads.
    rows = max(1, (_GRAIN - 1) // max(1, out[0].numel()))
    for target, source in zip(out.split(rows), buffer.split(rows), strict=True):
        target.copy_(source)


@functools.cache
def _fill_pool() -> tuple[ThreadPoolExecutor, int]:
    workers = max(1, torch.get_num_threads())
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fill"), workers


def sample_std(t: Tensor, max_samples: int = 1 << 13) -> float:
    """The standard deviation of ``t``, from 16 evenly spaced contiguous blocks when it is large
    (cheap on memory bandwidth, representative across rows; 8192 samples estimate it to about
    1%). The sample stays far below ATen's parallel grain (32768 entries): the reduction runs on
    the calling thread alone, with no intra-op threads to wake or wait for."""
    flat = t.detach().reshape(-1)
    if flat.numel() < 2:
        return 0.02
    if flat.numel() > max_samples:
        block = max_samples // 16
        flat = flat.as_strided((16, block), ((flat.numel() - block) // 15, 1))
    std = float(flat.float().std())
    return std if std > 0 else 0.02


_FRESH_PAGES_MIN_BYTES = 1 << 20
_PRIVATE_ANONYMOUS = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)


def fresh_tensor(
    shape: Sequence[int], dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, bool]:
    """A new contiguous tensor, and whether it already holds zeros.

    On CPU, from 1 MiB up (where mmap has private anonymous maps), it lives in fresh anonymous
    memory: the kernel hands out zeroed pages on first touch, as ``calloc`` relies on, so it
    holds zeros at no cost, and pages that are never written (a writer's new rows) are not mapped
    until used. The memory is freed with the tensor; its storage cannot be resized. Elsewhere
    it is ``torch.empty`` (not zeroed: the caller writes every entry).
    """
    nbytes = math.prod(shape) * dtype.itemsize
    if device.type != "cpu" or nbytes < _FRESH_PAGES_MIN_BYTES or not _PRIVATE_ANONYMOUS:
        return torch.empty(shape, dtype=dtype, device=device), False
    pages = mmap.mmap(-1, nbytes, flags=_PRIVATE_ANONYMOUS)
    return torch.frombuffer(pages, dtype=dtype).view(shape), True


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


@torch.no_grad()
def grow_tensor(
    old: Tensor,
    change: DimChange,
    rng: Rng,
    *,
    key: str | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Build the grown tensor that ``change`` describes (see ``DimChange``), writing each entry
    at most once: into ``out`` when given (of the grown shape), else into a ``fresh_tensor``,
    where zero fills are not written when it already holds zeros. ``key`` names the tensor for
    ``rng``."""
    dim, index = change.dim, change.index
    shape = list(old.shape)
    shape[dim] = len(index)
    zeroed = False
    if out is None:
        out, zeroed = fresh_tensor(shape, old.dtype, old.device)
    elif list(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, the change needs {tuple(shape)}")
    runs = change.carried_runs
    scale = None
    if change.value_scale is not None:
        scale = _along(change.value_scale.to(device=old.device, dtype=old.dtype), dim, old.ndim)
    if runs is None:
        carried = (index >= 0).nonzero().squeeze(1)
        values = old.index_select(dim, index[carried].to(old.device))
        if scale is not None:
            values *= scale.index_select(dim, carried.to(old.device))
        out.index_copy_(dim, carried.to(out.device), values)
    else:
        for new_start, old_start, length in runs:
            source = old.narrow(dim, old_start, length)
            target = out.narrow(dim, new_start, length)
            if scale is None:
                target.copy_(source)
            else:
                torch.mul(source, scale.narrow(dim, new_start, length), out=target)
    blocks = [out.narrow(dim, start, length) for start, length in change.new_runs]
    if not blocks:
        return out
    if change.fill == "zero":
        if not zeroed:
            for block in blocks:
                block.zero_()
    elif change.fill == "random":
        rng.normal_(blocks, sample_std(old), key=key)
    else:
        mean = _carried_mean(out, change)
        for block in blocks:
            block.copy_(mean.expand_as(block))
    return out


def _along(v: Tensor, dim: int, ndim: int) -> Tensor:
    shape = [1] * ndim
    shape[dim] = -1
    return v.reshape(shape)


def _carried_mean(out: Tensor, change: DimChange) -> Tensor:
    """The mean along ``change.dim`` of the carried entries already written to ``out``."""
    runs = change.carried_runs
    if runs is not None and len(runs) == 1:
        new_start, _, length = runs[0]
        return out.narrow(change.dim, new_start, length).mean(change.dim, keepdim=True)
    carried = (change.index >= 0).nonzero().squeeze(1).to(out.device)
    return out.index_select(change.dim, carried).mean(change.dim, keepdim=True)


class Intermediate(dict):
    """Weights that no one else holds (between two steps of a composed growth): whoever grows
    them releases each tensor once it has grown it, so peak memory stays near the size of the
    result rather than twice it."""


def apply_steps(
    config: ModelConfig, state: Mapping[str, Tensor], steps: Sequence[Step], seed: int = 0
) -> Expansion:
    """Apply ``steps`` (planned from ``config``, each from the previous one's config) one after
    another, in one pass per tensor: a tensor that several steps change goes through them in
    turn with its intermediate values in a reused buffer, so only its final value is allocated
    and written to fresh memory. The result is bitwise what applying the steps one at a time
    gives. Tensors no step changes pass through by reference; an ``Intermediate`` state is
    emptied as it is read."""
    queue = FillQueue()
    rngs = [Rng(seed, step.name, queue=queue) for step in steps]
    new_state, record = _apply(state, [(s.changes, r) for s, r in zip(steps, rngs, strict=True)])
    queue.flush()
    return Expansion(steps[-1].config if steps else config, new_state, record)


@torch.no_grad()
def _apply(
    state: Mapping[str, Tensor], steps: Sequence[tuple[Mapping[str, DimChange], Rng]]
) -> tuple[dict[str, Tensor], ResizeRecord]:
    for changes, _ in steps:
        unknown = sorted(set(changes) - set(state))
        if unknown:
            raise KeyError(f"expansion refers to missing weights {unknown}")
    new_state: dict[str, Tensor] = {}
    record: dict[str, ParamResize] = {}
    consume = isinstance(state, Intermediate)
    buffers = _Buffers()
    for name in list(state):
        tensor = state.pop(name) if consume else state[name]
        resize = ParamResize.identity(name, tensor.ndim)
        chain = [(c[name], rng) for c, rng in steps if name in c]
        for k, (change, rng) in enumerate(chain):
            out = None
            if k < len(chain) - 1:
                shape = list(tensor.shape)
                shape[change.dim] = len(change.index)
                out = buffers.take(k % 2, shape, tensor)
            if rng.queue is not None and rng.queue.pending(name):
                rng.queue.flush(name)  # this step reads what the previous one filled
            tensor = grow_tensor(tensor, change, rng, key=name, out=out)
            step = ParamResize.along(
                name, tensor.ndim, change.dim, change.index, change.value_scale, change.grad_scale
            )
            resize = step if k == 0 else resize.then(step)
        new_state[name] = tensor
        record[name] = resize
    return new_state, ResizeRecord(record)


class _Buffers:
    """Two reusable flat buffers for the intermediate values of a tensor that several steps
    change (step k writes buffer k mod 2 and reads the other)."""

    def __init__(self) -> None:
        self._flat: list[Tensor | None] = [None, None]

    def take(self, slot: int, shape: list[int], like: Tensor) -> Tensor:
        numel = math.prod(shape)
        flat = self._flat[slot]
        if (
            flat is None
            or flat.numel() < numel
            or flat.dtype != like.dtype
            or flat.device != like.device
        ):
            flat = self._flat[slot] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return flat[:numel].view(shape)
