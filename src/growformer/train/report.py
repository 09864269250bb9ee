"""Comparing runs: when each reaches a loss, and the table the demo and benchmark print."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from growformer.train.metrics import read_metrics


@dataclass(frozen=True)
class RunSummary:
    """A finished run's totals and its validation curve (step, time, FLOPs, loss) at evals."""

    name: str
    steps: int
    time: float
    flops: float
    final_val_loss: float
    curve: tuple[tuple[int, float, float, float], ...]

    def reach(self, loss: float) -> tuple[float, float] | None:
        """Training time and FLOPs at the first evaluation with validation loss ≤ ``loss``
        (linearly interpolated from the previous evaluation); None if never reached."""
        previous = None
        for step, time, flops, value in self.curve:
            if value <= loss:
                if previous is None or previous[3] == value:
                    return time, flops
                fraction = (previous[3] - loss) / (previous[3] - value)
                return (
                    previous[1] + fraction * (time - previous[1]),
                    previous[2] + fraction * (flops - previous[2]),
                )
            previous = (step, time, flops, value)
        return None


def summarize(run_dir: str | os.PathLike, name: str | None = None) -> RunSummary:
    """Read a run folder's ``metrics.csv`` into a ``RunSummary``."""
    rows = read_metrics(run_dir)
    evals = [r for r in rows if r["val_loss"]]
    if not evals:
        raise ValueError(f"{run_dir}: no evaluation in metrics.csv")
    curve = tuple(
        (int(r["step"]), float(r["time"]), float(r["flops"]), float(r["val_loss"])) for r in evals
    )
    last = rows[-1]
    return RunSummary(
        name or Path(run_dir).name,
        int(last["step"]),
        float(last["time"]),
        float(last["flops"]),
        curve[-1][3],
        curve,
    )


def speedup_table(baseline: RunSummary, runs: list[RunSummary]) -> str:
    """A markdown table: per run its steps, training time, FLOPs, final validation loss, the
    time and FLOPs it needs to reach the baseline's final validation loss, and the baseline's
    time and FLOPs over those (the speed-ups; "-" when the run never reaches that loss)."""
    target = baseline.final_val_loss
    lines = [
        f"| run | steps | time s | FLOPs | final val loss | time to {target:.4f} | "
        "FLOPs to it | time speed-up | FLOPs speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in [baseline, *runs]:
        reached = run.reach(target)
        if reached is None:
            extra = "never | - | - | -"
        else:
            time, flops = reached
            extra = (
                f"{time:.1f} | {flops:.3g} | {baseline.time / time:.2f}x | "
                f"{baseline.flops / flops:.2f}x"
            )
        lines.append(
            f"| {run.name} | {run.steps} | {run.time:.1f} | {run.flops:.3g} | "
            f"{run.final_val_loss:.4f} | {extra} |"
        )
    return "\n".join(lines)
