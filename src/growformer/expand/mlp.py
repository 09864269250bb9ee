"""MLP width: ffn p → p̂, exact by construction.

``zero``: new up (and gate) rows are random, new down columns zero, so new units add nothing.
``tile`` (Net2Net): new unit j copies unit ``j mod p``; every down column is divided by the
number of copies of its unit, so the copies sum to the old output. Under tiling the up rows'
gradients shrink by that count while the down columns' gradients are unchanged; a copy and its
original get the same updates, so training alone never tells them apart.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from growformer.config import ModelConfig
from growformer.expand._ops import (
    WIDTH_INITS,
    DimChange,
    Expansion,
    Step,
    apply_steps,
    check_choice,
    check_not_smaller,
    prefix_index,
    tile_index,
)


def expand_ffn(
    config: ModelConfig,
    state: Mapping[str, Tensor],
    ffn: int,
    *,
    init: str = "zero",
    seed: int = 0,
) -> Expansion:
    """Widen every MLP to ``ffn`` units. Exact for pre- and post-norm models."""
    return apply_steps(config, state, [plan_ffn(config, ffn, init=init)], seed)


def plan_ffn(config: ModelConfig, ffn: int, *, init: str = "zero") -> Step:
    """The step of ``expand_ffn``, planned from the config alone."""
    check_not_smaller("ffn", config.ffn, ffn)
    check_choice("width init", init, WIDTH_INITS)
    p = config.ffn
    changes: dict[str, DimChange] = {}
    if init == "zero":
        index = prefix_index(p, ffn)
        readers = DimChange(0, index, fill="random")
        reader_bias = DimChange(0, index)
        writer = DimChange(1, index)
    else:
        index, counts = tile_index(p, ffn)
        readers = reader_bias = DimChange(0, index, grad_scale=1.0 / counts)
        writer = DimChange(1, index, value_scale=1.0 / counts)
    for i in range(config.n_layers):
        prefix = f"layers.{i}.mlp."
        for part in ("up", "gate") if config.mlp == "swiglu" else ("up",):
            changes[f"{prefix}{part}.weight"] = readers
            if config.mlp_bias:
                changes[f"{prefix}{part}.bias"] = reader_bias
        changes[f"{prefix}down.weight"] = writer
    return Step(config.replace(ffn=ffn), changes, f"ffn {p}->{ffn}")
