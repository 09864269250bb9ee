"""A growth event applied to weights (pure) and to a live model and optimizer."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from growformer.config import ModelConfig
from growformer.expand import Expansion, copy_layers, expand_state, layer_order, resize_
from growformer.model import Transformer
from growformer.resize import ResizeRecord
from growformer.train.schedule import GrowthEvent


def event_expansion(
    config: ModelConfig, state: Mapping[str, Tensor], event: GrowthEvent
) -> Expansion:
    """The weights after ``event``: depth first (by copying layers when ``event.method`` is not
    ``exact``), then every other size field through the exact expansions.

    Exact events are function-preserving; copy methods are not (each copy applies its block
    again). Options seed the random entries, so the result is reproducible.
    """
    if event.method == "lag":
        raise ValueError(
            "a 'lag' event is applied as the candidate LAG chooses (GrowthEvent.candidate)"
        )
    sizes = dict(event.sizes)
    if event.method == "exact" or sizes.get("n_layers", config.n_layers) == config.n_layers:
        return expand_state(config, state, sizes, event.options)
    order = layer_order(
        event.method, config.n_layers, sizes["n_layers"], event.midas_block, event.block_at
    )
    copied = copy_layers(config, state, order)
    rest = expand_state(copied.config, copied.state, sizes, event.options)
    return Expansion(rest.config, rest.state, copied.record.then(rest.record))


def apply_event_(
    model: Transformer, optimizer: torch.optim.Optimizer | None, event: GrowthEvent
) -> ResizeRecord:
    """Grow ``model`` in place by ``event`` and carry ``optimizer`` through it (see
    ``growformer.expand.resize_``)."""
    with torch.no_grad():
        result = event_expansion(model.config, dict(model.named_parameters()), event)
    return resize_(model, optimizer, result, state_policy=event.state_policy)
