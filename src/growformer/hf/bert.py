"""BERT (``model_type: bert``: BertModel and the Bert…For… heads) ⇄ the canonical model.

A post-LayerNorm encoder: the embedding sum passes through ``embeddings.LayerNorm`` (canonical
``emb_norm``), each block is ``x = N1(x + Attn(x)); x = N2(x + MLP(x))``, no final norm; the
canonical ``hidden_states`` are BERT's last hidden state.

BERT adds the token-type embedding of each token (type 0 unless given). The canonical model has
no token types, so type 0 is folded into the position table: canonical ``pos_emb`` = positions
+ token_type[0], and the canonical forward equals BERT's for token type 0. On writing, the fold
is undone exactly: every entry whose folded value is unchanged gets its source bits back
(``Source.kept`` holds the source table), the others are unfolded by subtraction.

Extras (carried under their Hugging Face names): the token-type table, the pooler, the heads
(MLM ``cls.predictions``, NSP ``cls.seq_relationship``, ``classifier``, ``qa_outputs``) and the
``position_ids``/``token_type_ids`` buffers some checkpoints store. Growth of heads, head dims and
MLP width leaves them as they are; a longer context regenerates the buffers; hidden growth
(approximate in a post-norm model anyway) mean-fills the token-type table like every embedding,
zero-fills the new input columns and output rows of the pooler and heads, and gives the MLM
transform's LayerNorm new gains equal to the mean of the old ones.

BertConfig ties the head size to hidden/heads, so of the exact expansions only MLP width (and
the context length) can be saved as BERT; heads and head dims grow exactly in memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from growformer.config import ModelConfig
from growformer.hf.family import (
    Canonical,
    Family,
    FormatError,
    Source,
    canonical_config,
    check_setting,
    flag,
    renames,
    require,
    sizes_from_hf,
    sizes_to_hf,
)
from growformer.model_io import CheckpointError

ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}

POSITIONS = "embeddings.position_embeddings.weight"
TOKEN_TYPES = "embeddings.token_type_embeddings.weight"

# Buffers some checkpoints store, rebuilt for a new max_seq_len.
BUFFERS: dict[str, Callable[[int, Tensor], Tensor]] = {
    "embeddings.position_ids": lambda n, old: torch.arange(n, dtype=old.dtype)[None],
    "embeddings.token_type_ids": lambda n, old: torch.zeros((1, n), dtype=old.dtype),
}

# Extras (base-model names without prefix; head names as they are) → for hidden growth, each
# hidden-sized dimension and the fill of its new entries.
HIDDEN_DIMS: dict[str, tuple[tuple[int, str], ...]] = {
    TOKEN_TYPES: ((1, "mean"),),
    "pooler.dense.weight": ((0, "zero"), (1, "zero")),
    "pooler.dense.bias": ((0, "zero"),),
    "cls.predictions.transform.dense.weight": ((0, "zero"), (1, "zero")),
    "cls.predictions.transform.dense.bias": ((0, "zero"),),
    "cls.predictions.transform.LayerNorm.weight": ((0, "mean"),),
    "cls.predictions.transform.LayerNorm.bias": ((0, "zero"),),
    "cls.predictions.decoder.weight": ((1, "zero"),),
    "cls.seq_relationship.weight": ((1, "zero"),),
    "classifier.weight": ((1, "zero"),),
    "qa_outputs.weight": ((1, "zero"),),
}
# Extras with no hidden-sized dimension.
OTHER_EXTRAS = (
    POSITIONS,
    *BUFFERS,
    "cls.predictions.bias",
    "cls.predictions.decoder.bias",
    "cls.seq_relationship.bias",
    "classifier.bias",
    "qa_outputs.bias",
)


def fold(positions: Tensor, token_type_0: Tensor) -> Tensor:
    """The canonical position table: positions + the token-type-0 embedding (in float64)."""
    return (positions.double() + token_type_0.double()).to(positions.dtype)


def unfold(folded: Tensor, token_type_0: Tensor, reference: Tensor | None) -> Tensor:
    """A BERT position table whose ``fold`` is ``folded``: the ``reference`` entries (the source
    table) wherever they still fold to it, the difference elsewhere."""
    out = (folded.double() - token_type_0.double()).to(folded.dtype)
    if reference is not None:
        rows, cols = min(len(reference), len(folded)), min(reference.shape[1], folded.shape[1])
        ref = reference[:rows, :cols]
        unchanged = folded[:rows, :cols] == fold(ref, token_type_0[:cols])
        out[:rows, :cols] = torch.where(unchanged, ref, out[:rows, :cols])
    return out


_LEGACY_NORM = re.compile(r"(LayerNorm)\.(gamma|beta)$")


def _modern_norm(match: re.Match[str]) -> str:
    return f"{match[1]}.{'weight' if match[2] == 'gamma' else 'bias'}"


class Bert(Family):
    model_type = "bert"
    architecture = "BertModel"
    base_prefix = "bert."
    layer_prefix = "encoder.layer."
    embedding = "embeddings.word_embeddings.weight"
    tied_by_default = True
    extra_hidden_dims = HIDDEN_DIMS
    extra_writers = frozenset({TOKEN_TYPES})
    top = renames(
        {
            "embeddings.word_embeddings.weight": "tok_emb.weight",
            "embeddings.LayerNorm.weight": "emb_norm.weight",
            "embeddings.LayerNorm.bias": "emb_norm.bias",
        }
    )
    layer = renames(
        {
            "attention.self.query.weight": "attn.q.weight",
            "attention.self.query.bias": "attn.q.bias",
            "attention.self.key.weight": "attn.k.weight",
            "attention.self.key.bias": "attn.k.bias",
            "attention.self.value.weight": "attn.v.weight",
            "attention.self.value.bias": "attn.v.bias",
            "attention.output.dense.weight": "attn.o.weight",
            "attention.output.dense.bias": "attn.o.bias",
            "attention.output.LayerNorm.weight": "attn_norm.weight",
            "attention.output.LayerNorm.bias": "attn_norm.bias",
            "intermediate.dense.weight": "mlp.up.weight",
            "intermediate.dense.bias": "mlp.up.bias",
            "output.dense.weight": "mlp.down.weight",
            "output.dense.bias": "mlp.down.bias",
            "output.LayerNorm.weight": "mlp_norm.weight",
            "output.LayerNorm.bias": "mlp_norm.bias",
        }
    )

    def from_hf(self, hf_config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> Canonical:
        """As ``Family.from_hf``; the LayerNorm ``gamma``/``beta`` of old checkpoints (as
        google-bert/bert-base-uncased stores them) are read as ``weight``/``bias``, the names
        the model is written back with."""
        return super().from_hf(
            hf_config, {_LEGACY_NORM.sub(_modern_norm, n): t for n, t in tensors.items()}
        )

    def config_from_hf(self, hf: Mapping[str, Any]) -> ModelConfig:
        name = self.model_type
        check_setting(
            name,
            "position_embedding_type",
            hf.get("position_embedding_type", "absolute"),
            ("absolute",),
        )
        check_setting(name, "add_cross_attention", hf.get("add_cross_attention", False), (False,))
        activation = hf.get("hidden_act", "gelu")
        check_setting(name, "hidden_act", activation, tuple(ACTIVATIONS))
        return canonical_config(
            name,
            vocab_size=require(hf, "vocab_size", name),
            **sizes_from_hf(hf, name),
            norm="layer",
            norm_eps=hf.get("layer_norm_eps", 1e-12),
            norm_placement="post",
            final_norm=False,
            position="learned",
            mlp=ACTIVATIONS[activation],
            attn_bias=True,
            attn_out_bias=True,
            mlp_bias=True,
            tie_embeddings=True,
            causal=flag(hf, "is_decoder", name, False),
            init_std=hf.get("initializer_range", 0.02),
        )

    def check_storable(self, config: ModelConfig) -> None:
        c = config
        if (
            c.n_kv_heads != c.n_heads
            or c.qk_head_dim != c.v_head_dim
            or c.n_heads * c.qk_head_dim != c.hidden
        ):
            raise FormatError(
                "BertConfig ties the head size to hidden_size/num_attention_heads: a BERT folder "
                "needs n_kv_heads = n_heads and n_heads·head_dim = hidden with one head dim for "
                f"q, k and v; got n_heads={c.n_heads}, n_kv_heads={c.n_kv_heads}, "
                f"qk_head_dim={c.qk_head_dim}, v_head_dim={c.v_head_dim}, hidden={c.hidden} "
                "(grow heads with hidden, keeping hidden/heads; of the exact expansions only "
                "MLP width can be saved as BERT)"
            )

    def config_to_hf(self, config: ModelConfig, source: Mapping[str, Any]) -> dict:
        self.check_storable(config)
        c = config
        out = dict(source)
        out.update(
            sizes_to_hf(c),
            layer_norm_eps=float(c.norm_eps),
            is_decoder=c.causal,
        )
        return out

    def ties(self, hf: Mapping[str, Any], prefix: str) -> dict[str, str]:
        if not flag(hf, "tie_word_embeddings", self.model_type, self.tied_by_default):
            return {}
        return {
            "cls.predictions.decoder.weight": prefix + self.embedding,
            "cls.predictions.decoder.bias": "cls.predictions.bias",
        }

    def is_extra(self, name: str, prefix: str) -> bool:
        return super().is_extra(name, prefix) or self.relative(name, prefix) in OTHER_EXTRAS

    def after_read(
        self,
        config: ModelConfig,
        state: dict[str, Tensor],
        extras: dict[str, Tensor],
        source: Source,
    ) -> dict[str, Tensor]:
        """Fold the token-type-0 embedding into the position table (kept for ``unfold``)."""
        names = [source.prefix + POSITIONS, source.prefix + TOKEN_TYPES]
        missing = [n for n in names if n not in extras]
        if missing:
            raise CheckpointError(f"the weights do not match config.json (bert): missing {missing}")
        positions = extras.pop(names[0])
        state["pos_emb.weight"] = fold(positions, extras[names[1]][0])
        return {POSITIONS: positions}

    def before_write(
        self,
        config: ModelConfig,
        state: dict[str, Tensor],
        extras: Mapping[str, Tensor],
        source: Source,
    ) -> dict[str, Tensor]:
        out = dict(extras)
        token_type_0 = extras[source.prefix + TOKEN_TYPES][0]
        reference = source.kept.get(POSITIONS)
        out[source.prefix + POSITIONS] = unfold(
            state.pop("pos_emb.weight"), token_type_0, reference
        )
        return out

    def grow_extras(
        self, old: ModelConfig, new: ModelConfig, extras: dict[str, Tensor], source: Source
    ) -> dict[str, Tensor]:
        """Hidden dimensions as every family grows them; a longer context regenerates the
        position buffers."""
        extras = super().grow_extras(old, new, extras, source)
        if new.max_seq_len == old.max_seq_len:
            return extras
        out = {}
        for name, tensor in extras.items():
            relative = self.relative(name, source.prefix)
            out[name] = (
                BUFFERS[relative](new.max_seq_len, tensor) if relative in BUFFERS else tensor
            )
        return out
