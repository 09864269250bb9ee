"""Shared helpers for the core tests: tiny model variants, perturbed weights, exactness checks.

Every model built here is perturbed away from the library's initialization (norm gains around
1, non-zero biases, logits of order 10) so that an expansion cannot pass a test by accident
(zero biases, unit gains or near-zero logits hide most mistakes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from growformer import GrowthOptions, ModelConfig, ResizeRecord, Transformer
from growformer.cli import main

VOCAB = 40
SEQ = 16

# Relative tolerances on max |logit difference| / max(1, max |logit|).
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])


def tiny_config(**changes) -> ModelConfig:
    """A 2-layer, hidden-32 model over a 40-token vocabulary and 16 positions."""
    base = {
        "vocab_size": VOCAB,
        "max_seq_len": SEQ,
        "n_layers": 2,
        "hidden": 32,
        "n_heads": 4,
        "ffn": 48,
    }
    return ModelConfig(**{**base, **changes})


# Pre-norm variants: between them they cover rms/layer norms, rope/learned positions,
# swiglu/gelu/relu MLPs, MHA/GQA/MQA, tied/untied embeddings, every bias flag, final norm on/off,
# decoder/encoder, head dims that differ from hidden/heads, and a large eps (so an unscaled eps
# would show).
VARIANTS: dict[str, ModelConfig] = {
    "llama_mha": tiny_config(),
    "llama_gqa_tied_eps": tiny_config(
        n_kv_heads=2, tie_embeddings=True, rope_theta=500.0, norm_eps=1e-2
    ),
    "qwen_mqa_qkv_bias": tiny_config(n_kv_heads=1, attn_bias=True, hidden=40, n_heads=4),
    "gpt2_all_bias": tiny_config(
        norm="layer",
        position="learned",
        mlp="gelu",
        attn_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
    ),
    "ln_rope_relu_gqa_nofinal": tiny_config(
        norm="layer",
        mlp="relu",
        n_kv_heads=2,
        final_norm=False,
        mlp_bias=True,
        attn_out_bias=True,
        norm_eps=1e-2,
    ),
    "rms_learned_relu_tied_nofinal": tiny_config(
        position="learned", mlp="relu", final_norm=False, tie_embeddings=True, attn_bias=True
    ),
    "ln_learned_swiglu_tied_headdims": tiny_config(
        norm="layer",
        position="learned",
        hidden=40,
        n_kv_heads=2,
        qk_head_dim=6,
        v_head_dim=12,
        tie_embeddings=True,
        mlp_bias=True,
    ),
    "rms_rope_gelu_encoder_headdims_nofinal": tiny_config(
        causal=False,
        mlp="gelu",
        hidden=36,
        n_heads=3,
        qk_head_dim=10,
        v_head_dim=6,
        final_norm=False,
    ),
}

# BERT-like post-norm encoder: exact for heads, head dims and MLP width only.
POST_NORM = tiny_config(
    norm="layer",
    norm_placement="post",
    position="learned",
    causal=False,
    mlp="gelu",
    attn_bias=True,
    attn_out_bias=True,
    mlp_bias=True,
    norm_eps=1e-3,
)

Target = Callable[[ModelConfig], dict[str, int]]


def _heads_in_groups(c: ModelConfig) -> dict[str, int]:
    """One more query head in every kv group."""
    return {"n_heads": c.n_heads + c.n_kv_heads, "n_kv_heads": c.n_kv_heads}


def _heads_new_groups(c: ModelConfig) -> dict[str, int]:
    """One more whole kv group, group size kept."""
    return {"n_heads": c.n_heads + c.group_size, "n_kv_heads": c.n_kv_heads + 1}


def _heads_both(c: ModelConfig) -> dict[str, int]:
    """One more kv group and one more query head per group."""
    return {"n_heads": (c.n_kv_heads + 1) * (c.group_size + 1), "n_kv_heads": c.n_kv_heads + 1}


ZERO = GrowthOptions()
TILE = GrowthOptions(width_init="tile", seed=3)

# name -> (target as a function of the source config, options)
EXPANSIONS: dict[str, tuple[Target, GrowthOptions]] = {
    "ffn_zero": (lambda c: {"ffn": c.ffn + 13}, ZERO),
    "ffn_tile_x2": (lambda c: {"ffn": 2 * c.ffn}, TILE),
    "ffn_tile_uneven": (lambda c: {"ffn": c.ffn + 13}, TILE),
    "heads_in_groups_zero": (_heads_in_groups, ZERO),
    "heads_in_groups_tile": (_heads_in_groups, TILE),
    "heads_new_groups_zero": (_heads_new_groups, GrowthOptions(seed=5)),
    "heads_new_groups_tile": (_heads_new_groups, TILE),
    "heads_both_zero": (_heads_both, ZERO),
    "heads_both_tile": (_heads_both, TILE),
    "v_dim_zero": (lambda c: {"v_head_dim": c.v_head_dim + 4}, ZERO),
    "v_dim_tile_uneven": (lambda c: {"v_head_dim": c.v_head_dim + 5}, TILE),
    "qk_dim_plus2": (lambda c: {"qk_head_dim": c.qk_head_dim + 2}, ZERO),
    "qk_dim_plus8": (lambda c: {"qk_head_dim": c.qk_head_dim + 8}, GrowthOptions(seed=1)),
    "hidden_plus16": (lambda c: {"hidden": c.hidden + 16}, ZERO),
    "hidden_plus7": (lambda c: {"hidden": c.hidden + 7}, GrowthOptions(seed=2)),
    "layers_end_identity": (lambda c: {"n_layers": c.n_layers + 2}, ZERO),
    "layers_end_copy": (lambda c: {"n_layers": c.n_layers + 1}, GrowthOptions(layer_init="copy")),
    "layers_middle_identity": (
        lambda c: {"n_layers": c.n_layers + 2},
        GrowthOptions(where="middle"),
    ),
    "layers_interleave_copy": (
        lambda c: {"n_layers": c.n_layers + 2},
        GrowthOptions(where="interleave", layer_init="copy"),
    ),
    "layers_explicit_identity": (
        lambda c: {"n_layers": c.n_layers + 2},
        GrowthOptions(where=(0, 3)),
    ),
    "layers_explicit_copy": (
        lambda c: {"n_layers": c.n_layers + 3},
        GrowthOptions(where=(0, 2, 4), layer_init="copy"),
    ),
    "max_seq_len": (lambda c: {"max_seq_len": c.max_seq_len + 8}, ZERO),
    "all_fields_zero": (
        lambda c: {
            **_heads_both(c),
            "hidden": c.hidden + 8,
            "qk_head_dim": c.qk_head_dim + 2,
            "v_head_dim": c.v_head_dim + 3,
            "ffn": c.ffn + 16,
            "n_layers": c.n_layers + 1,
            "max_seq_len": c.max_seq_len + 4,
        },
        GrowthOptions(where="middle", seed=11),
    ),
    "all_fields_tile": (
        lambda c: {
            **_heads_in_groups(c),
            "hidden": c.hidden + 4,
            "qk_head_dim": c.qk_head_dim + 4,
            "v_head_dim": c.v_head_dim + 2,
            "ffn": 3 * c.ffn,
            "n_layers": c.n_layers + 2,
        },
        GrowthOptions(width_init="tile", layer_init="copy", where="interleave", seed=4),
    ),
}

# The expansions that post-norm models support exactly, and those that need approximate=True.
POST_NORM_EXACT = [
    name
    for name in EXPANSIONS
    if name.startswith(("ffn", "heads", "v_dim", "qk_dim", "max_seq_len"))
]
POST_NORM_INEXACT = [name for name in EXPANSIONS if name.startswith(("hidden", "layers", "all"))]


def expansion(name: str, config: ModelConfig) -> tuple[dict[str, int], GrowthOptions]:
    """The target and options of the named expansion for ``config``."""
    target, options = EXPANSIONS[name]
    return target(config), options


def tokens_for(config: ModelConfig, batch: int = 2, seq: int | None = None, seed: int = 1234):
    """A fixed random batch of token ids, [batch, seq] (seq defaults to max_seq_len)."""
    gen = torch.Generator().manual_seed(seed)
    seq = config.max_seq_len if seq is None else seq
    return torch.randint(0, config.vocab_size, (batch, seq), generator=gen)


def make_model(
    config: ModelConfig, dtype: torch.dtype = torch.float64, seed: int = 0
) -> Transformer:
    """A Transformer with weights perturbed so that nothing passes a test by accident.

    Norm gains 1 + 0.3·N(0, 1), every bias N(0, 0.2²), Linear weights N(0, 1/fan_in) (Q, K
    twice that scale so attention is far from uniform), embeddings of order 1 and an output
    projection scaled so that the logits are of order 10; checked on ``tokens_for(config)``.
    """
    gen = torch.Generator().manual_seed(seed)
    model = Transformer(config).to(dtype)

    def randn(shape) -> Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * randn(p.shape))
            elif name.endswith("bias"):
                p.copy_(0.2 * randn(p.shape))
            elif name == "tok_emb.weight":
                scale = 0.5 if config.tie_embeddings and not config.final_norm else 1.0
                p.copy_(scale * randn(p.shape))
            elif name == "pos_emb.weight":
                p.copy_(0.5 * randn(p.shape))
            elif name == "lm_head.weight":
                p.copy_(randn(p.shape) * 2.5 / math.sqrt(config.hidden))
            else:
                gain = 2.0 if name.endswith(("attn.q.weight", "attn.k.weight")) else 1.0
                p.copy_(randn(p.shape) * gain / math.sqrt(p.shape[1]))
        scale = float(model(tokens_for(config)).abs().max())
    assert 3 <= scale <= 100, f"max |logit| {scale:.3g} outside [3, 100] for {config}"
    return model


def logit_error(a: Transformer, b: Transformer, tokens: Tensor) -> tuple[float, float]:
    """(max |logit difference|, max(1, max |logit of a|)) on ``tokens``."""
    with torch.no_grad():
        la, lb = a(tokens), b(tokens)
    assert la.shape == lb.shape, f"logit shapes differ: {tuple(la.shape)} vs {tuple(lb.shape)}"
    return float((la - lb).abs().max()), max(1.0, float(la.abs().max()))


def relative_error(a: Transformer, b: Transformer, tokens: Tensor) -> float:
    err, scale = logit_error(a, b, tokens)
    return err / scale


def assert_same_function(a: Transformer, b: Transformer, tokens: Tensor, rtol: float) -> float:
    """Assert max |logit diff| <= rtol · max(1, max |logit|); returns the relative error."""
    err, scale = logit_error(a, b, tokens)
    assert err <= rtol * scale, (
        f"max |logit diff| {err:.3e} exceeds {rtol:.0e} x max(1, max|logit|) = {rtol * scale:.3e} "
        f"(relative error {err / scale:.3e})"
    )
    return err / scale


def full_batch(config: ModelConfig, batch: int = 4, seed: int = 0) -> Tensor:
    """[batch, max_seq_len + 1] token ids for next-token training whose inputs (all but the
    last column) contain every token id, so every embedding row and position gets gradient."""
    gen = torch.Generator().manual_seed(seed)
    seq = config.max_seq_len
    assert batch * seq >= config.vocab_size, "batch too small to hold every token id"
    inputs = torch.randint(0, config.vocab_size, (batch * seq,), generator=gen)
    spots = torch.randperm(batch * seq, generator=gen)[: config.vocab_size]
    inputs[spots] = torch.randperm(config.vocab_size, generator=gen)
    inputs = inputs.view(batch, seq)
    last = torch.randint(0, config.vocab_size, (batch, 1), generator=gen)
    return torch.cat([inputs, last], dim=1)


def next_token_loss(model: Transformer, batch: Tensor) -> Tensor:
    """Cross entropy of predicting ``batch[:, 1:]`` from ``batch[:, :-1]``."""
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def train_step(model: Transformer, optimizer: torch.optim.Optimizer, batch: Tensor) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = next_token_loss(model, batch)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def adamw(params, lr: float = 1e-2) -> torch.optim.AdamW:
    """AdamW without weight decay (so a zero gradient leaves an entry exactly where it is)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def snapshot(model: Transformer) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def gather_old(old: Tensor, index: tuple[Tensor | None, ...]) -> Tensor:
    """``old`` read at a record's index (new entries read position 0; mask them out)."""
    out = old
    for d, idx in enumerate(index):
        if idx is not None:
            out = out.index_select(d, idx.clamp(min=0))
    return out


def new_layer_indices(model: Transformer) -> set[int]:
    """Layers whose W_O is entirely zero: right after growth, the inserted ones (every layer of
    a ``make_model`` source has a random W_O)."""
    return {i for i, layer in enumerate(model.layers) if not layer.attn.o.weight.any()}


def layer_of(name: str) -> int | None:
    return int(name.split(".")[1]) if name.startswith("layers.") else None


def new_entry_masks(model: Transformer, record: ResizeRecord) -> Mapping[str, Tensor]:
    """Per parameter of a grown model: True at the entries the record marks as new."""
    return {name: ~record[name].carried_mask(p.shape) for name, p in model.named_parameters()}


def cli(*args: object) -> int:
    """``growformer *args`` in this process (each argument as a string); its exit status."""
    return main([str(a) for a in args])


def check_overwrite(
    src: Path, dst: Path, capsys: pytest.CaptureFixture[str], *args: object
) -> None:
    """``growformer grow src dst *args`` refuses a non-empty ``dst`` and leaves it as it was;
    with ``--overwrite`` it succeeds and replaces ``dst`` (the file there is gone)."""
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert cli("grow", src, dst, *args) == 2
    assert "not empty" in capsys.readouterr().err
    assert (dst / "keep.txt").read_text() == "mine"
    assert cli("grow", src, dst, *args, "--overwrite") == 0
    assert not (dst / "keep.txt").exists()
