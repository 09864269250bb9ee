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
    Rng,
    apply_changes,
    check_not_smaller,
    prefix_index,
)


def extend_positions(
    config: ModelConfig, state: Mapping[str, Tensor], max_seq_len: int, *, seed: int = 0
) -> Expansion:
    """Allow sequences up to ``max_seq_len`` tokens."""
    check_not_smaller("max_seq_len", config.max_seq_len, max_seq_len)
    changes = {}
    if config.position == "learned":
        changes["pos_emb.weight"] = DimChange(
            0, prefix_index(config.max_seq_len, max_seq_len), "random"
        )
    new_state, record = apply_changes(state, changes, Rng(seed))
    return Expansion(config.replace(max_seq_len=max_seq_len), new_state, record)
