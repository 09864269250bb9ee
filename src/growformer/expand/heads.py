"""Attention heads: (n_heads, n_kv_heads) → (Ĥ, K̂), GQA-aware, exact by construction.

Query head ``h`` reads kv head ``h // g`` (g = n_heads / n_kv_heads, contiguous groups as in
Hugging Face ``repeat_kv``). Growth first appends whole groups (new kv heads, each with g query
heads), then adds query heads at the end of every group, so the target needs Ĥ % K̂ == 0 and a
group size Ĥ/K̂ ≥ g.

``zero``: new Q, K, V rows random, the new heads' W_O input columns zero.
``tile``: a new kv head copies kv head ``j mod K``; a new query head copies query ``r mod g`` of
its group's source; each W_O column is divided by the number of copies of its head.
"""

from __future__ import annotations

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
    block_rows,
    check_choice,
    check_not_smaller,
    repeat_rows,
)


def head_maps(
    n_heads: int, n_kv_heads: int, new_heads: int, new_kv_heads: int, init: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Maps of new → old heads for the query and kv heads, with the per-head factors.

    Returns ``(query_map, kv_map, query_copies, kv_copies)``: ``-1`` marks a new head under
    ``zero``; ``query_copies[h]`` (``kv_copies[j]``) is how many new heads share the source of
    query head ``h`` (kv head ``j``), 1 under ``zero``.
    """
    g, new_g = n_heads // n_kv_heads, new_heads // new_kv_heads
    group = torch.arange(new_kv_heads)[:, None].expand(new_kv_heads, new_g)
    member = torch.arange(new_g)[None, :].expand(new_kv_heads, new_g)
    if init == "zero":
        kv_map = torch.where(
            torch.arange(new_kv_heads) < n_kv_heads, torch.arange(new_kv_heads), -1
        )
        query_map = torch.where((group < n_kv_heads) & (member < g), group * g + member, -1)
        query_map = query_map.reshape(-1)
        return query_map, kv_map, torch.ones(new_heads), torch.ones(new_kv_heads)
    kv_map = torch.arange(new_kv_heads) % n_kv_heads
    kv_copies = torch.bincount(kv_map, minlength=n_kv_heads).to(torch.float64)[kv_map]
    member_map = torch.arange(new_g) % g
    member_copies = torch.bincount(member_map, minlength=g).to(torch.float64)[member_map]
    query_map = (kv_map[:, None] * g + member_map[None, :]).reshape(-1)
    query_copies = (kv_copies[:, None] * member_copies[None, :]).reshape(-1)
    return query_map, kv_map, query_copies, kv_copies


def expand_heads(
    config: ModelConfig,
    state: Mapping[str, Tensor],
    n_heads: int,
    n_kv_heads: int | None = None,
    *,
    init: str = "zero",
    seed: int = 0,
) -> Expansion:
    """Grow to ``n_heads`` query heads and ``n_kv_heads`` kv heads (default: keep the current
    group size for MHA models, the current kv heads otherwise). Exact for pre- and post-norm."""
    return apply_steps(config, state, [plan_heads(config, n_heads, n_kv_heads, init=init)], seed)


def plan_heads(
    config: ModelConfig, n_heads: int, n_kv_heads: int | None = None, *, init: str = "zero"
) -> Step:
    """The step of ``expand_heads``, planned from the config alone."""
    c = config
    if n_kv_heads is None:
        n_kv_heads = n_heads if c.n_kv_heads == c.n_heads else c.n_kv_heads
    check_not_smaller("n_heads", c.n_heads, n_heads)
    check_not_smaller("n_kv_heads", c.n_kv_heads, n_kv_heads)
    check_choice("width init", init, WIDTH_INITS)
    if n_heads % n_kv_heads:
        raise GrowthError(
            f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads} "
            f"(allowed n_kv_heads: divisors of {n_heads})"
        )
    if n_heads // n_kv_heads < c.group_size:
        raise GrowthError(
            f"n_heads/n_kv_heads={n_heads // n_kv_heads} is below the current group size "
            f"{c.group_size}: growth keeps every query head with its kv head, so choose "
            f"n_heads ≥ {c.group_size}·n_kv_heads"
        )
    query_map, kv_map, query_copies, kv_copies = head_maps(
        c.n_heads, c.n_kv_heads, n_heads, n_kv_heads, init
    )
    fill = "random" if init == "zero" else "zero"
    q_rows = block_rows(query_map, c.qk_head_dim)
    q_grad = repeat_rows(1.0 / query_copies, c.qk_head_dim)
    kv_grad = 1.0 / kv_copies
    tiled = init == "tile"
    q = DimChange(0, q_rows, fill, grad_scale=q_grad if tiled else None)
    k_rows = block_rows(kv_map, c.qk_head_dim)
    v_rows = block_rows(kv_map, c.v_head_dim)
    k = DimChange(
        0, k_rows, fill, grad_scale=repeat_rows(kv_grad, c.qk_head_dim) if tiled else None
    )
    v = DimChange(0, v_rows, fill, grad_scale=repeat_rows(kv_grad, c.v_head_dim) if tiled else None)
    o_cols = block_rows(query_map, c.v_head_dim)
    o_value = repeat_rows(1.0 / query_copies, c.v_head_dim) if tiled else None
    o = DimChange(1, o_cols, "zero", value_scale=o_value)
    biases = {
        part: DimChange(0, change.index, "zero", grad_scale=change.grad_scale)
        for part, change in (("q", q), ("k", k), ("v", v))
    }
    changes: dict[str, DimChange] = {}
    for i in range(c.n_layers):
        prefix = f"layers.{i}.attn."
        for part, change in (("q", q), ("k", k), ("v", v)):
            changes[f"{prefix}{part}.weight"] = change
            if c.attn_bias:
                changes[f"{prefix}{part}.bias"] = biases[part]
        changes[f"{prefix}o.weight"] = o
    name = f"heads {c.n_heads}/{c.n_kv_heads}->{n_heads}/{n_kv_heads}"
    return Step(c.replace(n_heads=n_heads, n_kv_heads=n_kv_heads), changes, name)
