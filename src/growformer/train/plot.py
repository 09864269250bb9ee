"""Validation loss against training time and FLOPs, runs overlaid, growth events marked."""

from __future__ import annotations

import os
from pathlib import Path

from growformer.train.metrics import read_events, read_metrics


def plot_runs(run_dirs: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Write a PNG with two panels (val loss vs training seconds, vs FLOPs), one line per run
    (labelled by its folder name), a dotted line at each growth event. Raises ``FileNotFoundError``
    naming a folder without ``metrics.csv`` and ``TrainConfigError`` naming the file and line
    of a ``metrics.csv`` or ``events.jsonl`` that is not the trainer's (see ``read_metrics``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if not (run_dir / "metrics.csv").is_file():
            raise FileNotFoundError(f"{run_dir} has no metrics.csv: not a growformer run folder")
        logged = read_metrics(run_dir)
        rows = [r for r in logged if r["val_loss"]]
        events = {e["step"] for e in read_events(run_dir)}
        for ax, key in zip(axes, ("time", "flops"), strict=True):
            xs = [float(r[key]) for r in rows]
            ys = [float(r["val_loss"]) for r in rows]
            (line,) = ax.plot(xs, ys, label=run_dir.name)
            for x in _event_positions(logged, events, key):
                ax.axvline(x, color=line.get_color(), linestyle=":", alpha=0.8)
    axes[0].set_xlabel("training time (s)")
    axes[1].set_xlabel("training FLOPs")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("validation loss (dotted lines: growth events)")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out


def _event_positions(rows: list[dict[str, str]], event_steps: set[int], key: str) -> list[float]:
    """The ``key`` value (time or FLOPs) of the last logged row before each growth step."""
    positions = []
    for step in sorted(event_steps):
        before = [r for r in rows if int(r["step"]) <= step]
        positions.append(float(before[-1][key]) if before else 0.0)
    return positions
