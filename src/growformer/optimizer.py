"""Carry a torch optimizer through a resize: its param groups and per-parameter state.

A first moment (Adam's ``exp_avg``, SGD's ``momentum_buffer``) follows the gradient, so it is
carried times ``grad_scale``; a second moment (``exp_avg_sq``, ``max_exp_avg_sq``) times
``grad_scale**2``. New entries start at zero; scalars such as ``step`` are kept.

``carry_state_`` is the general form (moments mapped by any ``MomentCarrier``, e.g. through a
framework's own parameter names); ``carry_optimizer_state_`` applies it to a ``ResizeRecord``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from growformer.resize import ResizeRecord

MOMENT_POWERS: dict[str, int] = {
    "exp_avg": 1,
    "exp_avg_sq": 2,
    "max_exp_avg_sq": 2,
    "momentum_buffer": 1,
}
STATE_POLICIES = ("transform", "reset")


class UncarriableStateError(ValueError):
    """Optimizer state that no moment transform fits. ``problem`` says what is wrong without
    the advice (``moment_powers`` or the ``reset`` policy) that ``str()`` adds, for callers whose
    users reach those options by another name."""

    def __init__(self, problem: str, advice: str) -> None:
        super().__init__(f"{problem}; {advice}")
        self.problem = problem


# (old tensors by parameter name, power) -> new tensors by parameter name
MomentCarrier = Callable[[Mapping[str, Tensor], int], dict[str, Tensor]]


def carry_optimizer_state_(
    optimizer: torch.optim.Optimizer,
    old_params: Mapping[str, nn.Parameter],
    new_params: Mapping[str, nn.Parameter],
    record: ResizeRecord,
    *,
    policy: str = "transform",
    moment_powers: Mapping[str, int] | None = None,
) -> None:
    """Point ``optimizer`` at ``new_params`` and carry its state through ``record``.

    Each new parameter joins the param group of its record source; one whose source the
    optimizer does not hold (a frozen weight) is left out as its source was. ``policy="reset"``
    drops all state instead (as a fresh optimizer would, keeping the param groups' settings).
    ``moment_powers`` adds state keys beyond ``MOMENT_POWERS``; a per-parameter tensor with no
    known power, or not shaped like its parameter, raises ``ValueError`` before anything changes.
    """

    def carry_moments(old: Mapping[str, Tensor], power: int) -> dict[str, Tensor]:
        return {
            name: resize.carry(old[resize.source], "grad", power)
            for name, resize in record.params.items()
            if resize.source in old
        }

    sources = {name: record[name].source for name in new_params}
    carry_state_(
        optimizer,
        old_params,
        new_params,
        sources,
        carry_moments,
        policy=policy,
        moment_powers=moment_powers,
    )


def carry_state_(
    optimizer: torch.optim.Optimizer,
    old_params: Mapping[str, nn.Parameter],
    new_params: Mapping[str, nn.Parameter],
    sources: Mapping[str, str],
    carry_moments: MomentCarrier,
    *,
    policy: str = "transform",
    moment_powers: Mapping[str, int] | None = None,
) -> None:
    """Point ``optimizer`` at ``new_params`` and carry its state, between two steps.

    ``sources``: new parameter name → the old parameter it grew from; a new parameter joins the
    param group of its source (and is left out, as its source was, when the optimizer does not
    hold it). ``carry_moments`` maps one moment of every old parameter to the new ones (a first
    moment with power 1, a second with power 2, as ``MOMENT_POWERS`` and ``moment_powers``
    say); other per-parameter entries (``step``) are kept from the source. ``policy="reset"``
    drops the state (keeping the param groups' settings). Parameters the optimizer holds that
    are not in ``old_params`` (another module's) stay in their group, after the resized ones,
    with their state, under either policy. A per-parameter tensor with no known power, or not
    shaped like its parameter, raises ``ValueError`` before anything changes.
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
        carried = {
            key: carry_moments(_moments(optimizer, old_params, key), power)
            for key, power in _moment_powers(optimizer, old_params, moment_powers).items()
        }
        for name in held:
            for key, value in optimizer.state.get(old_params[sources[name]], {}).items():
                if _is_moment(value):
                    new_state[new_params[name]][key] = carried[key][name]
                else:
                    copied = value.clone() if isinstance(value, Tensor) else value
                    new_state[new_params[name]][key] = copied
    groups: list[list[nn.Parameter]] = [[] for _ in optimizer.param_groups]
    for name, group in held.items():
        groups[group].append(new_params[name])
    resized = {id(p) for p in old_params.values()}
    for group, params in zip(optimizer.param_groups, groups, strict=True):
        others = [p for p in group["params"] if id(p) not in resized]
        for p in others:
            if p in optimizer.state:
                new_state[p] = optimizer.state[p]
        group["params"] = params + others
    optimizer.state = new_state


def check_carriable(
    optimizer: torch.optim.Optimizer,
    params: Mapping[str, nn.Parameter],
    moment_powers: Mapping[str, int] | None = None,
) -> None:
    """Raise the ``ValueError`` that carrying ``optimizer``'s current state through a growth
    of ``params`` would raise (a per-parameter tensor with no known power, or not shaped like
    its parameter), without changing anything. An optimizer that has not stepped yet has no
    state to check."""
    _moment_powers(optimizer, params, moment_powers)


def _is_moment(value: object) -> bool:
    """A per-parameter entry: a tensor with dimensions (``step`` is a scalar)."""
    return isinstance(value, Tensor) and value.ndim > 0


def _moments(
    optimizer: torch.optim.Optimizer, params: Mapping[str, nn.Parameter], key: str
) -> dict[str, Tensor]:
    """The ``key`` entries of the parameters that have one, by parameter name."""
    return {
        name: optimizer.state[p][key]
        for name, p in params.items()
        if key in optimizer.state.get(p, {})
    }


def _moment_powers(
    optimizer: torch.optim.Optimizer,
    params: Mapping[str, nn.Parameter],
    moment_powers: Mapping[str, int] | None,
) -> dict[str, int]:
    """The state keys of ``params`` that hold moments, with their powers (``MOMENT_POWERS``
    updated by ``moment_powers``); ``UncarriableStateError`` for a per-parameter tensor with no
    known power or not shaped like its parameter."""
    powers = {**MOMENT_POWERS, **(moment_powers or {})}
    keys: dict[str, int] = {}
    for name, param in params.items():
        for key, value in optimizer.state.get(param, {}).items():
            if not _is_moment(value):
                continue
            if value.shape != param.shape:
                raise UncarriableStateError(
                    f"optimizer state {key!r} of {name} has shape {tuple(value.shape)}, not its "
                    f"parameter's {tuple(param.shape)}: no moment transform applies",
                    "use the 'reset' state policy",
                )
            if key not in powers:
                raise UncarriableStateError(
                    f"optimizer state {key!r} of {name} has no known transform (known: "
                    f"{sorted(powers)})",
                    f"pass moment_powers={{{key!r}: 1 or 2}} or use the 'reset' state policy",
                )
            keys[key] = powers[key]
    return keys
