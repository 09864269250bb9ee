"""The subclone plan: which positions of the source the child keeps, by importance or naively.

Every index vector is increasing, so the kept parts stay in the source's order. Query heads are
listed group by group: the child's kv head ``j`` is the source's ``kv_heads[l][j]`` and its query
heads ``j·ĝ … (j+1)·ĝ - 1`` are source query heads of that group (ĝ the child's group size),
which is the contiguous grouping the model uses (query head ``h`` reads kv head ``h // ĝ``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from growformer.config import ModelConfig
from growformer.shrink.blocks import check_keep_layers, choose_layers
from growformer.shrink.importance import Importance


@dataclass(frozen=True)
class SubclonePlan:
    """Source positions kept, per child layer where they differ by layer.

    ``layers[l]`` is the source layer of child layer ``l``; ``hidden`` the kept residual
    dimensions; ``kv_heads[l]``, ``heads[l]`` and ``ffn[l]`` the kept kv heads, query heads and
    FFN neurons of child layer ``l`` (indices into source layer ``layers[l]``). Construction
    checks the sizes against ``target`` and the ranges and grouping against ``source``
    (``ValueError``).
    """

    source: ModelConfig
    target: ModelConfig
    layers: tuple[int, ...]
    hidden: Tensor
    kv_heads: tuple[Tensor, ...]
    heads: tuple[Tensor, ...]
    ffn: tuple[Tensor, ...]

    def __post_init__(self) -> None:
        s, t = self.source, self.target
        check_keep_layers(self.layers, t.n_layers, s.n_layers)
        if list(self.layers) != sorted(self.layers):
            raise ValueError(f"plan layers {self.layers} must be increasing")
        _check_index("hidden", self.hidden, t.hidden, s.hidden)
        for name, n_new, n_old in (
            ("kv_heads", t.n_kv_heads, s.n_kv_heads),
            ("heads", t.n_heads, s.n_heads),
            ("ffn", t.ffn, s.ffn),
        ):
            per_layer = getattr(self, name)
            if len(per_layer) != t.n_layers:
                raise ValueError(f"plan {name} has {len(per_layer)} layers, not {t.n_layers}")
            for index in per_layer:
                _check_index(name, index, n_new, n_old)
        for kv, heads in zip(self.kv_heads, self.heads, strict=True):
            groups = heads.view(t.n_kv_heads, t.group_size) // s.group_size
            if not bool((groups == kv[:, None]).all()):
                raise ValueError(
                    f"plan heads {heads.tolist()} are not {t.group_size} query heads of each "
                    f"kept kv head {kv.tolist()} (source group size {s.group_size})"
                )


def plan_subclone(
    source: ModelConfig,
    target: ModelConfig,
    importance: Importance,
    keep_layers: Sequence[int] | None = None,
) -> SubclonePlan:
    """Keep the most important parts: the top hidden dimensions (one global ranking), the
    layers ``choose_layers`` picks, and in each kept layer the top kv groups, the top query
    heads within each kept group and the top FFN neurons. Ties go to the lower index."""
    importance.check(source)
    layers = choose_layers(importance.block_change, target.n_layers, keep_layers)
    groups = importance.kv_groups(source.group_size)
    kv_heads, heads, ffn = [], [], []
    for layer in layers:
        kv = _top(groups[layer], target.n_kv_heads)
        within = importance.heads[layer].view(source.n_kv_heads, source.group_size)[kv]
        members = torch.stack([_top(row, target.group_size) for row in within])
        kv_heads.append(kv)
        heads.append((kv[:, None] * source.group_size + members).reshape(-1))
        ffn.append(_top(importance.ffn[layer], target.ffn))
    return SubclonePlan(
        source,
        target,
        layers,
        _top(importance.hidden, target.hidden),
        tuple(kv_heads),
        tuple(heads),
        tuple(ffn),
    )


def truncation_plan(source: ModelConfig, target: ModelConfig) -> SubclonePlan:
    """The naive baseline: the first layers, hidden dimensions, kv groups, query heads in each
    group and FFN neurons."""
    kv = torch.arange(target.n_kv_heads)
    heads = (kv[:, None] * source.group_size + torch.arange(target.group_size)).reshape(-1)
    n = target.n_layers
    return SubclonePlan(
        source,
        target,
        tuple(range(n)),
        torch.arange(target.hidden),
        (kv,) * n,
        (heads,) * n,
        (torch.arange(target.ffn),) * n,
    )


def _top(scores: Tensor, k: int) -> Tensor:
    """The indices of the ``k`` largest scores, increasing (ties to the lower index)."""
    return torch.argsort(scores, descending=True, stable=True)[:k].sort().values


def _check_index(name: str, index: Tensor, size: int, bound: int) -> None:
    if index.dtype != torch.long or tuple(index.shape) != (size,):
        raise ValueError(f"plan {name} must be {size} int64 indices, got {tuple(index.shape)}")
    if size and (int(index.min()) < 0 or int(index.max()) >= bound):
        raise ValueError(f"plan {name} indices must be in [0, {bound})")
    if size > 1 and not bool((index.diff() > 0).all()):
        raise ValueError(f"plan {name} indices must be increasing and distinct")
