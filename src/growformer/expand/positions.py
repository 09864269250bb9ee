"""Context length: max_seq_len T → T̂. Sequences of old lengths see the same function.

With RoPE only the config changes. Learned positions get new rows (random with the table's
scale) that only longer sequences read; training on such lengths is what teaches them.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from growformer.config import ModelConfig
from growformer.expand._ops import (
    DimChange,
    Expansion,
    Step,
    apply_steps,
    check_not_smaller,
    prefix_index,
)


def extend_positions(
    config: ModelConfig, state: Mapping[str, Tensor], max_seq_len: int, *, seed: int = 0
) -> Expansion:
    """Allow sequences up to ``max_seq_len`` tokens."""
    return apply_steps(config, state, [plan_positions(config, max_seq_len)], seed)


def plan_positions(config: ModelConfig, max_seq_len: int) -> Step:
    """The step of ``extend_positions``, planned from the config alone."""
    check_not_smaller("max_seq_len", config.max_seq_len, max_seq_len)
    changes = {}
    if config.position == "learned":
        changes["pos_emb.weight"] = DimChange(
            0, prefix_index(config.max_seq_len, max_seq_len), "random"
        )
    name = f"max_seq_len {config.max_seq_len}->{max_seq_len}"
    return Step(config.replace(max_seq_len=max_seq_len), changes, name)
