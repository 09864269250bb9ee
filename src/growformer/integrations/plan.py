"""A schedule planned against a live model: the model the user built is the first stage.

The target of the run is the model's own config with the sizes the schedule's events grow to
(for a TOML run file: with the size fields of its ``[model]`` target, all but ``max_seq_len``,
which stays the model's). ``Schedule.plan`` then validates the schedule against that target
and the training run's step count, and the model must match the first stage.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from growformer.config import SIZE_FIELDS, ConfigError, ModelConfig
from growformer.expand import GrowthError, resolve_target
from growformer.train.config import TrainConfig, TrainConfigError
from growformer.train.run_config import load_run_file
from growformer.train.schedule import Schedule, Stage

ScheduleSource = Schedule | str | os.PathLike


class GrowthCallbackError(ValueError):
    """A schedule, model or optimizer a growth callback cannot work with; raised when training
    begins, before any step, with a message naming what is wrong."""


@dataclass(frozen=True)
class GrowthPlan:
    """The stages of a run (``Schedule.plan``), the model sizes each stage has once grown (the
    sizes growth produces: ``resolve_target`` of the previous stage and the event), and the
    final training sequence length."""

    stages: tuple[Stage, ...]
    sizes: tuple[ModelConfig, ...]
    final_seq_len: int

    def applied(self, step: int) -> int:
        """The index of the stage the model is at before step ``step`` (0-based) begins: a
        stage starting at ``step`` grows at the beginning of that step."""
        return max(s.index for s in self.stages if s.start_step < step or s.index == 0)

    def due(self, step: int) -> Stage | None:
        """The stage that begins at step ``step`` (grow before its batch), if any."""
        return next((s for s in self.stages[1:] if s.start_step == step), None)


_ANY_STEPS = 1 << 40  # a step count past every growth step a run file can name


def check_source(source: ScheduleSource) -> ScheduleSource:
    """``source`` validated as far as it can be without the model and the run's step count (the
    trainer's ``max_steps`` replaces the run file's): a ``Schedule``, or a TOML run file that
    ``growformer train`` accepts. Raises ``TrainConfigError``."""
    if isinstance(source, Schedule):
        return source
    if isinstance(source, (str, os.PathLike)):
        load_run_file(source, train_overrides={"steps": _ANY_STEPS})
        return Path(source)
    raise TypeError(f"schedule must be a Schedule or a TOML run file path, got {source!r}")


def plan(source: ScheduleSource, config: ModelConfig, steps: int) -> GrowthPlan:
    """Plan ``source`` for a run of ``steps`` optimizer steps whose model is now ``config``
    (any stage of the plan: its event sizes are absolute). A run file's fractions (``at``) are
    fractions of ``steps``. Raises ``GrowthCallbackError`` for a schedule that cannot apply."""
    try:
        schedule, target, train = _resolve(source, config, steps)
        stages = schedule.plan(target, train)
    except (TrainConfigError, ConfigError) as error:
        raise GrowthCallbackError(f"the schedule does not apply to this model: {error}") from None
    chosen = [e.step for e in schedule.events if e.method == "lag"]
    if chosen:
        raise GrowthCallbackError(
            f"the growth at step {chosen[0]} uses method 'lag', which trains forks of the model "
            "on candidate growths; that needs growformer's own trainer"
        )
    if schedule.depth_sampling is not None:
        raise GrowthCallbackError(
            f"depth_sampling={schedule.depth_sampling!r} (weight-shared deeper forward passes) "
            "needs growformer's own trainer; use a schedule without it"
        )
    sizes = [stages[0].config]
    for stage in stages[1:]:
        assert stage.event is not None
        try:
            sizes.append(resolve_target(sizes[-1], stage.event.sizes))
        except GrowthError as error:
            raise GrowthCallbackError(f"stage {stage.index}: {error}") from None
    return GrowthPlan(tuple(stages), tuple(sizes), train.seq_len)


def check_sizes(config: ModelConfig, expected: ModelConfig, where: str) -> None:
    """Raise ``GrowthCallbackError`` naming every size field where ``config`` differs."""
    differing = config.size_differences(expected, "expected")
    if differing:
        raise GrowthCallbackError(f"the model is not {where}: {differing}")


def _resolve(
    source: ScheduleSource, config: ModelConfig, steps: int
) -> tuple[Schedule, ModelConfig, TrainConfig]:
    if isinstance(source, Schedule):
        sizes: dict[str, int] = {}
        for event in source.events:
            sizes.update(event.sizes)
        seq_lens = [e.seq_len for e in source.events if e.seq_len] or [source.start_seq_len]
        seq_len = seq_lens[-1] or config.max_seq_len
        return source, _sized(config, sizes), TrainConfig(steps=steps, seq_len=seq_len)
    spec = load_run_file(source, train_overrides={"steps": steps})
    sizes = {name: getattr(spec.target, name) for name in SIZE_FIELDS if name != "max_seq_len"}
    return spec.schedule, _sized(config, sizes), spec.train


def _sized(config: ModelConfig, sizes: Mapping[str, int]) -> ModelConfig:
    try:
        return config.replace(**sizes)
    except (ConfigError, TypeError) as error:
        raise TrainConfigError(f"target sizes {dict(sizes)}: {error}") from None
