"""``GrowthCallback``: a growth schedule inside a Lightning ``Trainer`` (``lightning.pytorch``).

The LightningModule holds the model to grow under ``attribute`` (default ``model``): a
growformer ``Transformer`` or a transformers GPT-2, Llama, Qwen2 or Mistral model, built at the
schedule's start size. At the beginning of each scheduled step the callback grows it in place,
rewrites the run's optimizer (``trainer.optimizers``; the ``LightningOptimizer`` wrappers and
the schedulers of ``trainer.lr_scheduler_configs`` hold the same object and stay valid) and
logs the event with ``pl_module.log``. Checkpoints written afterwards hold the grown weights;
``trainer.fit(module, ckpt_path=...)`` with a start-size module grows it to the checkpoint's
stage before the weights load (the module's ``on_load_checkpoint`` hook is wrapped for the
duration of ``fit``). One process only.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch import nn

from growformer.integrations.driver import DrivenCallback, GrowthDriver
from growformer.integrations.plan import GrowthCallbackError, ScheduleSource

__all__ = ["GrowthCallback", "GrowthCallbackError"]


class GrowthCallback(DrivenCallback, pl.Callback):
    """Grow ``pl_module.<attribute>`` on ``schedule``: a ``growformer.train.schedule.Schedule``
    or a TOML run file as ``growformer train`` reads it (fractions of the run's optimizer
    steps, ``trainer.estimated_stepping_batches``).

    A growth event at step ``k`` runs in ``on_train_batch_start`` when
    ``trainer.global_step == k``. ``on_train_start`` checks the model's kind and start size,
    every stage against the model's format, one optimizer holding only the model's
    parameters, and (for ``rewarm_steps``) one ``LambdaLR`` stepped every step; misuse raises
    ``GrowthCallbackError`` before any step. ``events``, ``config`` and ``seq_len`` as in
    ``GrowthDriver``.
    """

    def __init__(self, schedule: ScheduleSource, *, attribute: str = "model") -> None:
        self.driver = GrowthDriver(schedule)
        self.attribute = attribute

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        model = self._model(pl_module)
        vars(pl_module).pop("on_load_checkpoint", None)  # left by a fit that raised
        load = pl_module.on_load_checkpoint

        def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
            steps = trainer.estimated_stepping_batches
            self.driver.catch_up(model, int(steps), checkpoint["global_step"])
            load(checkpoint)

        pl_module.on_load_checkpoint = on_load_checkpoint  # type: ignore[method-assign]

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            vars(pl_module).pop("on_load_checkpoint", None)
        self.driver.finish()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            raise GrowthCallbackError(
                f"the Lightning growth callback runs on one process (world size "
                f"{trainer.world_size}); use the transformers Trainer or growformer's trainer "
                "for several"
            )
        stepped = [
            c.scheduler
            for c in trainer.lr_scheduler_configs
            if c.interval == "step" and c.frequency == 1
        ]
        self.driver.start(
            self._model(pl_module),
            list(trainer.optimizers),
            stepped,
            int(trainer.estimated_stepping_batches),
            trainer.global_step,
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        grown = self.driver.grow(self._model(pl_module), trainer.optimizers[0], trainer.global_step)
        if grown is None:
            return
        stage, record = grown
        pl_module.log_dict(
            {
                "growth_stage": float(stage.index),
                "growth_parameters": float(record["params_after"]),
            },
            on_step=True,
            on_epoch=False,
        )

    def _model(self, pl_module: pl.LightningModule) -> nn.Module:
        model = getattr(pl_module, self.attribute, None)
        if not isinstance(model, nn.Module):
            raise GrowthCallbackError(
                f"{type(pl_module).__name__}.{self.attribute} is not a model (set the "
                "callback's attribute= to the name of the module to grow)"
            )
        return model
