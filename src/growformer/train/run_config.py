"""A training run described as data: a TOML file or Python objects, validated before training.

TOML layout (every table optional; a preset supplies what is left out)::

    preset = "small"                 # tiny | small | base
    data = "corpus/"                 # default: the built-in corpus
    text_field = "text"              # the field of each JSON line that holds its text
    [model]                          # ModelConfig fields of the target model
    n_layers = 4
    [train]                          # TrainConfig fields
    steps = 1200
    [schedule]                       # a named schedule and its parameters ...
    name = "compound"
    at = 0.4
    # ... or an explicit one: a start size and growth events
    # [schedule.start]
    # n_layers = 2
    # seq_len = 64
    # [[schedule.grow]]
    # at = 0.4                       # a fraction of the steps, or step = N, or tokens = N
    # n_layers = 4
    # method = "exact"               # exact | stack | midas | interpolate | lag
    # layer_init = "copy"            # GrowthOptions fields, state_policy, rewarm_steps, ...
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from growformer.config import SIZE_FIELDS, ConfigError, ModelConfig, is_finite
from growformer.data import DEFAULT_TEXT_FIELD, DataError
from growformer.data.user_data import check_text_field
from growformer.expand import GrowthError, GrowthOptions
from growformer.train.config import PRESETS, TrainConfig, TrainConfigError, preset
from growformer.train.schedule import (
    SCHEDULES,
    GrowthEvent,
    Schedule,
    named_schedule,
    schedule_from_dict,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_EVENT_FIELDS = (
    "seq_len",
    "method",
    "midas_block",
    "block_at",
    "state_policy",
    "rewarm_steps",
    "candidates",
    "lag_steps",
)
RUN_FILE = "run.json"
DATA_FILE = "data.json"
_RUN_FILE_KEYS = ("preset", "data", "text_field", "model", "train", "schedule")
_OPTION_FIELDS = tuple(f.name for f in fields(GrowthOptions))


@dataclass(frozen=True)
class RunSpec:
    """Everything a run needs but the data: the target model (its vocabulary size is set from
    the data's tokenizer), the training config, the schedule, the data path (None: the
    built-in corpus), the tokenizer's vocabulary size (``[model] vocab_size``, else the
    preset's) and the field of each JSON line that holds its text."""

    target: ModelConfig
    train: TrainConfig
    schedule: Schedule
    data: str | None
    vocab_size: int
    text_field: str = DEFAULT_TEXT_FIELD


def run_spec(
    preset_name: str = "small",
    *,
    model: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
    schedule: Mapping[str, Any] | str = "scratch",
    data: str | None = None,
    text_field: str = DEFAULT_TEXT_FIELD,
) -> RunSpec:
    """Build and validate a run from a preset and overrides (the TOML tables, as mappings).

    Raises ``TrainConfigError`` naming the table and field on any invalid value, and runs
    ``Schedule.plan`` so a schedule that cannot reach the target fails here.
    """
    base = preset(preset_name)
    for where, table in (("[model]", model), ("[train]", train)):
        if table is not None and not isinstance(table, Mapping):
            raise TrainConfigError(f"{where} must be a table, got {table!r}")
    if not isinstance(schedule, str | Mapping):
        raise TrainConfigError(f"schedule must be a name or a table, got {schedule!r}")
    if data is not None and not isinstance(data, str):
        raise TrainConfigError(f"data must be a path (a string), got {data!r}")
    try:
        check_text_field(text_field)
    except DataError as error:
        raise TrainConfigError(str(error)) from None
    _check_keys("[model]", model, ModelConfig)
    _check_keys("[train]", train, TrainConfig)
    try:
        target = base.model.replace(**dict(model or {}))
    except (ConfigError, TypeError) as error:
        raise TrainConfigError(f"[model]: {error}") from None
    try:
        train_config = base.train.replace(**dict(train or {}))
    except TypeError as error:
        raise TrainConfigError(f"[train]: {error}") from None
    if target.max_seq_len < train_config.seq_len:
        if model and "max_seq_len" in model:
            raise TrainConfigError(
                f"[train] seq_len {train_config.seq_len} is longer than [model] max_seq_len "
                f"{target.max_seq_len}; raise max_seq_len or shorten seq_len"
            )
        target = target.replace(max_seq_len=train_config.seq_len)  # the preset's context
    table = {"name": schedule} if isinstance(schedule, str) else dict(schedule)
    built = _schedule_from_table(table, target, train_config)
    built.plan(target, train_config)
    vocab_size = target.vocab_size if model and "vocab_size" in model else base.vocab_size
    return RunSpec(target, train_config, built, data, vocab_size, text_field)


def load_run_file(path: str | Path, train_overrides: Mapping[str, Any] | None = None) -> RunSpec:
    """Read and validate a TOML run file (see the module docstring); ``train_overrides``
    replace fields of its ``[train]`` table (the command line's ``--steps``)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise TrainConfigError(f"--config {path}: cannot read: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise TrainConfigError(f"--config {path}: not valid TOML: {error}") from None
    unknown = sorted(set(data) - set(_RUN_FILE_KEYS))
    if unknown:
        raise TrainConfigError(
            f"--config {path}: unknown key(s) {unknown}; allowed: {', '.join(_RUN_FILE_KEYS)}"
        )
    name = data.get("preset", "small")
    if not isinstance(name, str) or name not in PRESETS:
        raise TrainConfigError(f"preset must be one of {', '.join(PRESETS)}; got {name!r}")
    train = data.get("train", {})
    if not isinstance(train, Mapping):
        raise TrainConfigError(f"[train] must be a table, got {train!r}")
    return run_spec(
        name,
        model=data.get("model"),
        train={**train, **(train_overrides or {})},
        schedule=data.get("schedule", "scratch"),
        data=data.get("data"),
        text_field=data.get("text_field", DEFAULT_TEXT_FIELD),
    )


def load_run_dir(run_dir: str | Path) -> RunSpec:
    """The spec a run folder was trained with, from its ``run.json`` and ``data.json`` (the
    data source, tokenizer vocabulary size and JSON lines' text field), so a run can be resumed
    or branched without repeating its options. Raises ``TrainConfigError`` when either file is
    missing or bad."""
    run_dir = Path(run_dir)
    try:
        run = json.loads((run_dir / RUN_FILE).read_text())
        data = json.loads((run_dir / DATA_FILE).read_text())
        return RunSpec(
            ModelConfig.from_dict(run["target"], complete=True),
            TrainConfig(**run["train"]),
            schedule_from_dict(run["schedule"]),
            data["source"],
            data["vocab_size"],
            data.get("text_field", DEFAULT_TEXT_FIELD),
        )
    except (OSError, ValueError, RecursionError, KeyError, TypeError) as error:
        raise TrainConfigError(
            f"{run_dir}: not a growformer run folder with {RUN_FILE} and {DATA_FILE} ({error})"
        ) from None


def _check_keys(table: str, values: Mapping[str, Any] | None, cls: type) -> None:
    if values is not None and not isinstance(values, Mapping):
        raise TrainConfigError(f"{table} must be a table of fields, got {values!r}")
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(values or {}) - allowed)
    if unknown:
        raise TrainConfigError(f"{table}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def _schedule_from_table(
    table: dict[str, Any], target: ModelConfig, train: TrainConfig
) -> Schedule:
    if "start" in table or "grow" in table:
        extra = sorted(set(table) - {"name", "start", "grow"})
        if extra:
            raise TrainConfigError(
                f"[schedule]: an explicit schedule takes start and grow, not {extra}"
            )
        if table.get("name") in SCHEDULES:
            raise TrainConfigError(
                f"[schedule]: {table['name']!r} is a built-in schedule, set by its parameters; "
                "an explicit schedule (start and grow) needs another name"
            )
        if not isinstance(table.get("name", "custom"), str):
            raise TrainConfigError(f"[schedule]: name must be a string, got {table['name']!r}")
        start, grow = table.get("start", {}), table.get("grow", [])
        if not isinstance(start, Mapping):
            raise TrainConfigError(f"[schedule.start] must be a table, got {start!r}")
        if not isinstance(grow, list) or not all(isinstance(e, Mapping) for e in grow):
            raise TrainConfigError(f"[[schedule.grow]] must be a list of tables, got {grow!r}")
        start = dict(start)
        start_seq_len = start.pop("seq_len", None)
        events = tuple(_event(dict(e), train, i) for i, e in enumerate(grow))
        return Schedule(table.get("name", "custom"), start, start_seq_len, events)
    params = dict(table)
    name = params.pop("name", "scratch")
    return named_schedule(name, target, train, **params)


def _event(table: dict[str, Any], train: TrainConfig, index: int) -> GrowthEvent:
    where = f"[[schedule.grow]] #{index + 1}"
    anchors = [k for k in ("at", "step", "tokens") if k in table]
    if len(anchors) != 1:
        raise TrainConfigError(f"{where}: give exactly one of at (fraction), step or tokens")
    anchor = table.pop(anchors[0])
    number = isinstance(anchor, int | float) and not isinstance(anchor, bool)
    if anchors[0] == "at" and not (number and is_finite(anchor)):
        raise TrainConfigError(f"{where}: at must be a fraction of the steps, got {anchor!r}")
    if anchors[0] != "at" and not (number and isinstance(anchor, int)):
        raise TrainConfigError(f"{where}: {anchors[0]} must be an integer, got {anchor!r}")
    if anchors[0] == "at":
        step = round(anchor * train.steps)
    elif anchors[0] == "tokens":
        step = -(-anchor // (train.batch_size * train.seq_len))
    else:
        step = anchor
    sizes = {k: table.pop(k) for k in list(table) if k in SIZE_FIELDS}
    event_fields = {k: table.pop(k) for k in list(table) if k in _EVENT_FIELDS}
    options = {k: table.pop(k) for k in list(table) if k in _OPTION_FIELDS}
    if table:
        allowed = ("at", "step", "tokens", *SIZE_FIELDS, *_EVENT_FIELDS, *_OPTION_FIELDS)
        raise TrainConfigError(
            f"{where}: unknown key(s) {sorted(table)}; allowed: {', '.join(allowed)}"
        )
    if "where" in options and isinstance(options["where"], list):
        options["where"] = tuple(options["where"])
    if "candidates" in event_fields:
        candidates = event_fields["candidates"]
        if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
            raise TrainConfigError(
                f"{where}: candidates must be a list of names, got {candidates!r}"
            )
        event_fields["candidates"] = tuple(candidates)
    try:
        return GrowthEvent(step=step, sizes=sizes, options=GrowthOptions(**options), **event_fields)
    except (GrowthError, TypeError) as error:
        raise TrainConfigError(f"{where}: {error}") from None
