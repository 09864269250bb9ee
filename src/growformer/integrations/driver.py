"""The framework-independent half of the growth callbacks: plan, check, grow, report.

A callback calls ``start`` when training begins (after its framework has built the optimizer
and scheduler and restored a checkpoint), ``grow`` at the beginning of every optimizer step,
and ``finish`` when training ends; ``catch_up`` grows a freshly built start-size model to the
stage of a checkpoint before the framework loads the checkpoint's weights into it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch
from torch import nn

from growformer.config import ModelConfig
from growformer.integrations import live
from growformer.integrations.folding import SequenceFolding
from growformer.integrations.optim import Rewarm, check_optimizers, unwrap_optimizer
from growformer.integrations.plan import (
    GrowthCallbackError,
    GrowthPlan,
    ScheduleSource,
    check_sizes,
    check_source,
    plan,
)
from growformer.optimizer import UncarriableStateError, check_carriable
from growformer.train.schedule import Stage

log = logging.getLogger("growformer.integrations")


class GrowthDriver:
    """Runs a schedule (a ``Schedule`` or a TOML run file, see ``plan.plan``) on a live model.

    After ``start``: ``config`` is the model's canonical config, ``seq_len`` the current
    stage's training sequence length, ``events`` one dict per growth (step, stage, method,
    state policy, configs and parameter counts before and after, seconds it took).
    """

    def __init__(self, schedule: ScheduleSource) -> None:
        self.source = check_source(schedule)
        self.events: list[dict[str, Any]] = []
        self.plan: GrowthPlan | None = None
        self.config: ModelConfig | None = None
        self.stage = 0
        self._folding: SequenceFolding | None = None
        self._rewarm: Rewarm | None = None
        self._state_checked = False

    @property
    def seq_len(self) -> int:
        """The training sequence length of the current stage."""
        return self._plan().stages[self.stage].seq_len

    def catch_up(
        self,
        model: nn.Module,
        steps: int,
        step: int,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        """Grow ``model``, built at the schedule's start size, to the stage it is at before
        step ``step``; its weights (and the state of ``optimizer``, an optimizer already built
        on the start-size model, which is pointed at the grown parameters) are about to be
        replaced by a checkpoint's."""
        config = live.model_config(model)
        growth = plan(self.source, config, steps)
        check_sizes(config, growth.sizes[0], "at the schedule's start size")
        for stage in growth.stages[1 : growth.applied(step) + 1]:
            if growth.sizes[stage.index] != growth.sizes[stage.index - 1]:
                assert stage.event is not None
                live.grow_(model, optimizer, dataclasses.replace(stage.event, state_policy="reset"))

    def start(
        self,
        model: nn.Module,
        optimizers: list[object],
        schedulers: list[object],
        steps: int,
        step: int,
    ) -> None:
        """Plan for a run of ``steps`` steps now before step ``step`` and check everything a
        growth will need, so that misuse fails before any step: the model's kind and sizes
        (the first stage, or a resumed run's stage), every stage storable in the model's
        format, one optimizer holding only the model's parameters, a ``LambdaLR`` when an event
        re-warms, and a transformers model when stages change the sequence length."""
        self.finish()
        config = live.model_config(model)
        growth = plan(self.source, config, steps)
        stage = growth.applied(step)
        where = "at the schedule's start size" if step == 0 else f"at its stage for step {step}"
        hint = "" if step == 0 else " (grow it to the checkpoint's stage before loading it)"
        try:
            check_sizes(config, growth.sizes[stage], where)
        except GrowthCallbackError as error:
            raise GrowthCallbackError(f"{error}{hint}") from None
        for sizes in growth.sizes:
            live.check_storable(model, sizes)
        check_optimizers(optimizers, model)
        self._rewarm = _rewarm(growth, stage, schedulers)
        if any(s.seq_len < growth.final_seq_len for s in growth.stages):
            if not live.is_transformers_model(model):
                raise GrowthCallbackError(
                    "this schedule trains early stages on shorter sequences, which the callback "
                    "applies by folding the inputs and labels of a transformers model; a "
                    "growformer Transformer gets its targets outside the model: use a schedule "
                    "without seq_len stages"
                )
            self._folding = SequenceFolding(model)
        self.plan, self.config, self.stage = growth, config, stage
        self._set_folding()

    def grow(
        self, model: nn.Module, optimizer: object, step: int
    ) -> tuple[Stage, dict[str, Any]] | None:
        """Apply the growth due before step ``step``, if any; returns its stage and event
        record. ``optimizer`` may be a framework wrapper; its torch optimizer is rewritten."""
        growth = self._plan()
        self._check_state(growth, model, optimizer)
        stage = growth.due(step)
        if stage is None or stage.index <= self.stage:
            return None
        event = stage.event
        assert event is not None and self.config is not None
        started = time.perf_counter()
        before, params_before = self.config, live.num_parameters(model)
        if growth.sizes[stage.index] != growth.sizes[stage.index - 1]:
            live.grow_(model, check_optimizers([optimizer], model), event)
            self.config = live.model_config(model)
            check_sizes(self.config, growth.sizes[stage.index], f"at stage {stage.index}")
        self.stage = stage.index
        if event.rewarm_steps and self._rewarm is not None:
            self._rewarm.set(step, event.rewarm_steps)
        self._set_folding()
        record = {
            "step": step,
            "stage": stage.index,
            "method": event.method,
            "state_policy": event.state_policy,
            "seq_len": stage.seq_len,
            "config_before": before.to_dict(),
            "config_after": self.config.to_dict(),
            "params_before": params_before,
            "params_after": live.num_parameters(model),
            "seconds": time.perf_counter() - started,
        }
        self.events.append(record)
        log.info(
            "step %d: grew to stage %d (%s), %d -> %d parameters",
            step,
            stage.index,
            ", ".join(f"{k}={v}" for k, v in event.sizes.items()) or f"seq_len={stage.seq_len}",
            record["params_before"],
            record["params_after"],
        )
        return stage, record

    def _check_state(self, growth: GrowthPlan, model: nn.Module, optimizer: object) -> None:
        """Once the optimizer has state (after the first step), check that the growths to
        come that carry it can: an optimizer whose state no transform fits (Adafactor's
        factored moments) fails then, not at the first growth."""
        if self._state_checked:
            return
        torch_optimizer = unwrap_optimizer(optimizer)
        if not torch_optimizer.state:
            return
        self._state_checked = True
        later = [s.event for s in growth.stages[self.stage + 1 :] if s.event is not None]
        if any(event.state_policy == "transform" for event in later):
            try:
                check_carriable(torch_optimizer, dict(model.named_parameters()))
            except UncarriableStateError as error:
                raise GrowthCallbackError(
                    f"the optimizer's state cannot be carried through the schedule's growth: "
                    f"{error.problem}; give the growth events state_policy='reset' (a "
                    "GrowthEvent's field, or state_policy = \"reset\" in a run file's growth "
                    "entries) to drop it at each growth"
                ) from None

    def finish(self) -> None:
        """Remove the folding hook (the model is left as grown)."""
        if self._folding is not None:
            self._folding.remove()
            self._folding = None

    def _set_folding(self) -> None:
        if self._folding is not None:
            growth = self._plan()
            short = self.seq_len < growth.final_seq_len
            self._folding.seq_len = self.seq_len if short else None

    def _plan(self) -> GrowthPlan:
        if self.plan is None:
            raise RuntimeError("the growth driver has not started: training has not begun")
        return self.plan


class DrivenCallback:
    """What a framework's growth callback shows of its ``GrowthDriver`` (``self.driver``):
    ``events``, ``config`` and ``seq_len``, as the driver documents them."""

    driver: GrowthDriver

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.driver.events

    @property
    def config(self) -> ModelConfig | None:
        return self.driver.config

    @property
    def seq_len(self) -> int:
        return self.driver.seq_len


def _rewarm(growth: GrowthPlan, stage: int, schedulers: list[object]) -> Rewarm | None:
    """The re-warmup of a run whose events re-warm (None otherwise), its window set for a run
    resumed after such an event."""
    rewarming = [s for s in growth.stages[1:] if s.event and s.event.rewarm_steps]
    if not rewarming:
        return None
    rewarm = Rewarm(next((s for s in schedulers if s is not None), None))
    opened = [s for s in rewarming if s.index <= stage]
    if opened:
        assert opened[-1].event is not None
        rewarm.set(opened[-1].start_step, opened[-1].event.rewarm_steps)
    return rewarm
