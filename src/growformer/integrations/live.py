"""The two kinds of model a growth callback grows in place: a growformer ``Transformer`` and a
transformers model of a supported family. One small interface, so the driver need not ask."""

from __future__ import annotations

import sys

import torch
from torch import nn

from growformer.config import ModelConfig
from growformer.integrations import hf_inplace
from growformer.integrations.plan import GrowthCallbackError
from growformer.model import Transformer
from growformer.train.growth import apply_event_
from growformer.train.schedule import GrowthEvent


def is_transformers_model(model: nn.Module) -> bool:
    """Whether ``model`` is a transformers ``PreTrainedModel`` (transformers is not imported:
    a model of its classes means it is loaded)."""
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(model, transformers.PreTrainedModel)


def model_config(model: nn.Module) -> ModelConfig:
    """The canonical config of ``model``; ``GrowthCallbackError`` for any other kind."""
    if isinstance(model, Transformer):
        return model.config
    if is_transformers_model(model):
        return hf_inplace.canonical_view(model).config
    raise GrowthCallbackError(
        f"cannot grow a {type(model).__name__}: the model must be a growformer Transformer or a "
        "transformers GPT-2, Llama, Qwen2 or Mistral model"
    )


def check_storable(model: nn.Module, config: ModelConfig) -> None:
    """Raise ``GrowthCallbackError`` when ``model``'s kind cannot hold a model of ``config``."""
    if is_transformers_model(model):
        hf_inplace.check_storable(model, config)


def grow_(model: nn.Module, optimizer: torch.optim.Optimizer | None, event: GrowthEvent) -> None:
    """Grow ``model`` in place by ``event`` and carry ``optimizer`` (a torch optimizer)."""
    if isinstance(model, Transformer):
        apply_event_(model, optimizer, event)
    else:
        hf_inplace.grow_(model, optimizer, event)


def num_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied ones once)."""
    return sum(p.numel() for p in model.parameters())
