"""A live transformers model (GPT-2, Llama, Qwen2, Mistral) grown in place, with its optimizer.

The model is read in canonical form (views of its weights, ``growformer.hf.to_canonical``),
the event is applied there (``growformer.train.growth.event_expansion``), and a model of the
same class is built at the new size and loaded with the result. The live model object (which
the Trainer and the user hold) then adopts the new model's submodules and config:
``save_pretrained`` afterwards writes the grown model.

Optimizer moments go through the same path: each moment is split into canonical tensors by the
family's rename tables (pure renames, transposes and splits for these families, no scaling),
carried through the resize record, and joined back under the new model's names.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from growformer.config import ModelConfig
from growformer.hf.family import Canonical, Family, FormatError
from growformer.hf.memory import to_canonical
from growformer.integrations.plan import GrowthCallbackError
from growformer.optimizer import carry_state_
from growformer.resize import ResizeRecord
from growformer.train.growth import event_expansion
from growformer.train.schedule import GrowthEvent

if TYPE_CHECKING:
    from transformers import PreTrainedModel

SUPPORTED = ("gpt2", "llama", "qwen2", "mistral")


def canonical_view(model: PreTrainedModel) -> Canonical:
    """``model`` in canonical form (views of its weights); ``GrowthCallbackError`` for a model
    family that cannot grow in place."""
    try:
        canonical = to_canonical(model, copy=False)
    except FormatError as error:
        raise GrowthCallbackError(
            f"{type(model).__name__} cannot grow in place: {error} (supported: GPT-2, Llama, "
            "Qwen2 and Mistral causal LMs)"
        ) from None
    if canonical.family.model_type not in SUPPORTED:
        raise GrowthCallbackError(
            f"{type(model).__name__} ({canonical.family.model_type}) cannot grow in place "
            f"during training; supported model types: {', '.join(SUPPORTED)}"
        )
    if canonical.extras:
        raise GrowthCallbackError(
            f"{type(model).__name__} cannot grow in place: in-place growth carries the causal "
            f"LM's weights only, not {sorted(canonical.extras)} (grow the saved folder with "
            "`growformer grow` instead)"
        )
    return canonical


def check_storable(model: PreTrainedModel, config: ModelConfig) -> None:
    """Raise ``GrowthCallbackError`` when ``model``'s config class cannot describe ``config``."""
    try:
        canonical_view(model).family.check_storable(config)
    except FormatError as error:
        raise GrowthCallbackError(f"{type(model).__name__} cannot hold a stage: {error}") from None


def grow_(
    model: PreTrainedModel, optimizer: torch.optim.Optimizer | None, event: GrowthEvent
) -> None:
    """Grow ``model`` in place by ``event`` and rewrite ``optimizer`` (the torch optimizer, not
    a wrapper) to match, between two steps. All parameters become new ``Parameter`` objects
    (``requires_grad`` follows their source); gradient checkpointing stays on when it was (on
    every checkpointable layer); hooks on replaced submodules do not carry over. On an error
    (an optimizer state with no known transform) the model is unchanged."""
    source = canonical_view(model)
    family, prefix = source.family, source.source.prefix
    with torch.no_grad():
        result = event_expansion(source.config, source.state, event)
        grown_form = dataclasses.replace(source, config=result.config, state=result.state)
        grown_source = source.source.after_growth(source.config, result.config, result.record)
        hf_config = family.config_to_hf(result.config, grown_source.hf_config)
        changes = {
            key: value
            for key, value in hf_config.items()
            if source.source.hf_config.get(key) != value
        }
        grown = _build(model, changes, family.to_hf(grown_form))
    mapping = _NameMap(family, prefix, source.config, result.config, result.record)
    old = dict(model.named_parameters())
    new = dict(grown.named_parameters())
    sources = {name: mapping.source_of(name) for name in new}
    for name, param in new.items():
        param.requires_grad_(old[sources[name]].requires_grad)
    if optimizer is not None:
        carry_state_(optimizer, old, new, sources, mapping.carry, policy=event.state_policy)
    _carry_gradient_checkpointing(model, grown)
    _adopt(model, grown)


def _build(
    model: PreTrainedModel, changes: Mapping[str, Any], tensors: Mapping[str, Tensor]
) -> PreTrainedModel:
    """A model of ``model``'s class, config (with ``changes``), device and dtype, holding
    ``tensors``."""
    config = copy.deepcopy(model.config)
    for key, value in changes.items():
        setattr(config, key, value)
    weight = next(model.parameters())
    with torch.device(weight.device):
        grown = type(model)._from_config(config, dtype=weight.dtype)
    result = grown.load_state_dict(tensors, strict=False)
    loaded = {id(p) for n, p in grown.named_parameters(remove_duplicate=False) if n in tensors}
    missing = [n for n, p in grown.named_parameters() if id(p) not in loaded]
    if missing or result.unexpected_keys:
        raise FormatError(
            f"{type(model).__name__} does not take the grown weights: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )
    grown.train(model.training)
    return grown


def _carry_gradient_checkpointing(model: nn.Module, grown: nn.Module) -> None:
    """transformers' gradient checkpointing is a ``gradient_checkpointing`` flag and a
    ``_gradient_checkpointing_func`` on each checkpointable module; the grown model's modules,
    built with it off, take the live model's function and are all switched on when any live one
    is (an ``every_n_layers`` pattern becomes every layer: more recomputation, never more
    memory)."""
    live = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
    if not live:
        return
    function = getattr(live[0], "_gradient_checkpointing_func", None)
    for module in grown.modules():
        if hasattr(module, "gradient_checkpointing"):
            if function is not None:
                module._gradient_checkpointing_func = function
            module.gradient_checkpointing = True


def _adopt(model: nn.Module, grown: nn.Module) -> None:
    """Move ``grown``'s submodules and config into ``model`` (the config object ``model`` was
    built with is left as it was: other models may share it)."""
    for name, child in grown.named_children():
        setattr(model, name, child)
    model.config = grown.config


class _NameMap:
    """The resize record of a growth in Hugging Face names: which old parameter each new one
    grew from, and moments carried through the family's rename tables."""

    def __init__(
        self,
        family: Family,
        prefix: str,
        old: ModelConfig,
        new: ModelConfig,
        record: ResizeRecord,
    ) -> None:
        self.family, self.prefix, self.old, self.new, self.record = (
            family,
            prefix,
            old,
            new,
            record,
        )
        self.old_name = {c: hf for hf, names, _ in family.rules(old, prefix) for c in names}
        self.new_names = {hf: names for hf, names, _ in family.rules(new, prefix)}

    def source_of(self, name: str) -> str:
        """The old parameter that the new parameter ``name`` grew from."""
        sources = {self.old_name[self.record[c].source] for c in self.new_names[name]}
        if len(sources) != 1:
            raise FormatError(f"{name} grew from several parameters {sorted(sources)}")
        return sources.pop()

    def carry(self, old: Mapping[str, Tensor], power: int) -> dict[str, Tensor]:
        """New tensors (by Hugging Face name) from old per-parameter tensors: ``record``'s
        ``carry`` with ``grad_scale**power`` in canonical form; new entries zero."""
        canonical: dict[str, Tensor] = {}
        for hf, names, rule in self.family.rules(self.old, self.prefix):
            if hf in old:
                canonical.update(zip(names, rule.split(old[hf], self.old), strict=True))
        carried = {
            name: resize.carry(canonical[resize.source], "grad", power)
            for name, resize in self.record.params.items()
            if resize.source in canonical
        }
        out: dict[str, Tensor] = {}
        for hf, names, rule in self.family.rules(self.new, self.prefix):
            if all(n in carried for n in names):
                out[hf] = rule.join(tuple(carried[n] for n in names), self.new).contiguous()
        return out
