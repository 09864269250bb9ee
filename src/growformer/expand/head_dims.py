"""Per-head dimensions: value head dim v → v̂ and query/key head dim k → k̂, exact by construction.

Value dim: new V rows random (``zero``) or copies (``tile``); the matching W_O columns are zero
or divided by the number of copies.

Query/key dim: new Q rows random, new K rows zero, so new dims add 0 to every q·k. The softmax
scale changes from 1/√k to 1/√k̂, so the old Q rows (and biases) are multiplied by √(k̂/k); their
gradients scale by the inverse. With RoPE (rotate-half), old dims go to [0, k/2) and
[k̂/2, k̂/2 + k/2) and the base becomes ``theta^(k̂/k)``: frequency i is then
``theta^(-2i/k)`` for every old pair, unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from growformer.config import ModelConfig
from growformer.expand._ops import (
    WIDTH_INITS,
    DimChange,
    Expansion,
    GrowthError,
    Step,
    apply_steps,
    check_choice,
    check_not_smaller,
    prefix_index,
    tile_index,
)


def expand_v_head_dim(
    config: ModelConfig,
    state: Mapping[str, Tensor],
    v_head_dim: int,
    *,
    init: str = "zero",
    seed: int = 0,
) -> Expansion:
    """Grow every head's value dimension to ``v_head_dim``. Exact for pre- and post-norm."""
    return apply_steps(config, state, [plan_v_head_dim(config, v_head_dim, init=init)], seed)


def plan_v_head_dim(config: ModelConfig, v_head_dim: int, *, init: str = "zero") -> Step:
    """The step of ``expand_v_head_dim``, planned from the config alone."""
    c = config
    check_not_smaller("v_head_dim", c.v_head_dim, v_head_dim)
    check_choice("width init", init, WIDTH_INITS)
    if init == "zero":
        dims, copies = prefix_index(c.v_head_dim, v_head_dim), None
    else:
        dims, copies = tile_index(c.v_head_dim, v_head_dim)
    v_rows = _per_head(dims, c.v_head_dim, c.n_kv_heads)
    o_cols = _per_head(dims, c.v_head_dim, c.n_heads)
    if copies is None:
        v = DimChange(0, v_rows, "random")
        v_bias = DimChange(0, v_rows)
        o = DimChange(1, o_cols)
    else:
        v = v_bias = DimChange(0, v_rows, grad_scale=(1.0 / copies).repeat(c.n_kv_heads))
        o = DimChange(1, o_cols, value_scale=(1.0 / copies).repeat(c.n_heads))
    changes: dict[str, DimChange] = {}
    for i in range(c.n_layers):
        prefix = f"layers.{i}.attn."
        changes[f"{prefix}v.weight"] = v
        if c.attn_bias:
            changes[f"{prefix}v.bias"] = v_bias
        changes[f"{prefix}o.weight"] = o
    name = f"v_head_dim {c.v_head_dim}->{v_head_dim}"
    return Step(c.replace(v_head_dim=v_head_dim), changes, name)


def qk_dim_map(old: int, new: int, rope: bool) -> Tensor:
    """New → old position within one head (``-1``: new), for the query/key head dim."""
    if not rope:
        return prefix_index(old, new)
    if old % 2 or new % 2:
        raise GrowthError(
            f"qk_head_dim must stay even with RoPE (rotate-half pairs); got {old} → {new}"
        )
    dims = torch.full((new,), -1, dtype=torch.long)
    half, new_half = old // 2, new // 2
    dims[:half] = torch.arange(half)
    dims[new_half : new_half + half] = torch.arange(half, old)
    return dims


def expand_qk_head_dim(
    config: ModelConfig,
    state: Mapping[str, Tensor],
    qk_head_dim: int,
    *,
    seed: int = 0,
) -> Expansion:
    """Grow every head's query/key dimension to ``qk_head_dim`` (see the module docstring for the
    softmax-scale and RoPE corrections). Exact for pre- and post-norm."""
    return apply_steps(config, state, [plan_qk_head_dim(config, qk_head_dim)], seed)


def plan_qk_head_dim(config: ModelConfig, qk_head_dim: int) -> Step:
    """The step of ``expand_qk_head_dim``, planned from the config alone."""
    c = config
    check_not_smaller("qk_head_dim", c.qk_head_dim, qk_head_dim)
    rope = c.position == "rope"
    dims = qk_dim_map(c.qk_head_dim, qk_head_dim, rope)
    scale = math.sqrt(qk_head_dim / c.qk_head_dim)
    q_rows = _per_head(dims, c.qk_head_dim, c.n_heads)
    k_rows = _per_head(dims, c.qk_head_dim, c.n_kv_heads)
    q_value = torch.full((len(q_rows),), scale, dtype=torch.float64)
    q = DimChange(0, q_rows, "random", value_scale=q_value, grad_scale=1.0 / q_value)
    q_bias = DimChange(0, q_rows, "zero", value_scale=q_value, grad_scale=1.0 / q_value)
    k = DimChange(0, k_rows, "zero")
    changes: dict[str, DimChange] = {}
    for i in range(c.n_layers):
        prefix = f"layers.{i}.attn."
        changes[f"{prefix}q.weight"] = q
        changes[f"{prefix}k.weight"] = k
        if c.attn_bias:
            changes[f"{prefix}q.bias"] = q_bias
            changes[f"{prefix}k.bias"] = k
    new_config = c.replace(qk_head_dim=qk_head_dim)
    if rope and qk_head_dim != c.qk_head_dim:
        try:
            theta = c.rope_theta ** (qk_head_dim / c.qk_head_dim)
        except OverflowError:
            theta = math.inf
        if not math.isfinite(theta):
            raise GrowthError(
                f"qk_head_dim {c.qk_head_dim}->{qk_head_dim}: the RoPE base must become "
                f"rope_theta^({qk_head_dim}/{c.qk_head_dim}) = {c.rope_theta}^"
                f"{qk_head_dim / c.qk_head_dim:g}, which overflows a float; grow qk_head_dim "
                "in smaller proportion"
            )
        new_config = new_config.replace(rope_theta=theta)
    return Step(new_config, changes, f"qk_head_dim {c.qk_head_dim}->{qk_head_dim}")


def _per_head(dims: Tensor, old_dim: int, n_heads: int) -> Tensor:
    """Repeat a within-head map for ``n_heads`` heads laid out one after another."""
    starts = torch.arange(n_heads)[:, None] * old_dim
    return torch.where(dims >= 0, starts + dims, -1).reshape(-1)
