"""The supported Hugging Face families, looked up by ``model_type``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from growformer.hf.bert import Bert
from growformer.hf.family import Family, FormatError
from growformer.hf.gpt2 import GPT2
from growformer.hf.llama import Llama, Mistral, Qwen2

FAMILIES: dict[str, Family] = {
    f.model_type: f for f in (GPT2(), Llama(), Qwen2(), Mistral(), Bert())
}


def family_for(hf_config: Mapping[str, Any]) -> Family:
    """The family of a Hugging Face config; ``FormatError`` lists the supported model types."""
    model_type = hf_config.get("model_type")
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise FormatError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(FAMILIES)} "
            "(and 'growformer' folders)"
        )
    return FAMILIES[model_type]
