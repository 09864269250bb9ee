"""Reproducible, state-free batches from a token array, and a fixed evaluation set.

The batch at a step depends only on the split's tokens, its seed, the step and the batch shape:
the start offsets of its windows are drawn from a generator seeded by ``(seed, step)``. A run
resumed at step k therefore reads the same batch as an uninterrupted run, whatever happened
before, and the sequence length may change from one step to the next (a stage of a
progressive schedule). Data-parallel ranks and gradient-accumulation micro-steps take row slices
of a step's batch, so together they read exactly the batch one process would read.

There are no epochs: windows are sampled with replacement, and ``epochs(tokens)`` says how many
passes over the split a number of consumed tokens amounts to.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from growformer.data.cache import content_hash
from growformer.data.corpus import DataError

HASH_CHUNK = 1 << 24  # tokens hashed at a time, to bound memory on large memmaps


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise DataError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True, eq=False)
class TokenSplit:
    """A 1-D array of token ids (often a read-only memmap) and the seed of its batch order."""

    name: str
    tokens: np.ndarray
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tokens.ndim != 1:
            raise DataError(f"{self.name}: tokens must be 1-D, got shape {self.tokens.shape}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise DataError(f"seed must be an integer >= 0, got {self.seed!r}")

    def __len__(self) -> int:
        return len(self.tokens)

    @cached_property
    def content_hash(self) -> str:
        """Hash of the token ids (dtype-independent) and their count; not of the seed."""

        def parts() -> Iterator[bytes | int]:
            yield len(self.tokens)
            for i in range(0, len(self.tokens), HASH_CHUNK):
                yield np.asarray(self.tokens[i : i + HASH_CHUNK], dtype="<i8").tobytes()

        return content_hash(parts())

    def check_seq_len(self, seq_len: int) -> None:
        """Raise ``DataError`` unless one window of ``seq_len + 1`` tokens fits."""
        _positive("seq_len", seq_len)
        if len(self.tokens) < seq_len + 1:
            raise DataError(
                f"{self.name} has {len(self.tokens)} tokens, too few for one window of "
                f"seq_len + 1 = {seq_len + 1}; give more data or a shorter sequence length"
            )

    def starts(self, step: int, batch_size: int, seq_len: int) -> np.ndarray:
        """The window start offsets of the batch at ``step`` (int64, ``[batch_size]``)."""
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise DataError(f"step must be an integer >= 0, got {step!r}")
        _positive("batch_size", batch_size)
        self.check_seq_len(seq_len)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, int(step)])))
        return rng.integers(0, len(self.tokens) - seq_len, size=batch_size, dtype=np.int64)

    def batch_at(self, step: int, batch_size: int, seq_len: int) -> tuple[Tensor, Tensor]:
        """Inputs and next-token targets, int64 ``[batch_size, seq_len]`` each, of the batch at
        ``step``; data-parallel ranks and accumulation micro-steps take row slices of it."""
        return self._windows(self.starts(step, batch_size, seq_len), seq_len)

    def _windows(self, starts: np.ndarray, seq_len: int) -> tuple[Tensor, Tensor]:
        window = torch.from_numpy(
            np.asarray(self.tokens[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int64)
        )
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()

    def eval_starts(self, seq_len: int, max_windows: int | None = None) -> np.ndarray:
        """Start offsets of the fixed evaluation windows: ``0, T, 2T, ...`` (every token but the
        first is a target exactly once), or ``max_windows`` of them evenly spread. Independent
        of the seed."""
        self.check_seq_len(seq_len)
        starts = np.arange(0, len(self.tokens) - seq_len, seq_len, dtype=np.int64)
        if max_windows is not None:
            _positive("max_windows", max_windows)
            if max_windows < len(starts):
                starts = starts[np.linspace(0, len(starts) - 1, max_windows).round().astype(int)]
        return starts

    def eval_batches(
        self, batch_size: int, seq_len: int, max_windows: int | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """The windows of ``eval_starts`` as (inputs, targets) batches of up to
        ``batch_size`` rows, always the same for the same arguments."""
        _positive("batch_size", batch_size)
        starts = self.eval_starts(seq_len, max_windows)
        for i in range(0, len(starts), batch_size):
            yield self._windows(starts[i : i + batch_size], seq_len)

    def epochs(self, tokens_consumed: int) -> float:
        """How many passes over the split ``tokens_consumed`` training tokens amount to."""
        return tokens_consumed / len(self.tokens)
