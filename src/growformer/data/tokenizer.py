"""A byte-level BPE tokenizer trained with the ``tokenizers`` library, and its cache.

Byte-level: every string encodes (no unknown token) and ``decode(encode(s)) == s`` for every
``s``. Id 0 is ``<|endoftext|>``, the separator appended after every document; the text
``<|endoftext|>`` inside a document also encodes to it (and decodes back to the same text).
Training is deterministic: the same texts and vocabulary size give the same tokenizer.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from growformer.atomic import atomic_write
from growformer.data.cache import cache_dir, content_hash
from growformer.data.corpus import Corpus, DataError

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
SPECIAL_TOKENS = (EOT,)
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
DEFAULT_VOCAB_SIZE = 4096
RECIPE = "byte-bpe-1"


class Tokenizer:
    """A ``tokenizers.Tokenizer`` with ``<|endoftext|>``, behind a small exact interface."""

    def __init__(self, backend: tokenizers.Tokenizer) -> None:
        eot = backend.token_to_id(EOT)
        if eot is None:
            raise DataError(f"a growformer tokenizer needs the special token {EOT}")
        self.backend = backend
        self.eot_id: int = eot

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (every id is below it)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @cached_property
    def fingerprint(self) -> str:
        """Content hash of the serialized tokenizer."""
        return content_hash([self.backend.to_str()])

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` of each text, computed in parallel."""
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``, special tokens included; incomplete UTF-8 becomes U+FFFD."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer JSON to ``path`` atomically."""
        atomic_write(Path(path), self.backend.to_str().encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Read a tokenizer JSON written by ``save`` (or any ``tokenizers`` JSON with
        ``<|endoftext|>``)."""
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise DataError(f"cannot read tokenizer {path}: {e}") from e
        return cls(backend)


def check_vocab_size(vocab_size: int) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise DataError(f"vocab_size must be an integer, got {vocab_size!r}")
    if vocab_size < MIN_VOCAB_SIZE:
        raise DataError(
            f"vocab_size must be >= {MIN_VOCAB_SIZE} (256 bytes + {len(SPECIAL_TOKENS)} special "
            f"token), got {vocab_size}"
        )


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train a byte-level BPE tokenizer of at most ``vocab_size`` ids on ``texts`` (fewer when
    the texts hold too few distinct pairs to merge)."""
    check_vocab_size(vocab_size)
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return Tokenizer(backend)


def tokenizer_path(corpus: Corpus, vocab_size: int) -> Path:
    """Where the tokenizer of ``corpus`` at ``vocab_size`` is cached: keyed by the corpus
    content hash, the vocabulary size, this recipe and the ``tokenizers`` version."""
    key = content_hash([RECIPE, corpus.content_hash, vocab_size, tokenizers.__version__])
    return cache_dir() / "tokenizer" / f"bpe-{vocab_size}-{key[:24]}.json"


def corpus_tokenizer(corpus: Corpus, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """The tokenizer trained on ``corpus.train``: read from the cache, or trained and cached."""
    check_vocab_size(vocab_size)
    path = tokenizer_path(corpus, vocab_size)
    if path.exists():
        try:
            return Tokenizer.load(path)
        except DataError as error:
            log.warning("retraining the unreadable cache entry %s (%s)", path, error)
    log.info("training a %d-id tokenizer on %s (cached at %s)", vocab_size, corpus.name, path)
    tokenizer = train_tokenizer((doc.text for doc in corpus.train), vocab_size)
    tokenizer.save(path)
    return tokenizer
