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
from growformer.jsonl import JsonLineError, json_lines
from growformer.train.config import TrainConfigError

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
        events = read_events(self.run_dir) if self.events_path.exists() else []
        kept = [r for r in rows if int(r["step"]) <= step]
        atomic_write(self.path, _csv_text(kept, header=True).encode())
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


# The columns a reader relies on, and how each must parse (val_loss is empty between evals).
_PARSED = {"step": int, "time": float, "flops": float, "val_loss": float}


def _complete_lines(path: Path) -> str:
    """The text of ``path`` up to its last newline: a last line without one is a row being
    appended (or cut short by a crash), left out. ``TrainConfigError`` unless UTF-8."""
    try:
        text = path.read_text()
    except UnicodeDecodeError as error:
        raise TrainConfigError(f"{path} is not UTF-8 text ({error})") from None
    return text[: text.rfind("\n") + 1]


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, str]]:
    """The complete rows of ``RUN_DIR/metrics.csv`` (see ``_complete_lines``);
    ``TrainConfigError`` naming the file and line where it is not the trainer's: a header
    without step, time, flops and val_loss, a row with another number of values than the
    header, a value of those columns that does not parse."""
    path = Path(run_dir) / METRICS_FILE
    rows: list[dict[str, str]] = []
    try:
        with io.StringIO(_complete_lines(path), newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise TrainConfigError(f"{path} is empty: not a growformer metrics file")
            missing = [column for column in _PARSED if column not in header]
            if missing:
                raise TrainConfigError(
                    f"{path} line 1: the header lacks {', '.join(missing)}: not a growformer "
                    f"metrics file (the trainer writes {','.join(COLUMNS)})"
                )
            for values in reader:
                if values:
                    rows.append(_metrics_row(header, values, f"{path} line {reader.line_num}"))
    except csv.Error as error:
        raise TrainConfigError(f"{path} is not valid CSV ({error})") from None
    return rows


def _metrics_row(header: list[str], values: list[str], where: str) -> dict[str, str]:
    if len(values) != len(header):
        raise TrainConfigError(
            f"{where}: {len(values)} values for the header's {len(header)} columns"
        )
    row = dict(zip(header, values, strict=True))
    for column, kind in _PARSED.items():
        if column == "val_loss" and not row[column]:
            continue
        try:
            kind(row[column])
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise TrainConfigError(
                f"{where}: {column} must be {expected}, got {row[column]!r}"
            ) from None
    return row


def read_events(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete growth events of ``RUN_DIR/events.jsonl`` (see ``_complete_lines``);
    ``TrainConfigError`` naming the file and line of one that is not JSON or not an event (an
    object with an integer ``step``)."""
    path = Path(run_dir) / EVENTS_FILE
    events = []
    try:
        for number, event in json_lines(_complete_lines(path)):
            step = event.get("step") if isinstance(event, dict) else None
            if isinstance(step, bool) or not isinstance(step, int):
                raise TrainConfigError(
                    f"{path} line {number} is not a growth event: it needs an integer step"
                )
            events.append(event)
    except JsonLineError as error:
        raise TrainConfigError(f"{path} {error}") from None
    return events
