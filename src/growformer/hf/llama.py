"""Llama, Qwen2 and Mistral (``model_type: llama | qwen2 | mistral``) ⇄ the canonical model.

Pre-RMSNorm decoders with SwiGLU (gate, up, down), RoPE and grouped kv heads: the canonical
model's own layout, so the tables are plain renames. Hugging Face checkpoints already hold Q
and K in the rotate-half RoPE layout (the Meta → Hugging Face conversion permuted them), which
is the canonical layout: no permutation is needed. The families differ in their biases: Llama's
``attention_bias`` covers Q, K, V and O and ``mlp_bias`` the MLP; Qwen2 always has Q/K/V biases
and nothing else; Mistral has none.

Config facts of transformers 5 handled here: the RoPE base lives in
``rope_parameters["rope_theta"]``, but a legacy ``rope_scaling`` replaces ``rope_parameters``
whole and a legacy top-level ``rope_theta`` is the default base (both dropped on writing);
``head_dim`` is always written (Qwen2Config has no such field but keeps it as an extra key;
without it head_dim silently becomes hidden/heads); LlamaConfig requires hidden % heads == 0.
Only the default RoPE is supported. Sliding-window attention (Mistral's ``sliding_window``,
Qwen2's ``use_sliding_window``) is kept in the config; the canonical model attends to the full
context, so it equals the family's forward for sequences up to the window. Qwen2's per-layer
attention types (``layer_types``, or without it ``max_window_layers``) follow the layers when
growth or shrinking changes the depth (``Family.config_for_layers``).
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from growformer.config import ModelConfig
from growformer.hf.family import (
    SCORE_HEAD,
    Family,
    FormatError,
    canonical_config,
    check_setting,
    flag,
    number,
    renames,
    require,
    sizes_from_hf,
    sizes_to_hf,
)

_FULL = "full_attention"
_SLIDING = "sliding_attention"
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


def rope_parameters(hf: Mapping[str, Any], family: str) -> dict[str, Any]:
    """The RoPE parameters transformers uses: a legacy ``rope_scaling`` when present (it
    replaces ``rope_parameters`` whole), else ``rope_parameters``; the base defaults to a
    legacy top-level ``rope_theta``, else 10000. The type is normalized to ``rope_type``.

    Raises ``FormatError`` for any RoPE other than the default (scaled, partial, per layer type).
    """
    key = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    params = hf.get(key) or {}
    if not isinstance(params, Mapping):
        raise FormatError(f"{family} config.json: {key} must be an object")
    params = dict(params)
    params["rope_type"] = params.pop("type", None) or params.get("rope_type", "default")
    check_setting(family, f"{key}.rope_type", params["rope_type"], ("default",))
    check_setting(
        family,
        f"{key}.partial_rotary_factor",
        params.get("partial_rotary_factor", 1.0),
        (1.0,),
    )
    unknown = sorted(set(params) - {"rope_type", "rope_theta", "partial_rotary_factor"})
    if unknown:
        raise FormatError(
            f"{family} config.json: {key} {unknown} are not supported; "
            "allowed: rope_type, rope_theta"
        )
    base = number(hf.get("rope_theta"), "rope_theta", family, 10000.0)
    params["rope_theta"] = number(params.get("rope_theta"), f"{key}.rope_theta", family, base)
    return params


def rope_theta(hf: Mapping[str, Any], family: str) -> float:
    """The RoPE base transformers uses for ``hf`` (see ``rope_parameters``)."""
    return rope_parameters(hf, family)["rope_theta"]


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
        kv_heads = hf.get("num_key_value_heads", self.default_kv_heads)
        return canonical_config(
            name,
            vocab_size=require(hf, "vocab_size", name),
            **sizes,
            n_kv_heads=sizes["n_heads"] if kv_heads is None else kv_heads,
            qk_head_dim=head_dim,
            v_head_dim=head_dim,
            norm="rms",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            position="rope",
            rope_theta=rope_theta(hf, name),
            mlp="swiglu",
            tie_embeddings=flag(hf, "tie_word_embeddings", name, False),
            init_std=hf.get("initializer_range", 0.02),
            **self.biases(hf),
        )

    def layer_types(self, hf: Mapping[str, Any]) -> list[str] | None:
        """Each layer's attention type as transformers reads ``hf`` (``layer_types``), or None
        when the config has none."""
        types = hf.get("layer_types")
        return list(types) if isinstance(types, list) else None

    def with_layer_types(self, hf: Mapping[str, Any], types: list[str]) -> dict:
        """``hf`` with ``types`` as its layers' attention types."""
        return {**hf, "layer_types": list(types)}

    def config_for_layers(self, hf: Mapping[str, Any], layers: Sequence[int]) -> dict:
        types = self.layer_types(hf)
        if types is None:
            return dict(hf)
        return self.with_layer_types(hf, [types[i] for i in layers])

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
        rope = {**rope_parameters(out, self.model_type), "rope_theta": float(c.rope_theta)}
        for legacy in ("rope_theta", "rope_scaling"):
            out.pop(legacy, None)
        types = self.layer_types(out)
        if types is not None and len(types) != c.n_layers:
            out = self.with_layer_types(out, _extended(types, c.n_layers, self.model_type))
        out.update(
            sizes_to_hf(c),
            num_key_value_heads=int(c.n_kv_heads),
            head_dim=int(c.qk_head_dim),
            rms_norm_eps=float(c.norm_eps),
            rope_parameters=rope,
        )
        return out


def _extended(types: list[str], n_layers: int, family: str) -> list[str]:
    """``layer_types`` for a new layer count when which source layer each layer came from is
    not known (weights grown elsewhere): only a uniform list can be extended."""
    if len(set(types)) > 1:
        raise FormatError(
            f"{family} config.json: layer_types mixes {sorted(set(types))}; without knowing "
            "where the new layers went, growing n_layers would change which layers use sliding "
            "attention (grow the Hugging Face model itself, whose growth places them)"
        )
    return [types[0]] * n_layers


class Llama(LlamaStyle):
    model_type = "llama"
    architecture = "LlamaForCausalLM"

    def biases(self, hf: Mapping[str, Any]) -> dict[str, bool]:
        attention = flag(hf, "attention_bias", self.model_type, False)
        return {
            "attn_bias": attention,
            "attn_out_bias": attention,
            "mlp_bias": flag(hf, "mlp_bias", self.model_type, False),
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

    def layer_types(self, hf: Mapping[str, Any]) -> list[str]:
        """``layer_types``, else derived as ``Qwen2Config`` does for configs without it (the
        Hub's Qwen2 and Qwen2.5 ones): layers from ``max_window_layers`` on use sliding
        attention when ``use_sliding_window`` is on and ``sliding_window`` is set."""
        types = super().layer_types(hf)
        if types is not None:
            return types
        window = hf.get("sliding_window", 4096) if hf.get("use_sliding_window", False) else None
        first = hf.get("max_window_layers", 28)
        n_layers = require(hf, "num_hidden_layers", self.model_type)
        return [_SLIDING if window is not None and i >= first else _FULL for i in range(n_layers)]

    def with_layer_types(self, hf: Mapping[str, Any], types: list[str]) -> dict:
        """Also ``max_window_layers`` where it can say the same (full layers, then sliding
        ones), for readers that derive the types from it."""
        out = super().with_layer_types(hf, types)
        full = next((i for i, t in enumerate(types) if t != _FULL), len(types))
        if out.get("use_sliding_window", False) and set(types[full:]) <= {_SLIDING}:
            out["max_window_layers"] = full
        return out


class Mistral(LlamaStyle):
    model_type = "mistral"
    architecture = "MistralForCausalLM"
    default_kv_heads = 8

    def biases(self, hf: Mapping[str, Any]) -> dict[str, bool]:
        return {"attn_bias": False, "attn_out_bias": False, "mlp_bias": False}
