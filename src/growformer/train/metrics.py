"""Run metrics: a CSV file (and TensorBoard when it is installed) plus a growth-event log."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from growformer.atomic import atomic_write

METRICS_FILE = "metrics.csv"
EVENTS_FILE = "events.jsonl"
COLUMNS = (
    "step",
    "tokens",
    "flops",
    "time",
    "loss",
    "val_loss",
    "lr",
    "params",
    "stage",
    "seq_len",
)


class MetricsLog:
    """Appends rows to ``RUN_DIR/metrics.csv`` (``COLUMNS``; ``time`` is training wall time in
    seconds, evaluation and checkpoints excluded) and growth events to ``events.jsonl``.

    ``resume_step``: the number of steps the checkpoint holds; rows logged after more steps and
    events at or after that step (written by a run that was stopped after its last checkpoint)
    are dropped, so a resumed run's log reads as an uninterrupted one.
    """

    def __init__(self, run_dir: str | os.PathLike, resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.events_path = self.run_dir / EVENTS_FILE
        if resume_step is None:
            atomic_write(self.path, _csv_text([], header=True).encode())
            atomic_write(self.events_path, b"")
        else:
            self._truncate(resume_step)
        self._tensorboard = _tensorboard_writer(self.run_dir)

    def _truncate(self, step: int) -> None:
        rows = read_metrics(self.run_dir) if self.path.exists() else []
        kept = [r for r in rows if int(r["step"]) <= step]
        atomic_write(self.path, _csv_text(kept, header=True).encode())
        events = read_events(self.run_dir) if self.events_path.exists() else []
        kept_events = "".join(json.dumps(e) + "\n" for e in events if e["step"] < step)
        atomic_write(self.events_path, kept_events.encode())

    def row(self, **values: Any) -> None:
        with self.path.open("a", newline="") as f:
            f.write(_csv_text([{k: values.get(k, "") for k in COLUMNS}]))
        if self._tensorboard is not None:
            for key in ("loss", "val_loss", "lr", "params"):
                if values.get(key) not in (None, ""):
                    self._tensorboard.add_scalar(key, float(values[key]), int(values["step"]))

    def event(self, record: dict[str, Any]) -> None:
        with self.events_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def _csv_text(rows: Iterable[dict[str, Any]], *, header: bool = False) -> str:
    """``rows`` as CSV lines of ``COLUMNS`` ending in ``\\n`` (the header first if asked)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _tensorboard_writer(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, str]]:
    with (Path(run_dir) / METRICS_FILE).open(newline="") as f:
        return list(csv.DictReader(f))


def read_events(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / EVENTS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
