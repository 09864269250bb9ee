"""LAG (landscape-aware growing): choose a growth by the loss a few steps after it.

The loss right after a growth is a poor predictor of which growth ends best; the loss after a
short "lag" of training is a better one (Karp, Saunshi et al., 2024). A trial grows a copy of
the model and optimizer by one candidate and trains it ``k`` steps on the run's own batches
(``Trainer.try_growth``); ``choose`` keeps the candidate with the lowest validation loss after
those steps. Trials run one after another, so memory holds one candidate at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from growformer.config import ModelConfig
from growformer.train.schedule import GrowthEvent


@dataclass(frozen=True)
class Trial:
    """One candidate growth, tried: its name, the concrete event, the grown config, the
    validation loss right after the growth and after ``len(train_losses)`` training steps, and
    the training loss of each of those steps."""

    name: str
    event: GrowthEvent
    config: ModelConfig
    loss_at_growth: float
    loss_after: float
    train_losses: tuple[float, ...]


def choose(trials: list[Trial]) -> Trial:
    """The trial with the lowest validation loss after its steps (the first one on a tie); a
    diverged trial (loss NaN or infinite) only when all diverged (then the first).

    Raises ``ValueError`` for an empty list.
    """
    if not trials:
        raise ValueError("LAG needs at least one trial to choose from")
    return min(trials, key=lambda t: (not math.isfinite(t.loss_after), t.loss_after))


def trial_records(trials: list[Trial]) -> list[dict[str, Any]]:
    """JSON-ready ``{name, loss_at_growth, loss_after, steps}`` for each trial."""
    return [
        {
            "name": t.name,
            "loss_at_growth": t.loss_at_growth,
            "loss_after": t.loss_after,
            "steps": len(t.train_losses),
        }
        for t in trials
    ]


def trials_table(trials: list[Trial]) -> str:
    """A markdown table of the trials (loss right after growth, after k steps, and the rank by
    each) with the chosen one marked."""
    chosen = choose(trials)
    k = len(chosen.train_losses)
    at_growth = sorted(trials, key=lambda t: t.loss_at_growth)
    after = sorted(trials, key=lambda t: t.loss_after)
    lines = [
        f"| candidate | val loss at growth | rank | val loss after {k} steps | rank | chosen |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for t in trials:
        lines.append(
            f"| {t.name} | {t.loss_at_growth:.4f} | {at_growth.index(t) + 1} "
            f"| {t.loss_after:.4f} | {after.index(t) + 1} | {'✓' if t is chosen else ''} |"
        )
    return "\n".join(lines)
