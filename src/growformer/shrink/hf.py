"""Subcloning a Hugging Face model in canonical form: the canonical weights by ``subclone``, and
the family's extra tensors (a decoder classifier's head; BERT's token-type table, pooler and
heads) cut to the kept hidden dimensions the same way, so the child is saved by the same
family's classes."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from torch import Tensor

from growformer.hf import Canonical, FormatError
from growformer.hf.bert import BUFFERS, POSITIONS
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
    canonical form (same family and source) and the ``Subclone``. Extras are cut as their
    family's ``extra_hidden_dims`` declares; ``FormatError`` for a kept source tensor other
    than BERT's position table."""
    child = subclone(
        source.config,
        source.state,
        target,
        importance,
        keep_layers=keep_layers,
        rescale=rescale,
        headless=source.source.headless,
    )
    extras, kept = _cut_extras(source, child.plan, child.report.reader_scale)
    hf_config = dict(source.source.hf_config)
    if list(child.plan.layers) != list(range(source.config.n_layers)):
        hf_config = source.family.config_for_layers(hf_config, child.plan.layers)
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
    """The extras and ``Source.kept`` tensors of the child. Each hidden-sized dimension of an
    extra (the family's ``extra_hidden_dims``: a decoder classifier's ``score``; BERT's
    token-type table, pooler and heads) keeps ``plan.hidden``, and dimension 1, where it reads
    the hidden state, is scaled like every reader; BERT's position buffers follow
    ``max_seq_len``."""
    family, prefix, c = source.family, source.source.prefix, plan.target
    extras = {}
    for name, tensor in source.extras.items():
        relative = family.relative(name, prefix)
        if relative in BUFFERS:
            tensor = BUFFERS[relative](c.max_seq_len, tensor)
        for dim, _ in family.extra_hidden_dims.get(relative, ()):
            tensor = tensor.index_select(dim, plan.hidden)
            if dim == 1 and relative not in family.extra_writers:
                tensor = tensor * scale
        extras[name] = tensor
    kept = {}
    for name, tensor in source.source.kept.items():
        if name != POSITIONS:
            raise FormatError(
                f"shrinking does not know the source tensor {name} of {family.model_type}"
            )
        kept[name] = tensor[: c.max_seq_len].index_select(1, plan.hidden)
    return extras, kept
