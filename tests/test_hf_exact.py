"""Grown Hugging Face checkpoints compute the same function, measured through transformers' own
modeling code: source and grown folders both loaded with ``from_pretrained``, float32,
max |logit difference| ≤ 1e-5·max(1, max |logit|), for every field each family can store.

GPT-2 stores no head_dim, so its head count and head dims grow together with hidden; Llama-style
configs have one head_dim for q, k and v, so both grow together (RoPE head-dim growth moves the
base to theta^(k̂/k), written to ``rope_parameters``). LlamaConfig also requires hidden % heads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from growformer import GrowthOptions, ModelConfig, hf
from hf_tiny import RTOL, gpt2, llama, load, mistral, output, qwen2, relative_error, saved, tokens

Target = Callable[[ModelConfig], dict[str, int]]

ZERO = GrowthOptions(seed=1)
TILE = GrowthOptions(width_init="tile", seed=2)
COPY_MIDDLE = GrowthOptions(layer_init="copy", where="middle", seed=3)

# GPT-2: hidden = n_heads·head_dim always.
GPT2_TARGETS: dict[str, tuple[Target, GrowthOptions]] = {
    "ffn": (lambda c: {"ffn": c.ffn + 32}, ZERO),
    "ffn_tile": (lambda c: {"ffn": 2 * c.ffn}, TILE),
    "layers_copy_middle": (lambda c: {"n_layers": c.n_layers + 2}, COPY_MIDDLE),
    "positions": (lambda c: {"max_seq_len": c.max_seq_len + 8}, ZERO),
    "hidden_with_heads": (lambda c: {"hidden": c.hidden + 16, "n_heads": c.n_heads + 2}, ZERO),
    "hidden_with_head_dims": (
        lambda c: {
            "hidden": 2 * c.hidden,
            "qk_head_dim": 2 * c.qk_head_dim,
            "v_head_dim": 2 * c.v_head_dim,
        },
        TILE,
    ),
    "all": (
        lambda c: {
            "hidden": c.hidden + 16,
            "n_heads": c.n_heads + 2,
            "ffn": c.ffn + 48,
            "n_layers": c.n_layers + 1,
            "max_seq_len": c.max_seq_len + 4,
        },
        GrowthOptions(width_init="tile", layer_init="copy", where="interleave", seed=4),
    ),
}

# Llama-style: n_heads stays a divisor of hidden (LlamaConfig checks it).
LLAMA_TARGETS: dict[str, tuple[Target, GrowthOptions]] = {
    "hidden": (lambda c: {"hidden": c.hidden + 16}, ZERO),
    "heads_in_groups": (lambda c: {"n_heads": 2 * c.n_heads}, ZERO),
    "new_kv_groups": (lambda c: {"n_heads": 2 * c.n_heads, "n_kv_heads": 2 * c.n_kv_heads}, TILE),
    "head_dim_rope": (
        lambda c: {"qk_head_dim": c.qk_head_dim + 4, "v_head_dim": c.v_head_dim + 4},
        ZERO,
    ),
    "ffn": (lambda c: {"ffn": c.ffn + 32}, TILE),
    "layers_interleave": (
        lambda c: {"n_layers": c.n_layers + 2},
        GrowthOptions(where="interleave"),
    ),
    "positions": (lambda c: {"max_seq_len": c.max_seq_len + 8}, ZERO),
    "all": (
        lambda c: {
            "hidden": c.hidden + 16,
            "n_heads": 2 * c.n_heads,
            "n_kv_heads": 2 * c.n_kv_heads,
            "qk_head_dim": c.qk_head_dim + 4,
            "v_head_dim": c.v_head_dim + 4,
            "ffn": c.ffn + 48,
            "n_layers": c.n_layers + 1,
            "max_seq_len": c.max_seq_len + 4,
        },
        COPY_MIDDLE,
    ),
}

MODELS = {
    "gpt2_tied": (gpt2, GPT2_TARGETS),
    "gpt2_untied_gelu_eps": (  # eps 1e-2: an unscaled eps would show above RTOL
        lambda: gpt2(
            tie_word_embeddings=False, activation_function="gelu", layer_norm_epsilon=1e-2
        ),
        GPT2_TARGETS,
    ),
    "llama_tied_bias_eps": (
        lambda: llama(
            tie_word_embeddings=True, attention_bias=True, mlp_bias=True, rms_norm_eps=1e-2
        ),
        LLAMA_TARGETS,
    ),
    "llama_untied": (llama, LLAMA_TARGETS),
    "qwen2_gqa_qkv_bias": (lambda: qwen2(head_dim=12), LLAMA_TARGETS),
    "mistral_gqa": (
        lambda: mistral(rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
        LLAMA_TARGETS,
    ),
}
CASES = [(model, case) for model, (_, targets) in MODELS.items() for case in targets]


@pytest.mark.parametrize(("model", "case"), CASES, ids=[f"{m}-{c}" for m, c in CASES])
def test_grown_folder_has_the_same_logits_in_transformers(
    tmp_path: Path, model: str, case: str
) -> None:
    build, targets = MODELS[model]
    src = saved(build(), tmp_path / "src")
    target, options = targets[case]
    source = hf.read_folder(src)
    goal = target(source.config)
    _, grown = hf.grow_folder(src, tmp_path / "dst", goal, options)
    written = hf.read_folder(tmp_path / "dst").config
    assert (
        {f: getattr(written, f) for f in goal}
        == goal
        == {f: getattr(grown.config, f) for f in goal}
    )
    a, b = load(src), load(tmp_path / "dst")
    reference = output(a, tokens())
    assert float(reference.abs().max()) >= 3, "logits too small to show a mistake"
    error = relative_error(reference, output(b, tokens()))
    assert error <= RTOL, f"relative logit error {error:.3e}"


def test_rope_head_dim_growth_moves_the_base_in_rope_parameters(tmp_path: Path) -> None:
    src = saved(
        mistral(rope_parameters={"rope_type": "default", "rope_theta": 500.0}), tmp_path / "s"
    )
    hf.grow_folder(src, tmp_path / "d", {"qk_head_dim": 12, "v_head_dim": 12})
    config = load(tmp_path / "d").config
    assert config.head_dim == 12
    assert config.rope_parameters["rope_theta"] == pytest.approx(500.0 ** (12 / 8))


def test_qwen2_head_dim_is_written_and_layer_types_regenerated(tmp_path: Path) -> None:
    src = saved(qwen2(head_dim=12), tmp_path / "s")
    hf.grow_folder(src, tmp_path / "d", {"n_layers": 3})
    config = load(tmp_path / "d").config
    assert config.head_dim == 12
    assert config.layer_types == ["full_attention"] * 3


IN_MEMORY = {
    "gpt2": (gpt2, {"hidden": 48, "n_heads": 6, "ffn": 64, "n_layers": 3}),
    "llama": (
        lambda: llama(attention_bias=True),
        {"hidden": 48, "n_heads": 8, "qk_head_dim": 12, "v_head_dim": 12, "n_layers": 3},
    ),
    "qwen2": (qwen2, {"n_heads": 6, "n_kv_heads": 3, "ffn": 64}),
    "mistral": (mistral, {"qk_head_dim": 10, "v_head_dim": 10, "max_seq_len": 20}),
}


@pytest.mark.parametrize("family", IN_MEMORY)
def test_in_memory_grow_returns_the_same_class_computing_the_same_logits(family: str) -> None:
    build, target = IN_MEMORY[family]
    source = build()
    source.train()
    before = {n: t.clone() for n, t in source.state_dict().items()}
    grown = hf.grow(source, target, layer_init="copy", seed=5)
    assert type(grown) is type(source)
    assert grown.training
    assert grown.dtype == source.dtype
    source_storage = {p.untyped_storage().data_ptr() for p in source.parameters()}
    assert not source_storage & {p.untyped_storage().data_ptr() for p in grown.parameters()}
    for name, tensor in source.state_dict().items():
        assert torch.equal(tensor, before[name]), f"{name} of the source changed"
    error = relative_error(output(source, tokens()), output(grown, tokens()))
    assert error <= RTOL, f"relative logit error {error:.3e}"
