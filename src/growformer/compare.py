"""Compare two models on the same fixed batch: the measurement behind ``verify`` and ``--check``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Difference:
    """``max_abs_diff`` of the logits, and ``scale`` = max |logit| of the first model."""

    max_abs_diff: float
    scale: float

    def within(self, rtol: float) -> bool:
        """True when ``max_abs_diff ≤ rtol · max(1, scale)``."""
        return self.max_abs_diff <= rtol * max(1.0, self.scale)


def fixed_batch(vocab_size: int, seq_len: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """The same random token batch [batch, seq_len] on every machine for a given seed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq_len), generator=gen)


@torch.no_grad()
def logit_difference(a: nn.Module, b: nn.Module, tokens: torch.Tensor) -> Difference:
    """Run both models on ``tokens`` (in eval mode) and measure their largest logit difference."""
    modes = a.training, b.training
    a.eval()
    b.eval()
    try:
        la, lb = a(tokens), b(tokens)
    finally:
        a.train(modes[0])
        b.train(modes[1])
    if la.shape != lb.shape:
        raise ValueError(
            f"the models' outputs differ in shape: {tuple(la.shape)} vs {tuple(lb.shape)}"
        )
    diff = (la.double() - lb.double()).abs().max().item()
    return Difference(max_abs_diff=diff, scale=la.double().abs().max().item())
