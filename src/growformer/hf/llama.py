"""Llama, Qwen2 and Mistral (``model_type: llama | qwen2 | mistral``) ⇄ the canonical model.

Pre-RMSNorm decoders with SwiGLU (gate, up, down), RoPE and grouped kv heads: the canonical
model's own layout, so the tables are plain renames. Hugging Face checkpoints already hold Q
and K in the rotate-half RoPE layout (the Meta → Hugging Face conversion permuted them), which
is the canonical layout: no permutation is needed. The families differ in their biases: Llama's
``attention_bias`` covers Q, K, V and O and ``mlp_bias`` the MLP; Qwen2 always has Q/K/V biases
and nothing else; Mistral has none.

Config facts of transformers 5 handled here: the RoPE base lives in
``rope_parameters["rope_theta"]`` (a legacy top-level ``rope_theta`` is read when
``rope_parameters`` is absent and dropped on writing); ``head_dim`` is always written (Qwen2Config
has no such field but keeps it as an extra key; without it head_dim silently becomes
hidden/heads); ``layer_types`` is regenerated when the layer count changes; LlamaConfig requires
hidden % heads == 0. Only the default RoPE is supported. Sliding-window attention (Mistral's
``sliding_window``, Qwen2's ``use_sliding_window``) is kept in the config; the canonical model
attends to the full context, so it equals the family's forward for sequences up to the window.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from growformer.config import ModelConfig
from growformer.hf.family import (
    SCORE_HEAD,
    Family,
    FormatError,
    canonical_config,
    check_setting,
    renames,
    require,
    sizes_from_hf,
    sizes_to_hf,
)

_PROJECTIONS = {
    "self_attn.q_proj": "attn.q",
    "self_attn.k_proj": "attn.k",
    "self_attn.v_proj": "attn.v",
    "self_attn.o_proj": "attn.o",
    "mlp.gate_proj": "mlp.gate",
    "mlp.up_proj": "mlp.up",
    "mlp.down_proj": "mlp.down",
}
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
    **{
        f"{hf}.{kind}": f"{c}.{kind}"
        for hf, c in _PROJECTIONS.items()
        for kind in ("weight", "bias")
    },
}


def rope_theta(hf: Mapping[str, Any], family: str) -> float:
    """The RoPE base: ``rope_parameters["rope_theta"]``, else a legacy top-level ``rope_theta``.

    Raises ``FormatError`` for any RoPE other than the default (scaled, partial, per layer type).
    """
    scaling = hf.get("rope_scaling")
    if scaling and not (
        isinstance(scaling, Mapping) and scaling.get("rope_type", scaling.get("type")) == "default"
    ):
        # transformers applies a legacy rope_scaling even beside rope_parameters.
        raise FormatError(
            f"{family} config.json: rope_scaling={scaling!r} is not supported; "
            "only the default RoPE is"
        )
    params = hf.get("rope_parameters")
    if params is None:
        return float(hf.get("rope_theta", 10000.0))
    if not isinstance(params, Mapping):
        raise FormatError(f"{family} config.json: rope_parameters must be an object")
    check_setting(
        family, "rope_parameters.rope_type", params.get("rope_type", "default"), ("default",)
    )
    check_setting(
        family,
        "rope_parameters.partial_rotary_factor",
        params.get("partial_rotary_factor", 1.0),
        (1.0,),
    )
    unknown = sorted(set(params) - {"rope_type", "rope_theta", "partial_rotary_factor"})
    if unknown:
        raise FormatError(
            f"{family} config.json: rope_parameters {unknown} are not supported; "
            "allowed: rope_type, rope_theta"
        )
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


class LlamaStyle(Family):
    """The shared tables and config mapping; subclasses set the bias layout."""

    base_prefix = "model."
    layer_prefix = "layers."
    embedding = "embed_tokens.weight"
    top = renames({"embed_tokens.weight": "tok_emb.weight", "norm.weight": "final_norm.weight"})
    layer = renames(_LAYER)
    head = renames({"lm_head.weight": "lm_head.weight"})
    extra_hidden_dims = SCORE_HEAD
    ignored = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
    # num_key_value_heads when config.json omits it, as the transformers config class has it
    # (None: num_attention_heads).
    default_kv_heads: ClassVar[int | None] = None

    @abstractmethod
    def biases(self, hf: Mapping[str, Any]) -> dict[str, bool]:
        """``attn_bias``, ``attn_out_bias`` and ``mlp_bias`` of a config."""

    def config_from_hf(self, hf: Mapping[str, Any]) -> ModelConfig:
        name = self.model_type
        check_setting(name, "hidden_act", hf.get("hidden_act", "silu"), ("silu",))
        sizes = sizes_from_hf(hf, name)
        head_dim = hf.get("head_dim")  # None: hidden / heads, as the config classes default
        return canonical_config(
            name,
            vocab_size=require(hf, "vocab_size", name),
            **sizes,
            n_kv_heads=hf.get("num_key_value_heads", self.default_kv_heads) or sizes["n_heads"],
            qk_head_dim=head_dim,
            v_head_dim=head_dim,
            norm="rms",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            position="rope",
            rope_theta=rope_theta(hf, name),
            mlp="swiglu",
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_std=hf.get("initializer_range", 0.02),
            **self.biases(hf),
        )

    def check_storable(self, config: ModelConfig) -> None:
        if config.qk_head_dim != config.v_head_dim:
            raise FormatError(
                f"{self.model_type} configs have one head_dim for q, k and v: "
                f"qk_head_dim={config.qk_head_dim} and v_head_dim={config.v_head_dim} differ "
                "(grow both to the same size)"
            )

    def config_to_hf(self, config: ModelConfig, source: Mapping[str, Any]) -> dict:
        self.check_storable(config)
        c = config
        out = dict(source)
        rope = dict(out.get("rope_parameters") or {"rope_type": "default"})
        rope["rope_theta"] = float(c.rope_theta)
        for legacy in ("rope_theta", "rope_scaling"):
            out.pop(legacy, None)
        if "layer_types" in out and len(out["layer_types"]) != c.n_layers:
            out["layer_types"] = _layer_types(out["layer_types"], c.n_layers, self.model_type)
        out.update(
            sizes_to_hf(c),
            num_key_value_heads=int(c.n_kv_heads),
            head_dim=int(c.qk_head_dim),
            rms_norm_eps=float(c.norm_eps),
            rope_parameters=rope,
        )
        return out


def _layer_types(types: list[str], n_layers: int, family: str) -> list[str]:
    """``layer_types`` for a new layer count: only a uniform list can be extended."""
    if len(set(types)) > 1:
        raise FormatError(
            f"{family} config.json: layer_types mixes {sorted(set(types))}; growing n_layers "
            "would change which layers use sliding attention, so only uniform layer_types "
            "can grow in depth"
        )
    return [types[0]] * n_layers


class Llama(LlamaStyle):
    model_type = "llama"
    architecture = "LlamaForCausalLM"

    def biases(self, hf: Mapping[str, Any]) -> dict[str, bool]:
        attention = bool(hf.get("attention_bias", False))
        return {
            "attn_bias": attention,
            "attn_out_bias": attention,
            "mlp_bias": bool(hf.get("mlp_bias", False)),
        }

    def check_storable(self, config: ModelConfig) -> None:
        super().check_storable(config)
        if config.hidden % config.n_heads:
            raise FormatError(
                f"LlamaConfig requires hidden_size to be a multiple of num_attention_heads: "
                f"hidden={config.hidden}, n_heads={config.n_heads}"
            )


class Qwen2(LlamaStyle):
    model_type = "qwen2"
    architecture = "Qwen2ForCausalLM"
    default_kv_heads = 32

    def biases(self, hf: Mapping[str, Any]) -> dict[str, bool]:
        return {"attn_bias": True, "attn_out_bias": False, "mlp_bias": False}


class Mistral(LlamaStyle):
    model_type = "mistral"
    architecture = "MistralForCausalLM"
    default_kv_heads = 8

    def biases(self, hf: Mapping[str, Any]) -> dict[str, bool]:
        return {"attn_bias": False, "attn_out_bias": False, "mlp_bias": False}
