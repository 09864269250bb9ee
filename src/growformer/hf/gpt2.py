"""GPT-2 (``model_type: gpt2``, GPT2LMHeadModel / GPT2Model) ⇄ the canonical model.

Pre-LayerNorm decoder with learned positions, a final ``ln_f``, biases everywhere and (by
default) the output tied to ``wte``. Two layout facts need code:

- Conv1D stores weights as (in, out), the transpose of ``nn.Linear``: every matrix is read
  transposed (a view) and transposed back on writing.
- ``c_attn`` fuses Q, K and V along its output axis: split on reading, concatenated on writing.

Attention scales by 1/sqrt(head_dim) (``scale_attn_weights``); ``gelu_new`` (also
``gelu_fast``, ``gelu_pytorch_tanh``) is the tanh approximation of GELU. GPT2Config stores no
head_dim, so only configs with n_heads·head_dim = hidden, one head dim for q, k and v and no
grouped kv heads can be saved; ``n_inner`` is written explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from growformer.config import ModelConfig
from growformer.hf.family import (
    SCORE_HEAD,
    Family,
    FormatError,
    Rule,
    canonical_config,
    check_setting,
    flag,
    renames,
    require,
    sizes_from_hf,
    sizes_to_hf,
)

# activation_function → canonical mlp.
ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
}


def transposed(name: str) -> Rule:
    """A Conv1D weight, stored (in, out)."""
    return Rule((name,), lambda t, c: (t.t(),), lambda ts, c: ts[0].t())


def _qkv_sizes(c: ModelConfig) -> list[int]:
    return [c.n_heads * c.qk_head_dim, c.n_kv_heads * c.qk_head_dim, c.n_kv_heads * c.v_head_dim]


def _split_qkv_weight(t: Tensor, c: ModelConfig) -> tuple[Tensor, ...]:
    return tuple(part.t() for part in t.split(_qkv_sizes(c), dim=1))


def _join_qkv_weight(ts: tuple[Tensor, ...], c: ModelConfig) -> Tensor:
    return torch.cat([t.t() for t in ts], dim=1)


def _split_qkv_bias(t: Tensor, c: ModelConfig) -> tuple[Tensor, ...]:
    return tuple(t.split(_qkv_sizes(c)))


def _join_qkv_bias(ts: tuple[Tensor, ...], c: ModelConfig) -> Tensor:
    return torch.cat(ts)


QKV = ("attn.q", "attn.k", "attn.v")

# Canonical size field → config.json key (``n_inner``, the MLP width, may be absent: 4·hidden).
GPT2_SIZE_KEYS = {
    "max_seq_len": "n_positions",
    "n_layers": "n_layer",
    "hidden": "n_embd",
    "n_heads": "n_head",
}


class GPT2(Family):
    model_type = "gpt2"
    architecture = "GPT2LMHeadModel"
    base_prefix = "transformer."
    layer_prefix = "h."
    embedding = "wte.weight"
    tied_by_default = True
    top = renames(
        {
            "wte.weight": "tok_emb.weight",
            "wpe.weight": "pos_emb.weight",
            "ln_f.weight": "final_norm.weight",
            "ln_f.bias": "final_norm.bias",
        }
    )
    layer: ClassVar[dict[str, Rule]] = {
        **renames(
            {
                "ln_1.weight": "attn_norm.weight",
                "ln_1.bias": "attn_norm.bias",
                "attn.c_proj.bias": "attn.o.bias",
                "ln_2.weight": "mlp_norm.weight",
                "ln_2.bias": "mlp_norm.bias",
                "mlp.c_fc.bias": "mlp.up.bias",
                "mlp.c_proj.bias": "mlp.down.bias",
            }
        ),
        "attn.c_attn.weight": Rule(
            tuple(f"{p}.weight" for p in QKV), _split_qkv_weight, _join_qkv_weight
        ),
        "attn.c_attn.bias": Rule(tuple(f"{p}.bias" for p in QKV), _split_qkv_bias, _join_qkv_bias),
        "attn.c_proj.weight": transposed("attn.o.weight"),
        "mlp.c_fc.weight": transposed("mlp.up.weight"),
        "mlp.c_proj.weight": transposed("mlp.down.weight"),
    }
    head = renames({"lm_head.weight": "lm_head.weight"})
    extra_hidden_dims = SCORE_HEAD
    ignored = re.compile(r"(^|\.)h\.\d+\.attn\.(masked_)?bias$")

    def config_from_hf(self, hf: Mapping[str, Any]) -> ModelConfig:
        name = self.model_type
        check_setting(name, "scale_attn_weights", hf.get("scale_attn_weights", True), (True,))
        check_setting(
            name,
            "scale_attn_by_inverse_layer_idx",
            hf.get("scale_attn_by_inverse_layer_idx", False),
            (False,),
        )
        check_setting(name, "add_cross_attention", hf.get("add_cross_attention", False), (False,))
        activation = hf.get("activation_function", "gelu_new")
        check_setting(name, "activation_function", activation, tuple(ACTIVATIONS))
        sizes = sizes_from_hf(hf, name, GPT2_SIZE_KEYS)
        return canonical_config(
            name,
            vocab_size=require(hf, "vocab_size", name),
            **sizes,
            ffn=hf.get("n_inner") or 4 * sizes["hidden"],
            norm="layer",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            position="learned",
            mlp=ACTIVATIONS[activation],
            attn_bias=True,
            attn_out_bias=True,
            mlp_bias=True,
            tie_embeddings=flag(hf, "tie_word_embeddings", name, True),
            init_std=hf.get("initializer_range", 0.02),
        )

    def check_storable(self, config: ModelConfig) -> None:
        c = config
        if c.n_kv_heads != c.n_heads:
            raise FormatError(
                f"GPT-2 has no grouped kv heads: n_kv_heads={c.n_kv_heads} must equal "
                f"n_heads={c.n_heads}"
            )
        if c.qk_head_dim != c.v_head_dim or c.n_heads * c.qk_head_dim != c.hidden:
            raise FormatError(
                "GPT-2 stores no head_dim (it is n_embd/n_head): n_heads·head_dim must equal "
                f"hidden with one head dim for q, k and v; got n_heads={c.n_heads}, "
                f"qk_head_dim={c.qk_head_dim}, v_head_dim={c.v_head_dim}, hidden={c.hidden} "
                "(grow hidden together with n_heads or the head dims)"
            )

    def config_to_hf(self, config: ModelConfig, source: Mapping[str, Any]) -> dict:
        self.check_storable(config)
        c = config
        out = dict(source)
        out.update(
            sizes_to_hf(c, GPT2_SIZE_KEYS),
            n_inner=int(c.ffn),
            layer_norm_epsilon=float(c.norm_eps),
        )
        return out
