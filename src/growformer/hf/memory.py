"""Hugging Face models in memory: transformers model ⇄ canonical form, and growth that returns
a transformers model of the same class. transformers is imported only when a model is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from growformer.config import ModelConfig
from growformer.expand import GrowthOptions
from growformer.hf.family import Canonical, FormatError
from growformer.hf.registry import family_for
from growformer.model_io import CheckpointError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def to_canonical(hf_model: PreTrainedModel, *, copy: bool = True) -> Canonical:
    """``hf_model`` (GPT-2, Llama, Qwen2, Mistral or BERT, any head) in canonical form.

    With ``copy`` (the default) the canonical tensors are copies, so training
    ``to_canonical(m).model()`` leaves ``m`` alone; without it they are views of ``m``'s.
    ``FormatError`` names a model type or setting the canonical model cannot represent.

    Example::

        canonical = to_canonical(AutoModelForCausalLM.from_pretrained("my-llama"))
        model = canonical.model()  # a growformer Transformer computing the same logits
    """
    hf_config = hf_model.config.to_dict()
    hf_config["architectures"] = [type(hf_model).__name__]
    family = family_for(hf_config)
    tensors = {name: t.detach() for name, t in hf_model.state_dict().items()}
    canonical = family.from_hf(hf_config, tensors)
    if not copy:
        return canonical
    source = dataclasses.replace(
        canonical.source, kept={n: t.clone() for n, t in canonical.source.kept.items()}
    )
    return dataclasses.replace(
        canonical,
        state={n: t.clone() for n, t in canonical.state.items()},
        extras={n: t.clone() for n, t in canonical.extras.items()},
        source=source,
    )


def from_canonical(
    canonical: Canonical, model_class: type[PreTrainedModel] | None = None
) -> PreTrainedModel:
    """A new transformers model holding ``canonical``'s weights (copied), of ``model_class``
    or of the class its source config names, in the canonical weights' dtype.

    Raises ``FormatError`` when the family cannot store the model (e.g. a head size BERT cannot
    describe) and ``CheckpointError`` when the class does not take exactly these weights.
    """
    family = canonical.family
    hf_config = family.config_to_hf(canonical.config, canonical.source.hf_config)
    tensors = family.to_hf(canonical)
    if model_class is None:
        import transformers

        name = canonical.source.architecture
        model_class = getattr(transformers, name, None)
        if model_class is None:
            raise FormatError(f"transformers has no model class {name!r} (config architectures)")
    config = model_class.config_class.from_dict(hf_config)
    dtype = canonical.state["tok_emb.weight"].dtype
    model = model_class._from_config(config, dtype=dtype)
    result = model.load_state_dict(tensors, strict=False)
    _check_loaded(model, tensors, result.missing_keys, result.unexpected_keys)
    return model


def _check_loaded(
    model: nn.Module, tensors: Mapping[str, Any], missing: list[str], unexpected: list[str]
) -> None:
    """Every parameter was loaded (directly or through a tied one); nothing else was given but
    buffers the class does not save."""
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(params[n]) for n in tensors if n in params}
    missing = [n for n in missing if n not in params or id(params[n]) not in loaded]
    unsaved = {n for n, _ in model.named_buffers()} - set(model.state_dict())
    unexpected = [n for n in unexpected if n not in unsaved]
    if missing or unexpected:
        raise CheckpointError(
            f"{type(model).__name__} does not take these weights: missing {missing}, "
            f"unexpected {unexpected}"
        )


def grow(
    hf_model: PreTrainedModel,
    target: ModelConfig | Mapping[str, int],
    options: GrowthOptions | None = None,
    **option_fields: Any,
) -> PreTrainedModel:
    """A new model of ``hf_model``'s class, grown to ``target`` and computing the same function
    (exactly wherever the expansion is; see ``growformer.expand``). ``hf_model`` is unchanged
    and shares no storage with the result; dtype and train/eval mode are kept.

    ``target``: size fields (``{"ffn": 4096, "n_heads": 16}``) or a ``ModelConfig``; options as
    a ``GrowthOptions`` or its fields (``layer_init="copy", where="middle"``). Raises
    ``GrowthError`` for a bad target and ``FormatError`` when the family cannot store it.

    Example::

        wider = growformer.hf.grow(model, {"ffn": 2 * model.config.intermediate_size})
    """
    if options is not None and option_fields:
        raise TypeError("pass either options or option fields, not both")
    options = options or GrowthOptions(**option_fields)
    source = to_canonical(hf_model, copy=False)
    grown = source.grow(target, options)
    model = from_canonical(grown, type(hf_model))
    model.train(hf_model.training)
    return model
