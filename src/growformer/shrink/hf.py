"""Subcloning a Hugging Face model in canonical form: the canonical weights by ``subclone``, and
the family's extra tensors (BERT's token-type table, pooler and heads) cut to the kept hidden
dimensions the same way, so the child is saved by the same family's classes."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import Tensor

from growformer.hf import Canonical, FormatError
from growformer.hf.bert import BUFFERS, HIDDEN_DIMS, POSITIONS, TOKEN_TYPES
from growformer.shrink.importance import Importance
from growformer.shrink.plan import SubclonePlan
from growformer.shrink.subclone import Subclone, subclone


def subclone_canonical(
    source: Canonical,
    target: dict[str, int],
    importance: Importance,
    *,
    keep_layers: Sequence[int] | None = None,
    rescale: bool = True,
) -> tuple[Canonical, Subclone]:
    """``subclone`` of ``source``'s canonical weights, with its extras following: the child in
    canonical form (same family and source) and the ``Subclone``. Raises ``FormatError`` when
    the family has extras this function does not know how to cut."""
    child = subclone(
        source.config,
        source.state,
        target,
        importance,
        keep_layers=keep_layers,
        rescale=rescale,
    )
    extras, kept = _cut_extras(source, child.plan, child.report.reader_scale)
    hf_config = dict(source.source.hf_config)
    types = hf_config.get("layer_types")
    if isinstance(types, list) and len(types) == source.config.n_layers:
        hf_config["layer_types"] = [types[i] for i in child.plan.layers]
    canonical = dataclasses.replace(
        source,
        config=child.config,
        state=child.state,
        extras=extras,
        source=dataclasses.replace(source.source, hf_config=hf_config, kept=kept),
    )
    return canonical, child


def _cut_extras(
    source: Canonical, plan: SubclonePlan, scale: float
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The extras and ``Source.kept`` tensors of the child. Hidden-sized dimensions keep
    ``plan.hidden``; a weight that reads the hidden state (a decoder's classifier ``score``;
    BERT's pooler and heads: dimension 1 hidden-sized, the token-type table excepted, which
    writes) is scaled like every reader; BERT's position buffers follow ``max_seq_len``."""
    if not source.extras and not source.source.kept:
        return {}, {}
    family = source.family
    if family.model_type != "bert":
        unknown = sorted(set(source.extras) - set(family.head_readers))
        if unknown or source.source.kept:
            raise FormatError(
                f"shrinking does not know the extra tensors of {family.model_type}: "
                f"{unknown or sorted(source.source.kept)}"
            )
        return {n: t.index_select(1, plan.hidden) * scale for n, t in source.extras.items()}, {}
    prefix, c = source.source.prefix, plan.target
    extras = {}
    for name, tensor in source.extras.items():
        relative = name.removeprefix(prefix) if prefix else name
        if relative in BUFFERS:
            tensor = BUFFERS[relative](c.max_seq_len, tensor)
        for dim, _ in HIDDEN_DIMS.get(relative, ()):
            tensor = tensor.index_select(dim, plan.hidden)
            if dim == 1 and relative != TOKEN_TYPES:
                tensor = tensor * scale
        extras[name] = tensor
    kept = {}
    for name, tensor in source.source.kept.items():
        if name != POSITIONS:
            raise FormatError(f"shrinking does not know the source tensor {name} of bert")
        kept[name] = tensor[: c.max_seq_len].index_select(1, plan.hidden)
    return extras, kept
