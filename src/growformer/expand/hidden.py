"""Hidden (residual) width h → ĥ, new coordinates appended.

Writers (token and position embeddings, W_O, MLP down and their biases) give the new residual
coordinates a value every normed reader ignores, so the readers' new input columns see only zeros
at first and any value keeps the function. V, up and an untied W_U get random ones: through them
the loss reaches the new coordinates, so the writers' new rows learn at the first step. Q, K and
gate get zero ones, which learn from the second step on (once the new coordinates are non-zero),
so that the attention scores and gates the model has learned are not perturbed at random as the
new coordinates come alive. Measured against random columns for every reader (2 layers, hidden
64, SwiGLU, stdlib prose, 300 AdamW steps with the state carried through growth to hidden 96 or
128, then 500 steps; 3 seeds each): the same final validation loss (means 2.6317 vs 2.6326 at
96, 2.6180 vs 2.6187 at 128), a smaller jump 5 steps after growth in all 6 runs, and 56% fewer
normals to draw (8.6M instead of 19.7M for the 110M-parameter model of bench/grow_speed.py).

- RMSNorm: writers' new rows are zero. The mean square over ĥ is h/ĥ of the old one, so every
  gain is multiplied by √(h/ĥ) **and eps by h/ĥ**, which makes each norm exact. New gains are the
  mean of the scaled old ones (non-zero, so gradients reach the readers' new columns).
- LayerNorm: zero-fill would move the mean; instead every writer's new rows are the mean of its
  old rows, so each new coordinate equals the mean of the old ones. The mean is unchanged, the
  variance scales by h/ĥ, and the same gain and eps scaling with new biases 0 is exact.
- Without a final norm W_U reads the raw stream. Under RMSNorm its new coordinates are zero, so
  an untied W_U still gets random new columns; under LayerNorm they hold the mean-fill, so an
  untied W_U's new columns are zero, and tied to the mean-filled embedding it is not exact.
- Post-norm (BERT) normalizes the residual sum itself: no fill is exact there.

The record's gradient factors are exact except under LayerNorm: the mean-filled coordinates
depend on the writers' old rows, so those rows' gradients change with no per-entry factor, and
moments carried for them are an approximation.

Non-exact cases run only with ``approximate=True``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from growformer.config import ModelConfig
from growformer.expand._ops import (
    DimChange,
    Expansion,
    GrowthError,
    Step,
    apply_steps,
    check_not_smaller,
    prefix_index,
)


def hidden_growth_inexact_reason(config: ModelConfig) -> str | None:
    """Why hidden growth cannot be exact for ``config``, or None when it is."""
    if config.norm_placement == "post":
        return "post-norm models normalize the residual sum, so hidden growth changes them"
    if not config.final_norm and config.tie_embeddings and config.norm == "layer":
        return "a tied W_U without a final LayerNorm reads the mean-filled new coordinates"
    return None


def expand_hidden(
    config: ModelConfig,
    state: Mapping[str, Tensor],
    hidden: int,
    *,
    seed: int = 0,
    approximate: bool = False,
) -> Expansion:
    """Grow the residual width to ``hidden``; exact unless ``hidden_growth_inexact_reason``."""
    return apply_steps(config, state, [plan_hidden(config, hidden, approximate=approximate)], seed)


def plan_hidden(config: ModelConfig, hidden: int, *, approximate: bool = False) -> Step:
    """The step of ``expand_hidden``, planned from the config alone."""
    c = config
    check_not_smaller("hidden", c.hidden, hidden)
    reason = hidden_growth_inexact_reason(c)
    if reason and not approximate and hidden != c.hidden:
        raise GrowthError(
            f"hidden growth is not exact here: {reason}; pass approximate=True (--approximate)"
        )
    index = prefix_index(c.hidden, hidden)
    writer_fill = "mean" if c.norm == "layer" else "zero"
    gain_scale = torch.full((hidden,), math.sqrt(c.hidden / hidden), dtype=torch.float64)
    gain = DimChange(0, index, "mean", value_scale=gain_scale, grad_scale=1.0 / gain_scale)
    reader = DimChange(1, index, "random")
    quiet_reader = DimChange(1, index, "zero")
    embedding = DimChange(1, index, writer_fill)
    writer = DimChange(0, index, writer_fill)
    norm_bias = DimChange(0, index, "zero")
    changes: dict[str, DimChange] = {"tok_emb.weight": embedding}
    if c.position == "learned":
        changes["pos_emb.weight"] = embedding
    norms = [f"layers.{i}.{n}" for i in range(c.n_layers) for n in ("attn_norm", "mlp_norm")]
    norms += ["final_norm"] * c.final_norm + ["emb_norm"] * (c.norm_placement == "post")
    for norm in norms:
        changes[f"{norm}.weight"] = gain
        if c.norm == "layer":
            changes[f"{norm}.bias"] = norm_bias
    for i in range(c.n_layers):
        prefix = f"layers.{i}."
        for part in ["attn.v", "mlp.up"]:
            changes[f"{prefix}{part}.weight"] = reader
        for part in ["attn.q", "attn.k"] + ["mlp.gate"] * (c.mlp == "swiglu"):
            changes[f"{prefix}{part}.weight"] = quiet_reader
        writers = [("attn.o", c.attn_out_bias), ("mlp.down", c.mlp_bias)]
        for part, has_bias in writers:
            changes[f"{prefix}{part}.weight"] = writer
            if has_bias:
                changes[f"{prefix}{part}.bias"] = writer
    if not c.tie_embeddings:
        reads_zeros = c.final_norm or c.norm == "rms"
        changes["lm_head.weight"] = reader if reads_zeros else DimChange(1, index, "zero")
    eps = c.norm_eps * c.hidden / hidden
    return Step(c.replace(hidden=hidden, norm_eps=eps), changes, f"hidden {c.hidden}->{hidden}")
