"""Optimizers and learning-rate schedulers of other frameworks, through a growth event.

Frameworks wrap the torch optimizer (accelerate's ``AcceleratedOptimizer``, Lightning's
``LightningOptimizer``): the wrapped one is rewritten in place, so every wrapper and the
scheduler (which holds the optimizer and its param-group dicts) stay valid; the rewrite is
``growformer.optimizer.carry_state_``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from growformer.integrations.plan import GrowthCallbackError


def unwrap_optimizer(optimizer: object) -> torch.optim.Optimizer:
    """The torch optimizer inside framework wrappers (each keeps it as ``.optimizer``)."""
    while not isinstance(optimizer, torch.optim.Optimizer):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None:
            raise GrowthCallbackError(
                f"{type(optimizer).__name__} is not a torch optimizer and wraps none"
            )
        optimizer = inner
    return optimizer


def check_optimizers(optimizers: Iterable[object], model: nn.Module) -> torch.optim.Optimizer:
    """The one torch optimizer of a run, checked to hold only ``model``'s parameters (those are
    the ones growth can map). Raises ``GrowthCallbackError`` otherwise."""
    found = [unwrap_optimizer(o) for o in optimizers if o is not None]
    if len(found) != 1:
        raise GrowthCallbackError(
            f"the run has {len(found)} optimizers; the growth callback carries exactly one "
            "through each growth event"
        )
    optimizer = found[0]
    owned = {id(p) for p in model.parameters()}
    for index, group in enumerate(optimizer.param_groups):
        foreign = sum(id(p) not in owned for p in group["params"])
        if foreign:
            raise GrowthCallbackError(
                f"optimizer param group {index} holds {foreign} tensor(s) that are not "
                f"parameters of the grown model ({type(model).__name__}); growth can only map "
                "the model's own parameters"
            )
    return optimizer


class Rewarm:
    """Re-warmup after growth for a ``LambdaLR`` stepped once per optimizer step: from step
    ``start`` the scheduler's factor is multiplied by ``min(1, (step - start + 1) / steps)``, as
    ``growformer.train.lr.lr_at`` does. The latest growth with ``rewarm_steps`` sets the window.

    The scheduler's own factors are kept at construction; the wrapped ones are plain functions,
    which ``LambdaLR.state_dict`` leaves out, so checkpoints stay loadable and a resumed run
    sets the window again (``set``).
    """

    def __init__(self, scheduler: object) -> None:
        if not isinstance(scheduler, LambdaLR):
            raise GrowthCallbackError(
                "rewarm_steps needs a LambdaLR scheduler stepped every optimizer step (the "
                "transformers Trainer's default schedules are); the run has "
                + ("none" if scheduler is None else type(scheduler).__name__)
            )
        self.scheduler = scheduler
        self.factors = list(scheduler.lr_lambdas)

    def set(self, start: int, steps: int) -> None:
        """Open the window at ``start`` and apply it to the current learning rates."""

        def wrap(factor: Callable[[int], float]) -> Callable[[int], float]:
            def rewarmed(step: int) -> float:
                ramp = min(1.0, (step - start + 1) / steps) if step >= start else 1.0
                return factor(step) * ramp

            return rewarmed

        scheduler = self.scheduler
        scheduler.lr_lambdas = [wrap(f) for f in self.factors]
        step = scheduler.last_epoch
        rates = [
            base * f(step) for base, f in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
        ]
        for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        scheduler._last_lr = rates
