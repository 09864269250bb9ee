"""Optimizers and learning-rate schedulers of other frameworks, through a growth event.

Frameworks wrap the torch optimizer (accelerate's ``AcceleratedOptimizer``, Lightning's
``LightningOptimizer``): the wrapped one is rewritten in place, so every wrapper and the
scheduler (which holds the optimizer and its param-group dicts) stay valid.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from growformer.integrations.plan import GrowthCallbackError
from growformer.optimizer import MOMENT_POWERS, STATE_POLICIES

# (old tensors by parameter name, power) -> new tensors by parameter name
MomentCarrier = Callable[[Mapping[str, Tensor], int], dict[str, Tensor]]


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


def carry_state_(
    optimizer: torch.optim.Optimizer,
    old_params: Mapping[str, nn.Parameter],
    new_params: Mapping[str, nn.Parameter],
    sources: Mapping[str, str],
    carry_moments: MomentCarrier,
    *,
    policy: str = "transform",
) -> None:
    """Point ``optimizer`` at ``new_params`` and carry its state, between two steps.

    ``sources``: new parameter name → the old parameter it grew from; a new parameter joins the
    param group of its source (and is left out, as its source was, when the optimizer does not
    hold it). ``carry_moments`` maps one moment of every old parameter to the new ones (a first
    moment with power 1, a second with power 2; see ``growformer.optimizer.MOMENT_POWERS``);
    other per-parameter entries (``step``) are kept from the source. ``policy="reset"`` drops
    the state. An unknown per-parameter tensor raises ``ValueError`` before anything changes.
    """
    if policy not in STATE_POLICIES:
        raise ValueError(f"policy must be one of {', '.join(STATE_POLICIES)}; got {policy!r}")
    group_of = {id(p): g for g, group in enumerate(optimizer.param_groups) for p in group["params"]}
    held = {
        name: group_of[id(old_params[source])]
        for name, source in sources.items()
        if id(old_params[source]) in group_of
    }
    new_state: defaultdict[Tensor, dict] = defaultdict(dict)
    if policy == "transform":
        moments = _moment_keys(optimizer, old_params)
        for key in moments:
            old = {
                name: optimizer.state[p][key]
                for name, p in old_params.items()
                if key in optimizer.state.get(p, {})
            }
            for name, tensor in carry_moments(old, MOMENT_POWERS[key]).items():
                if name in held:
                    new_state[new_params[name]][key] = tensor
        for name in held:
            for key, value in optimizer.state.get(old_params[sources[name]], {}).items():
                if key not in moments:
                    copied = value.clone() if isinstance(value, Tensor) else value
                    new_state[new_params[name]][key] = copied
    groups: list[list[nn.Parameter]] = [[] for _ in optimizer.param_groups]
    for name, group in held.items():
        groups[group].append(new_params[name])
    for group, params in zip(optimizer.param_groups, groups, strict=True):
        group["params"] = params
    optimizer.state = new_state


def _moment_keys(optimizer: torch.optim.Optimizer, params: Mapping[str, nn.Parameter]) -> set[str]:
    """The state keys holding a tensor shaped like its parameter; ``ValueError`` for one with no
    known transform (or a per-parameter tensor of another shape)."""
    keys: set[str] = set()
    for name, param in params.items():
        for key, value in optimizer.state.get(param, {}).items():
            if not isinstance(value, Tensor) or value.ndim == 0:
                continue
            if key not in MOMENT_POWERS or value.shape != param.shape:
                raise ValueError(
                    f"optimizer state {key!r} of {name} (shape {tuple(value.shape)}) has no known "
                    f"transform (known: {sorted(MOMENT_POWERS)}); use state_policy='reset'"
                )
            keys.add(key)
    return keys


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
