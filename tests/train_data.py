"""A small learnable token stream for trainer tests (no tokenizer, no files)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


class MarkovTokens:
    """Tokens from a fixed sparse Markov chain (each token has 3 likely successors), with the
    trainer's data contract: the batch of a step depends on (seed, step) only, and the
    evaluation windows are fixed."""

    def __init__(self, vocab_size: int = 64, length: int = 50_000, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(1234)
        successors = torch.randint(0, vocab_size, (vocab_size, 3), generator=g)
        choice = torch.randint(0, 3, (length,), generator=torch.Generator().manual_seed(seed))
        tokens = torch.empty(length, dtype=torch.long)
        tokens[0] = 0
        for i in range(1, length):
            tokens[i] = successors[tokens[i - 1], choice[i]]
        self.tokens, self.seed = tokens, seed

    def batch_at(self, step: int, batch_size: int, seq_len: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        starts = torch.randint(0, len(self.tokens) - seq_len - 1, (batch_size,), generator=g)
        rows = torch.stack([self.tokens[s : s + seq_len + 1] for s in starts.tolist()])
        return rows[:, :-1], rows[:, 1:]

    def eval_batches(
        self, batch_size: int, seq_len: int, max_windows: int | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        count = max_windows or (len(self.tokens) - 1) // seq_len
        starts = torch.linspace(0, len(self.tokens) - seq_len - 1, count).long()
        rows = torch.stack([self.tokens[s : s + seq_len + 1] for s in starts.tolist()])
        for i in range(0, count, batch_size):
            yield rows[i : i + batch_size, :-1], rows[i : i + batch_size, 1:]
