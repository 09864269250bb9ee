"""Decoder sequence classifiers (GPT-2, Llama, Qwen2, Mistral ``…ForSequenceClassification``:
a ``score`` head reading the final hidden state instead of an LM head) grow exactly through
transformers' own modeling code, shrink with the head cut to the kept hidden dimensions, and are
refused clearly by in-place growth, which carries causal-LM weights only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from growformer import hf
from growformer.cli import main
from growformer.integrations.transformers import GrowthCallback, GrowthCallbackError
from growformer.shrink import shrink_folder
from growth_callback_helpers import ProbeTrainer, TokenRows, arguments, schedule
from hf_tiny import RTOL, VOCAB, classifier, load, relative_error, saved, tokens

AUTO = "AutoModelForSequenceClassification"


def class_logits(model: transformers.PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits


def pad_free_tokens() -> torch.Tensor:
    """Token ids without the pad id, so every row is classified at its last position."""
    return tokens(VOCAB - 1) + 1


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "mistral"])
def test_a_classifier_grows_exactly_and_saves_as_a_classifier(family, tmp_path):
    source = classifier(family)
    src = saved(source, tmp_path / "src")
    sizes = ["--hidden", "48", "--ffn", "96", "--layers", "3"]
    sizes += ["--heads", "6"] if family == "gpt2" else []  # GPT-2's head size is hidden/heads
    assert main(["grow", str(src), str(tmp_path / "dst"), *sizes, "--check"]) == 0
    grown = load(tmp_path / "dst", AUTO)
    assert type(grown) is type(source)
    assert grown.score.weight.shape == (3, 48) and grown.config.hidden_size == 48
    ids = pad_free_tokens()
    expected = class_logits(source, ids)
    assert relative_error(expected, class_logits(grown, ids)) <= RTOL
    assert not hasattr(grown, "lm_head")


def test_in_memory_growth_returns_a_classifier_with_the_same_outputs():
    source = classifier("llama")
    grown = hf.grow(source, {"hidden": 48, "n_layers": 3})
    assert type(grown) is type(source) and grown.score.weight.shape == (3, 48)
    assert torch.equal(grown.score.weight[:, :32], source.score.weight)
    assert not grown.score.weight[:, 32:].any()
    ids = pad_free_tokens()
    assert relative_error(class_logits(source, ids), class_logits(grown, ids)) <= RTOL


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_classifier_shrinks_with_its_head_cut_to_the_kept_hidden_dims(tmp_path, family):
    src = saved(classifier(family), tmp_path / "src")
    calib = tmp_path / "calib.bin"
    np.random.default_rng(0).integers(1, VOCAB, 2000, dtype=np.uint16).tofile(calib)
    dst = tmp_path / "dst"
    sizes = {"hidden": 16, "ffn": 24} | ({"n_heads": 2} if family == "gpt2" else {})
    shrink_folder(src, dst, sizes, data=calib, calib_tokens=128)
    child = load(dst, AUTO)
    assert type(child) is type(load(src, AUTO))
    assert child.score.weight.shape == (3, 16)
    assert torch.isfinite(class_logits(child, pad_free_tokens())).all()
    # The kept hidden dims, in order, read off the embedding (a writer: selected, not scaled);
    # the head keeps the same columns, times the reader scale √(32/16).
    source_emb = hf.read_folder(src).state["tok_emb.weight"]
    child_emb = hf.read_folder(dst).state["tok_emb.weight"]
    kept = [int((source_emb - column[:, None]).abs().sum(0).argmin()) for column in child_emb.T]
    assert torch.equal(source_emb[:, kept], child_emb)
    expected = load(src, AUTO).score.weight[:, kept] * 2**0.5
    assert torch.allclose(child.score.weight, expected, rtol=1e-6, atol=0)
    # The head is the only reader of the final hidden state: the final norm is not scaled too.
    source_state, child_state = hf.read_folder(src).state, hf.read_folder(dst).state
    for name in ("final_norm.weight", "final_norm.bias"):
        if name in source_state:
            assert torch.equal(child_state[name], source_state[name][kept]), name


def test_in_place_growth_refuses_a_classifier_before_any_step(tmp_path):
    model = classifier("llama")
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = ProbeTrainer(model=model, args=arguments(tmp_path / "out"), train_dataset=TokenRows())
    GrowthCallback(schedule()).attach(trainer)
    with pytest.raises(GrowthCallbackError, match=r"cannot grow in place.*\['score.weight'\]"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())


def test_a_prefixed_checkpoint_with_no_head_at_all_is_still_refused(tmp_path, capsys):
    """Only a classifier's head stands in for the missing LM head: a checkpoint under the
    ``model.`` prefix with neither ``lm_head`` nor ``score`` is broken."""
    src = saved(classifier("llama"), tmp_path / "src")
    assert hf.read_folder(src).config.tie_embeddings  # runs with the embedding as W_U
    tensors = load_file(src / "model.safetensors")
    del tensors["score.weight"]
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    assert main(["info", str(src)]) == 2
    assert "missing ['lm_head.weight']" in capsys.readouterr().err
