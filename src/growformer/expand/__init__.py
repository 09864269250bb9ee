"""The six composable, function-preserving expansions, and growth to a target size.

Each expansion is a pure function ``(config, state, size, ...) -> Expansion`` returning the new
config, the new weights and the resize record; ``grow`` and ``grow_`` plan and compose them.
"""

from growformer.expand._ops import WIDTH_INITS, Expansion, GrowthError
from growformer.expand.grow import (
    GrowthOptions,
    check_growth,
    expand_state,
    grow,
    grow_,
    resize_,
    resolve_target,
)
from growformer.expand.head_dims import expand_qk_head_dim, expand_v_head_dim
from growformer.expand.heads import expand_heads
from growformer.expand.hidden import expand_hidden, hidden_growth_inexact_reason
from growformer.expand.layers import LAYER_INITS, PLACEMENTS, insert_layers, new_layer_positions
from growformer.expand.mlp import expand_ffn
from growformer.expand.positions import extend_positions
from growformer.expand.stack import (
    BLOCK_POSITIONS,
    STACK_METHODS,
    copy_layers,
    interpolate_order,
    layer_order,
    midas_order,
    stack_order,
)

__all__ = [
    "BLOCK_POSITIONS",
    "LAYER_INITS",
    "PLACEMENTS",
    "STACK_METHODS",
    "WIDTH_INITS",
    "Expansion",
    "GrowthError",
    "GrowthOptions",
    "check_growth",
    "copy_layers",
    "expand_ffn",
    "expand_heads",
    "expand_hidden",
    "expand_qk_head_dim",
    "expand_state",
    "expand_v_head_dim",
    "extend_positions",
    "grow",
    "grow_",
    "hidden_growth_inexact_reason",
    "insert_layers",
    "interpolate_order",
    "layer_order",
    "midas_order",
    "new_layer_positions",
    "resize_",
    "resolve_target",
    "stack_order",
]
