"""The byte-level BPE tokenizer: exact round trip, deterministic training, cache, errors."""

from __future__ import annotations

import numpy as np
import pytest

from growformer.data import (
    EOT,
    DataError,
    Document,
    Tokenizer,
    corpus_tokenizer,
    split_documents,
    train_tokenizer,
)
from growformer.data.cache import CACHE_ENV
from growformer.data.tokens import corpus_tokens, encode_documents, token_dtype

TEXTS = [
    "The quick brown fox jumps over the lazy dog.\n" * 20,
    "def f(x):\n    return x ** 2  # square\n\tTabbed\r\nWindows line\n" * 10,
    "Unicode: héllo wörld, 日本語, emoji 🙂🚀, Ωmega, zero\u200bwidth.\n" * 5,
]
TRICKY = [
    "",
    " ",
    "  leading and trailing spaces  ",
    "\n\n\t\r\n",
    "ñ 中文 🙂 \U0001f9ea \x00 \x7f \u00ad",
    f"before {EOT} after",
    "never seen: Ʃ ℵ ∮ ⨌ 𝄞",
]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_tokenizer(TEXTS, vocab_size=300)


@pytest.mark.parametrize("text", TEXTS + TRICKY)
def test_round_trip_is_exact(tokenizer, text):
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text


def test_special_token_is_id_zero_and_merges_are_learned(tokenizer):
    assert tokenizer.eot_id == 0
    assert tokenizer.encode(EOT) == [0]
    assert tokenizer.vocab_size == 300
    text = TEXTS[0]
    assert len(tokenizer.encode(text)) < len(text.encode()) / 2


def test_training_is_deterministic_and_save_load_keeps_it(tokenizer, tmp_path):
    again = train_tokenizer(TEXTS, vocab_size=300)
    assert again.fingerprint == tokenizer.fingerprint
    tokenizer.save(tmp_path / "tok.json")
    loaded = Tokenizer.load(tmp_path / "tok.json")
    assert loaded.fingerprint == tokenizer.fingerprint
    assert loaded.encode_batch(TEXTS) == [tokenizer.encode(t) for t in TEXTS]


def test_small_corpus_gives_fewer_ids_than_asked():
    small = train_tokenizer(["ab ab ab"], vocab_size=1000)
    assert 257 <= small.vocab_size < 1000


@pytest.mark.parametrize("size", [256, 100, 4096.0, True])
def test_bad_vocab_size(size):
    with pytest.raises(DataError, match="vocab_size"):
        train_tokenizer(TEXTS, vocab_size=size)


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json"):
        Tokenizer.load(bad)
    with pytest.raises(DataError, match="cannot read"):
        Tokenizer.load(tmp_path / "missing.json")


def test_corpus_tokenizer_is_cached_by_content_and_vocab_size(cache):
    docs = [Document(f"d{i}", t) for i, t in enumerate(TEXTS * 4)]
    corpus = split_documents("c", docs, 0.2)
    first = corpus_tokenizer(corpus, 300)
    assert corpus_tokenizer(corpus, 300).fingerprint == first.fingerprint
    corpus_tokenizer(corpus, 320)
    assert len(list((cache / "tokenizer").iterdir())) == 2


def test_encode_documents_appends_end_of_text(tokenizer):
    docs = [Document("a", "hello"), Document("b", "world")]
    tokens = encode_documents(tokenizer, docs)
    assert tokens.dtype == np.uint16
    expected = [*tokenizer.encode("hello"), 0, *tokenizer.encode("world"), 0]
    assert tokens.tolist() == expected
    assert token_dtype(2**16) == np.uint16 and token_dtype(2**16 + 1) == np.uint32


def test_corpus_tokens_are_cached_memmaps(tokenizer, cache):
    docs = [Document(f"d{i}", t) for i, t in enumerate(TEXTS * 4)]
    corpus = split_documents("c", docs, 0.2)
    train = corpus_tokens(corpus, tokenizer, "train")
    assert isinstance(train, np.memmap) and not train.flags.writeable
    assert train.tolist() == encode_documents(tokenizer, corpus.train).tolist()
    assert corpus_tokens(corpus, tokenizer, "train").tolist() == train.tolist()
    assert tokenizer.decode(train).replace(EOT, "") == "".join(d.text for d in corpus.train)
