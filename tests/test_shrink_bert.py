"""Subcloning the real pretrained MiniLM (all-MiniLM-L6-v2: 6 layers, hidden 384, 12 heads,
FFN 1536) to 3 layers, hidden 192, 6 heads, FFN 768, written as a BERT folder.

The child's mean-pooled sentence embeddings of 40 varied sentences keep the parent's
similarity structure: the Spearman correlation between the parent's and the child's pairwise
cosine similarities (780 pairs). Measured with 4096 calibration tokens of the default corpus
(whole documents; MiniLM's tokenizer.json would cut each at 128 tokens): importance-ranked child
0.36 (block removal kept layers 0, 4, 5), 0.34 without rescaling; naive truncation (first
layers, dims, heads and neurons) 0.18 (0.17 rescaled); random init 0.06, 0.08, 0.11. The figure
moves with the calibration sample: 16384 tokens (the command's default) give 0.40 (0.36 without
rescaling).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from growformer import Transformer, hf, model_from_state
from growformer.cli import main
from growformer.shrink import (
    REPORT_FILE,
    apply_plan,
    resolve_shrink_target,
    shrink_folder,
    truncation_plan,
)
from hf_tiny import MINILM

TARGET = {"n_layers": 3, "hidden": 192, "n_heads": 6, "ffn": 768}
CALIB_TOKENS = 4096

SENTENCES = [
    "The cat sat on the mat.",
    "A dog is playing in the park.",
    "Stock markets fell sharply today.",
    "The central bank raised interest rates.",
    "I love eating pizza with friends.",
    "Pasta is my favourite Italian dish.",
    "The rocket launched into orbit.",
    "Astronauts repaired the space station.",
    "It is raining heavily in London.",
    "The weather forecast predicts snow.",
    "She plays the violin beautifully.",
    "The orchestra performed Beethoven.",
    "Python is a popular programming language.",
    "The compiler reported a syntax error.",
    "He scored the winning goal.",
    "The football match ended in a draw.",
    "The hospital hired new nurses.",
    "Doctors recommend regular exercise.",
    "My phone battery died.",
    "The laptop needs a new charger.",
    "The river flooded the village.",
    "Farmers harvest wheat in autumn.",
    "The museum displays ancient pottery.",
    "Archaeologists found a Roman coin.",
    "The train was delayed by an hour.",
    "Traffic jams are common in the city.",
    "She is reading a mystery novel.",
    "The poet wrote about the sea.",
    "Elections will be held next month.",
    "The senator gave a long speech.",
    "Bees pollinate flowers.",
    "The garden is full of roses.",
    "He fixed the leaking faucet.",
    "The plumber arrived late.",
    "Children built a sandcastle on the beach.",
    "Waves crashed against the rocks.",
    "The bakery sells fresh bread.",
    "Coffee prices rose this year.",
    "The software update fixed the bug.",
    "Hackers stole millions of passwords.",
]


@pytest.fixture(scope="module")
def token_ids() -> list[torch.Tensor]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
    return [torch.tensor([tokenizer(s)["input_ids"]]) for s in SENTENCES]


def embeddings(model: torch.nn.Module, token_ids: list[torch.Tensor]) -> torch.Tensor:
    """Mean-pooled last hidden states, one sentence at a time (no padding)."""
    with torch.no_grad():
        if isinstance(model, Transformer):
            rows = [model.hidden_states(ids)[0].mean(0) for ids in token_ids]
        else:
            rows = [model(input_ids=ids).last_hidden_state[0].mean(0) for ids in token_ids]
    return torch.stack(rows).double()


def pairwise_cosines(e: torch.Tensor) -> torch.Tensor:
    e = torch.nn.functional.normalize(e, dim=-1)
    i, j = torch.triu_indices(len(e), len(e), 1)
    return (e @ e.T)[i, j]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    def ranks(x: torch.Tensor) -> torch.Tensor:
        r = torch.empty_like(x)
        r[x.argsort()] = torch.arange(len(x), dtype=x.dtype)
        return r - r.mean()

    ra, rb = ranks(a), ranks(b)
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@pytest.fixture(scope="module")
def parent_similarity(token_ids) -> torch.Tensor:
    parent = transformers.AutoModel.from_pretrained(MINILM).eval()
    return pairwise_cosines(embeddings(parent, token_ids))


@pytest.fixture(scope="module")
def shrunk(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("minilm") / "child"
    shrink_folder(MINILM, dst, TARGET, calib_tokens=CALIB_TOKENS)
    return dst


def similarity_kept(model: torch.nn.Module, token_ids, parent_similarity) -> float:
    return spearman(pairwise_cosines(embeddings(model, token_ids)), parent_similarity)


@pytest.mark.slow
def test_subcloned_minilm_keeps_the_similarity_structure(shrunk, token_ids, parent_similarity):
    child = transformers.AutoModel.from_pretrained(shrunk).eval()
    assert type(child).__name__ == "BertModel"
    c = child.config
    sizes = (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size)
    assert sizes == (3, 192, 6, 768)
    subcloned = similarity_kept(child, token_ids, parent_similarity)

    source = hf.read_folder(MINILM)
    target = resolve_shrink_target(source.config, TARGET)
    naive = apply_plan(source.state, truncation_plan(source.config, target), rescale=False)
    truncated = similarity_kept(model_from_state(target, naive.state), token_ids, parent_similarity)
    random = []
    for seed in range(3):
        torch.manual_seed(seed)
        random.append(similarity_kept(Transformer(target), token_ids, parent_similarity))

    figures = f"subcloned {subcloned:.3f}, truncated {truncated:.3f}, random {random}"
    assert subcloned > 0.33, figures
    assert subcloned > truncated + 0.1, figures
    assert max(random) < 0.2 and subcloned > 2.5 * max(random), figures


@pytest.mark.slow
def test_minilm_report_and_tokenizer_are_written_with_the_child(shrunk):
    report = json.loads((shrunk / REPORT_FILE).read_text())
    assert report["source"]["n_layers"] == 6 and report["target"]["hidden"] == 192
    assert len(report["layers_kept"]) == 3 and report["layers_kept"][0] == 0
    assert report["layers_kept"][-1] == 5 and len(report["layers_removed"]) == 3
    assert 0.5 < report["hidden_coverage"] < 1
    assert all(len(layer["heads"]) == 6 for layer in report["layers"])
    assert report["calibration_tokens"] == CALIB_TOKENS
    assert (shrunk / "tokenizer.json").is_file()
    tokenizer = transformers.AutoTokenizer.from_pretrained(shrunk)
    assert tokenizer("a test")["input_ids"] == [101, 1037, 3231, 102]


def test_bert_family_limit_is_checked_before_calibration(tmp_path, capsys):
    """BertConfig ties the head size to hidden/heads: 12 heads of 32 cannot fit hidden 192."""
    dst = tmp_path / "child"
    assert main(["shrink", str(MINILM), str(dst), "--hidden", "192", "--data", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "BertConfig ties the head size" in err and "hidden=192" in err
    assert not dst.exists()
