"""Learning rate: linear warmup, cosine decay, and optional re-warmup after a growth event."""

from __future__ import annotations

import math

from growformer.train.config import TrainConfig


def lr_at(
    step: int, train: TrainConfig, rewarm_from: int | None = None, rewarm_steps: int = 0
) -> float:
    """The learning rate of optimizer step ``step`` (0-based).

    Warmup: ``lr·(step+1)/warmup_steps`` for the first ``warmup_steps`` steps; then cosine from
    ``lr`` down to ``lr·min_lr_ratio`` at ``train.steps``. After a growth at ``rewarm_from``
    with ``rewarm_steps > 0`` the rate is multiplied by ``(step - rewarm_from + 1)/rewarm_steps``
    until it reaches 1: one schedule for the whole run, briefly lowered after a growth.
    """
    if step < train.warmup_steps:
        rate = train.lr * (step + 1) / train.warmup_steps
    else:
        span = max(1, train.steps - train.warmup_steps)
        progress = min(1.0, (step - train.warmup_steps) / span)
        floor = train.lr * train.min_lr_ratio
        rate = floor + (train.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if rewarm_from is not None and rewarm_steps > 0 and step >= rewarm_from:
        rate *= min(1.0, (step - rewarm_from + 1) / rewarm_steps)
    return rate
