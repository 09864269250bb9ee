"""Shorter training sequences in early stages, for a transformers model: the batch is folded.

A schedule may train its first stages on sequences shorter than the final ones
(``start_seq_len``, ``GrowthEvent.seq_len``). The data pipeline is the user's, so the stage
length is applied where the batch meets the model: a forward pre-hook folds each training row
of ``L`` tokens into ``L / seq_len`` rows of ``seq_len`` (the tokens per step are unchanged, as
in growformer's trainer). ``input_ids``, ``labels``, ``shift_labels`` and ``attention_mask``
are folded together; ``num_items_in_batch`` (the transformers Trainer's loss normalizer) is
scaled to the targets left after the per-row label shift. The hook sees one micro-batch, so
it scales the accumulation window's count by that micro-batch's own fraction: exact without
padding (every row loses the same share) or without accumulation; with padded labels and
accumulation, micro-batches' weights differ from exact by the spread of their fractions
(1.8e-4 of the loss measured on a padded example). Forward passes in eval mode, and rows not
longer than the stage length, are left as they are.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

FOLDED = ("input_ids", "labels", "shift_labels", "attention_mask")
UNFOLDABLE = ("position_ids", "inputs_embeds", "token_type_ids", "cache_position")
IGNORE_INDEX = -100


class SequenceFolding:
    """The folding hook on ``model`` (ahead of its other pre-hooks, which see the folded batch);
    ``seq_len`` (None: no folding) is the current stage's."""

    def __init__(self, model: nn.Module) -> None:
        self.seq_len: int | None = None
        self._handle = model.register_forward_pre_hook(self._fold, with_kwargs=True, prepend=True)

    def remove(self) -> None:
        self._handle.remove()

    def _fold(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        length = self.seq_len
        if length is None or not module.training:
            return None
        ids = kwargs.get("input_ids")
        if args or not isinstance(ids, Tensor):
            raise ValueError(
                "a stage with shorter sequences folds the batch: pass input_ids (and labels) "
                "to the model as keyword arguments"
            )
        if ids.shape[-1] <= length:
            return None
        if ids.shape[-1] % length:
            raise ValueError(
                f"training rows of {ids.shape[-1]} tokens cannot fold into rows of the stage's "
                f"seq_len {length}; use rows whose length is a multiple of it"
            )
        unfoldable = [k for k in UNFOLDABLE if kwargs.get(k) is not None]
        if unfoldable:
            raise ValueError(f"cannot fold {unfoldable} into shorter rows; leave them out")
        folded = dict(kwargs)
        for key in FOLDED:
            if isinstance(kwargs.get(key), Tensor):
                folded[key] = kwargs[key].reshape(-1, length)
        labels = kwargs.get("labels")
        items = kwargs.get("num_items_in_batch")
        if items is not None and isinstance(labels, Tensor) and kwargs.get("shift_labels") is None:
            before = int((labels[..., 1:] != IGNORE_INDEX).sum())
            after = int((folded["labels"][..., 1:] != IGNORE_INDEX).sum())
            folded["num_items_in_batch"] = items * after / max(before, 1)
        return (), folded
