"""The resize record: for every parameter after a resize, where its entries came from.

An expansion (or a shrink) maps each new parameter to one old parameter, its ``source``, with
one index vector per dimension (new position → old position, ``-1`` for a new entry) and two
per-dimension factors: ``value_scale`` (the carried value is the old value times it) and
``grad_scale`` (with the function unchanged, the gradient of a carried entry is the old one
times it). A per-parameter optimizer state follows from that alone: a first moment is carried
times ``grad_scale``, a second moment times ``grad_scale**2``, a value copy (EMA) times
``value_scale``; new entries start at zero (for a value copy that is exact except where an
expansion fills new entries from carried ones: LayerNorm hidden growth's mean fill). Records
compose with ``then``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

DimMap = tuple[Tensor | None, ...]


@dataclass(frozen=True)
class ParamResize:
    """How one new parameter derives from the old parameter ``source``.

    For each dimension ``d``: ``index[d]`` is None (the dimension is unchanged) or a LongTensor
    of the new size whose entries are old positions or ``-1`` (new); ``value_scale[d]`` and
    ``grad_scale[d]`` are None (factor 1) or float tensors of the new size. The carried entry
    ``new[j0, j1, ...]`` equals ``old[index[0][j0], index[1][j1], ...] * prod_d
    value_scale[d][j_d]``; an entry with any index ``-1`` is new. A parameter with every
    entry new (a fresh layer) still names a ``source`` of the same role, which decides its
    optimizer param group.
    """

    source: str
    index: DimMap
    value_scale: DimMap
    grad_scale: DimMap

    @classmethod
    def identity(cls, source: str, ndim: int) -> ParamResize:
        none = (None,) * ndim
        return cls(source, none, none, none)

    @classmethod
    def along(
        cls,
        source: str,
        ndim: int,
        dim: int,
        index: Tensor,
        value_scale: Tensor | None = None,
        grad_scale: Tensor | None = None,
    ) -> ParamResize:
        """A resize along one dimension ``dim``; the others are unchanged."""

        def put(x: Tensor | None) -> DimMap:
            return tuple(x if d == dim else None for d in range(ndim))

        return cls(source, put(index), put(value_scale), put(grad_scale))

    @property
    def is_fresh(self) -> bool:
        """True when no entry is carried from the source."""
        return any(i is not None and bool((i < 0).all()) for i in self.index)

    @property
    def is_identity(self) -> bool:
        maps = (*self.index, *self.value_scale, *self.grad_scale)
        return all(m is None for m in maps)

    def then(self, later: ParamResize) -> ParamResize:
        """The composition: ``self`` applied first, then ``later`` (whose source is ours)."""
        index, value, grad = [], [], []
        for d in range(len(self.index)):
            index.append(_compose_index(self.index[d], later.index[d]))
            value.append(_compose_scale(self.value_scale[d], later.value_scale[d], later.index[d]))
            grad.append(_compose_scale(self.grad_scale[d], later.grad_scale[d], later.index[d]))
        return ParamResize(self.source, tuple(index), tuple(value), tuple(grad))

    def carried_mask(self, shape: torch.Size) -> Tensor:
        """Bool tensor of the new ``shape``: True where the entry is carried from the source."""
        mask = torch.ones(shape, dtype=torch.bool)
        for d, idx in enumerate(self.index):
            if idx is not None:
                mask &= _along(idx.cpu() >= 0, d, len(shape))
        return mask

    def carry(self, old: Tensor, scale: str = "grad", power: int = 1) -> Tensor:
        """Map a tensor shaped like the source (a moment, an EMA) to the new shape.

        ``scale="grad"`` multiplies carried entries by ``grad_scale**power`` (power 1 for a
        first moment, 2 for a second moment); ``scale="value"`` by ``value_scale**power``.
        New entries are zero.
        """
        if scale not in ("grad", "value"):
            raise ValueError(f"scale must be 'grad' or 'value', got {scale!r}")
        factors = self.grad_scale if scale == "grad" else self.value_scale
        out = old
        for d, idx in enumerate(self.index):
            if idx is not None:
                idx = idx.to(old.device)
                out = out.index_select(d, idx.clamp(min=0))
                out = out * _along(idx >= 0, d, out.ndim).to(out.dtype)
            factor = factors[d]
            if factor is not None:
                out = (
                    out
                    * _along(factor.to(device=old.device, dtype=old.dtype), d, out.ndim) ** power
                )
        return out.clone() if out is old else out


@dataclass(frozen=True)
class ResizeRecord:
    """Every parameter of the new model, by name, with how it derives from the old model."""

    params: Mapping[str, ParamResize]

    @classmethod
    def identity(cls, state: Mapping[str, Tensor]) -> ResizeRecord:
        return cls({name: ParamResize.identity(name, t.ndim) for name, t in state.items()})

    def __getitem__(self, name: str) -> ParamResize:
        return self.params[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def then(self, later: ResizeRecord) -> ResizeRecord:
        """The record of applying ``self``'s resize, then ``later``'s."""
        return ResizeRecord(
            {name: self.params[r.source].then(r) for name, r in later.params.items()}
        )

    def changed(self) -> dict[str, ParamResize]:
        """The entries that are not a plain identity of a same-named parameter."""
        return {n: r for n, r in self.params.items() if not (r.is_identity and r.source == n)}


def _along(v: Tensor, dim: int, ndim: int) -> Tensor:
    """Reshape a vector so it broadcasts along ``dim`` of an ``ndim`` tensor."""
    shape = [1] * ndim
    shape[dim] = -1
    return v.reshape(shape)


def _compose_index(first: Tensor | None, second: Tensor | None) -> Tensor | None:
    if second is None:
        return first
    if first is None:
        return second
    through = first.to(second.device)[second.clamp(min=0)]
    return torch.where(second >= 0, through, torch.full_like(through, -1))


def _compose_scale(
    first: Tensor | None, second: Tensor | None, second_index: Tensor | None
) -> Tensor | None:
    if first is not None and second_index is not None:
        first = first[second_index.clamp(min=0)]
    if first is None:
        return second
    if second is None:
        return first
    return first * second
