"""Carry a torch optimizer through a resize: its param groups and per-parameter state.

A first moment (Adam's ``exp_avg``, SGD's ``momentum_buffer``) follows the gradient, so it is
carried times ``grad_scale``; a second moment (``exp_avg_sq``, ``max_exp_avg_sq``) times
``grad_scale**2``. New entries start at zero; scalars such as ``step`` are kept.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

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
    ``moment_powers`` adds state keys beyond ``MOMENT_POWERS``; an unknown per-parameter tensor
    raises ``ValueError`` before anything changes.
    """
    if policy not in STATE_POLICIES:
        raise ValueError(f"policy must be one of {', '.join(STATE_POLICIES)}; got {policy!r}")
    powers = {**MOMENT_POWERS, **(moment_powers or {})}
    group_of = {id(p): g for g, group in enumerate(optimizer.param_groups) for p in group["params"]}
    old_ids = {name: id(p) for name, p in old_params.items()}
    new_groups: list[list[nn.Parameter]] = [[] for _ in optimizer.param_groups]
    new_state: defaultdict[Tensor, dict] = defaultdict(dict)
    for name, param in new_params.items():
        source = record[name].source
        group = group_of.get(old_ids[source])
        if group is None:
            continue
        new_groups[group].append(param)
        old_state = optimizer.state.get(old_params[source])
        if policy == "transform" and old_state:
            new_state[param] = _carry_param_state(
                old_state, old_params[source], record[name], powers, name
            )
    for group, params in zip(optimizer.param_groups, new_groups, strict=True):
        group["params"] = params
    optimizer.state = new_state


def _carry_param_state(old_state, old_param, resize, powers, name) -> dict:
    carried = {}
    for key, value in old_state.items():
        if isinstance(value, Tensor) and value.shape == old_param.shape and value.ndim > 0:
            if key not in powers:
                raise ValueError(
                    f"optimizer state {key!r} of {name} has no known transform (known: "
                    f"{sorted(powers)}); pass moment_powers={{{key!r}: 1 or 2}} or policy='reset'"
                )
            carried[key] = resize.carry(value, "grad", powers[key])
        else:
            carried[key] = value.clone() if isinstance(value, Tensor) else value
    return carried
