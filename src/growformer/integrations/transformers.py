"""``GrowthCallback``: a growth schedule inside a transformers ``Trainer``.

The callback grows the Trainer's model (GPT-2, Llama, Qwen2 or Mistral, built by the user at
the schedule's start size) in place at the beginning of each scheduled step, rewrites the
Trainer's optimizer in place (moments through the resize record, or reset), keeps the
learning-rate scheduler's position (a ``LambdaLR``, with optional re-warmup), rebuilds a
``DistributedDataParallel`` wrapper, and logs the event with ``Trainer.log`` (so it reaches
``state.log_history`` and every reporting integration). Saving afterwards writes the grown
model: ``from_pretrained`` loads it at the grown size.

Resuming: the Trainer loads a checkpoint's weights before any callback runs, so the model must
already be at the checkpoint's stage; ``prepare_resume`` grows it there. Example::

    growth = GrowthCallback(schedule).attach(trainer)
    trainer.train()
    # later, a new Trainer around a new start-size model:
    growth = GrowthCallback(schedule).attach(trainer)
    trainer.train(resume_from_checkpoint=growth.prepare_resume("out/checkpoint-40"))
"""

from __future__ import annotations

import os
from typing import Any

from torch.nn.parallel import DistributedDataParallel
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint

from growformer.integrations.ddp import rewrap_
from growformer.integrations.driver import DrivenCallback, GrowthDriver
from growformer.integrations.optim import unwrap_optimizer
from growformer.integrations.plan import GrowthCallbackError, ScheduleSource

__all__ = ["GrowthCallback", "GrowthCallbackError"]


class GrowthCallback(DrivenCallback, TrainerCallback):
    """Grow a ``Trainer``'s model on ``schedule``: a ``growformer.train.schedule.Schedule`` or a
    TOML run file as ``growformer train`` reads it (its fractions are of the Trainer's
    ``max_steps``; its ``[model]`` sizes are the target).

    Register it with ``attach(trainer)``, which also gives it the Trainer (its optimizer,
    scheduler, DDP wrapper and ``log``). A growth event at step ``k`` runs at the beginning of
    the step when ``state.global_step == k``, before that step's forward pass. The model's
    current sizes must be the schedule's first stage, with one optimizer holding only the
    model's parameters: ``on_train_begin`` checks this, and every stage against the model's
    format, and raises ``GrowthCallbackError`` before any step. Stages with a shorter
    ``seq_len`` fold each training row into rows of that length (``folding``). The Trainer may
    run on one process or several (DDP); compiled, DataParallel, FSDP and DeepSpeed models are
    refused.

    ``events``: one dict per growth (see ``GrowthDriver``); ``config``: the model's canonical
    config; ``seq_len``: the current stage's training sequence length.
    """

    def __init__(self, schedule: ScheduleSource) -> None:
        self.driver = GrowthDriver(schedule)
        self.trainer: Trainer | None = None

    def attach(self, trainer: Trainer) -> GrowthCallback:
        """Add this callback to ``trainer`` and keep the Trainer; returns ``self``."""
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    def prepare_resume(self, checkpoint: str | os.PathLike | bool) -> str:
        """Grow the Trainer's start-size model to the stage of ``checkpoint`` (a checkpoint
        folder, or True for the last one in ``args.output_dir``) and return the folder, for
        ``trainer.train(resume_from_checkpoint=...)``. Call it before ``train``: the Trainer
        loads the checkpoint's weights before any callback runs. An optimizer given to the
        Trainer is pointed at the grown parameters (its state comes from the checkpoint)."""
        trainer = self._trainer()
        if checkpoint is True:
            found = get_last_checkpoint(trainer.args.output_dir)
            if found is None:
                raise ValueError(f"no checkpoint in {trainer.args.output_dir}")
            checkpoint = found
        path = os.fspath(checkpoint)
        state = TrainerState.load_from_json(os.path.join(path, TRAINER_STATE_NAME))
        optimizer = unwrap_optimizer(trainer.optimizer) if trainer.optimizer else None
        self.driver.catch_up(trainer.model, state.max_steps, state.global_step, optimizer)
        return path

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        trainer = self._trainer()
        if args.neftune_noise_alpha is not None:
            raise GrowthCallbackError(
                "neftune_noise_alpha: NEFTune's noise is a hook on the input embedding, which "
                "growth replaces, so the noise would stop at the first growth; unset it"
            )
        wrapper = trainer.model_wrapped
        bare = wrapper is trainer.model
        if not bare and not (
            isinstance(wrapper, DistributedDataParallel) and wrapper.module is trainer.model
        ):
            raise GrowthCallbackError(
                f"the Trainer runs the model inside {type(wrapper).__name__}; growth supports a "
                "bare model or one wrapped in DistributedDataParallel"
            )
        self.driver.start(
            trainer.model,
            [trainer.optimizer],
            [trainer.lr_scheduler],
            state.max_steps,
            state.global_step,
        )

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        trainer = self._trainer()
        grown = self.driver.grow(trainer.model, trainer.optimizer, state.global_step)
        if grown is None:
            return
        stage, record = grown
        if trainer.model_wrapped is not trainer.model:
            rewrap_(trainer.model_wrapped)
        trainer.log(
            {
                "growth_stage": stage.index,
                "growth_parameters": record["params_after"],
                "growth_seconds": record["seconds"],
            }
        )

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.driver.finish()

    def _trainer(self) -> Trainer:
        if self.trainer is None:
            raise GrowthCallbackError(
                "GrowthCallback needs its Trainer: register it with "
                "GrowthCallback(schedule).attach(trainer), not Trainer(callbacks=[...])"
            )
        return self.trainer
