"""Hugging Face ⇄ canonical: the canonical model reproduces each family's forward, and a round
trip Hugging Face → canonical → Hugging Face reproduces every tensor bit for bit, for folders and
for models in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from growformer import hf
from hf_tiny import (
    MINILM,
    RTOL,
    bert,
    gpt2,
    llama,
    load,
    mistral,
    output,
    qwen2,
    relative_error,
    saved,
    tokens,
)

MODELS = {
    "gpt2": gpt2,
    "gpt2_untied_relu": lambda: gpt2(tie_word_embeddings=False, activation_function="relu"),
    "llama_tied_bias": lambda: llama(tie_word_embeddings=True, attention_bias=True, mlp_bias=True),
    "llama": llama,
    "qwen2": lambda: qwen2(head_dim=12),
    "mistral": mistral,
    "bert": bert,
    "bert_mlm_gelu_tanh": lambda: bert("BertForMaskedLM", hidden_act="gelu_new"),
    "bert_pretraining": lambda: bert("BertForPreTraining"),
    "bert_classifier": lambda: bert("BertForSequenceClassification", num_labels=3),
}


def read_all(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})  # noqa: SIM118
    return tensors


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name, tensor in a.items():
        assert tensor.dtype == b[name].dtype, name
        assert tensor.shape == b[name].shape, name
        assert torch.equal(tensor, b[name]), f"{name} differs"


@pytest.mark.parametrize("name", MODELS)
def test_canonical_model_reproduces_the_family_forward(name: str) -> None:
    model = MODELS[name]()
    canonical = hf.to_canonical(model)
    ids = tokens()
    with torch.no_grad():
        ours = canonical.model().eval()
        mine = ours.hidden_states(ids) if name.startswith("bert") else ours(ids)
        base = model.bert if hasattr(model, "bert") else model
        reference = output(base, ids)
    assert float(reference.abs().max()) >= 3
    error = relative_error(reference, mine)
    assert error <= RTOL, f"relative error {error:.3e}"


@pytest.mark.parametrize("name", MODELS)
def test_folder_round_trip_is_bit_exact(tmp_path: Path, name: str) -> None:
    src = saved(MODELS[name](), tmp_path / "src")
    hf.write_folder(hf.read_folder(src), tmp_path / "dst", like=src)
    assert_bit_identical(read_all(src), read_all(tmp_path / "dst"))
    assert json.loads((src / "config.json").read_text()) == json.loads(
        (tmp_path / "dst" / "config.json").read_text()
    )
    assert {p.name for p in src.iterdir()} == {p.name for p in (tmp_path / "dst").iterdir()}


@pytest.mark.parametrize("name", MODELS)
def test_memory_round_trip_is_bit_exact(name: str) -> None:
    model = MODELS[name]()
    back = hf.from_canonical(hf.to_canonical(model))
    assert type(back) is type(model)
    assert_bit_identical(model.state_dict(), back.state_dict())


def test_real_minilm_folder_round_trip_is_bit_exact(tmp_path: Path) -> None:
    canonical = hf.read_folder(MINILM)
    assert "embeddings.position_ids" in canonical.extras
    hf.write_folder(canonical, tmp_path / "dst", like=MINILM)
    assert_bit_identical(read_all(MINILM), read_all(tmp_path / "dst"))


def test_canonical_tensors_are_copies_unless_asked(tmp_path: Path) -> None:
    model = llama()
    copied, shared = hf.to_canonical(model), hf.to_canonical(model, copy=False)
    embedding = model.model.embed_tokens.weight
    assert copied.state["tok_emb.weight"].data_ptr() != embedding.data_ptr()
    assert shared.state["tok_emb.weight"].data_ptr() == embedding.data_ptr()


def test_legacy_gpt2_checkpoint_without_prefix_and_with_mask_buffers(tmp_path: Path) -> None:
    """Old GPT-2 checkpoints name the base model's tensors without ``transformer.``, omit the
    tied lm_head and store causal-mask buffers that transformers ignores: they read, grow and
    load, and the buffers are dropped."""
    model = gpt2()
    legacy = {
        name.removeprefix("transformer."): t.contiguous()
        for name, t in model.state_dict().items()
        if name != "lm_head.weight"
    }
    for i in range(model.config.n_layer):
        legacy[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16, dtype=torch.bool))
    src = tmp_path / "legacy"
    src.mkdir()
    (src / "config.json").write_text(model.config.to_json_string())
    save_file(legacy, str(src / "model.safetensors"), metadata={"format": "pt"})
    hf.grow_folder(src, tmp_path / "dst", {"ffn": 64})
    written = read_all(tmp_path / "dst")
    assert "wte.weight" in written and "h.0.attn.bias" not in written
    grown = load(tmp_path / "dst")
    error = relative_error(output(model, tokens()), output(grown, tokens()))
    assert error <= RTOL, f"relative error {error:.3e}"


@pytest.mark.parametrize("name", ["LlamaModel", "Qwen2Model", "MistralModel"])
def test_bare_decoder_without_a_head_grows_and_saves(tmp_path: Path, name: str) -> None:
    """A base model with no lm_head (what AutoModel saves) reads, grows and writes back
    without one; transformers loads the grown folder with the same hidden states."""
    import transformers

    family = {"LlamaModel": llama, "Qwen2Model": qwen2, "MistralModel": mistral}[name]
    with_head = family()
    base = getattr(transformers, name)(with_head.config)
    base.load_state_dict(with_head.model.state_dict())
    src = saved(base.eval(), tmp_path / "src")
    canonical = hf.read_folder(src)
    assert canonical.config.tie_embeddings
    grown = hf.grow_storable(canonical, {"ffn": 64, "n_layers": 3})
    hf.write_folder(grown, tmp_path / "dst", like=src)
    with safe_open(str(tmp_path / "dst" / "model.safetensors"), framework="pt") as f:
        assert not any("lm_head" in key for key in f.keys())  # noqa: SIM118
    config = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert config["tie_word_embeddings"] == base.config.tie_word_embeddings
    ids = tokens()
    assert (
        relative_error(output(base, ids), output(load(tmp_path / "dst", "AutoModel"), ids)) < RTOL
    )


def test_missing_kv_heads_default_as_in_transformers(tmp_path: Path) -> None:
    """MistralConfig defaults num_key_value_heads to 8 (Qwen2Config to 32), not to the heads."""
    src = saved(mistral(hidden_size=64, num_attention_heads=16, num_key_value_heads=8), tmp_path)
    config = json.loads((src / "config.json").read_text())
    del config["num_key_value_heads"]
    (src / "config.json").write_text(json.dumps(config))
    assert hf.read_folder(src).config.n_kv_heads == 8
