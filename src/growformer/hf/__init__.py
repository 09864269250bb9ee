"""Hugging Face checkpoints: GPT-2, Llama, Qwen2, Mistral and BERT to and from the canonical
model, grown exactly in their own format.

Folders (no transformers needed): ``read_folder``, ``write_folder``, ``grow_folder``.
Models in memory: ``to_canonical``, ``from_canonical``, ``grow``. One module per family
(``gpt2``, ``llama``, ``bert``), looked up by ``model_type`` in ``FAMILIES``.
"""

from growformer.hf.family import Canonical, Family, FormatError, Source
from growformer.hf.folder import (
    grow_folder,
    grow_storable,
    is_hf_folder,
    read_folder,
    write_folder,
)
from growformer.hf.memory import from_canonical, grow, to_canonical
from growformer.hf.registry import FAMILIES, family_for

__all__ = [
    "FAMILIES",
    "Canonical",
    "Family",
    "FormatError",
    "Source",
    "family_for",
    "from_canonical",
    "grow",
    "grow_folder",
    "grow_storable",
    "is_hf_folder",
    "read_folder",
    "to_canonical",
    "write_folder",
]
