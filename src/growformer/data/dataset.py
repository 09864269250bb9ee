"""``load_dataset``: the one entry point from a ``--data`` value to train/val token splits."""

from __future__ import annotations

import math
import os
from collections.abc import Collection
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from growformer.data.cache import content_hash
from growformer.data.corpus import (
    DEFAULT_VAL_FRACTION,
    STDLIB_KINDS,
    Corpus,
    DataError,
    check_val_fraction,
    split_documents,
    stdlib_corpus,
)
from growformer.data.loader import TokenSplit
from growformer.data.tokenizer import DEFAULT_VOCAB_SIZE, Tokenizer, corpus_tokenizer
from growformer.data.tokens import (
    check_token_range,
    corpus_tokens,
    read_token_file,
    token_vocab_size,
)
from growformer.data.user_data import (
    DEFAULT_TEXT_FIELD,
    UserFiles,
    check_text_field,
    find_files,
    text_documents,
)

STDLIB_PREFIX = "stdlib:"
DEFAULT_DATA = "stdlib:prose"
STDLIB_DATA = tuple(STDLIB_PREFIX + kind for kind in STDLIB_KINDS)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and validation token splits, the tokenizer that wrote them (None for ``.bin``
    data) and the vocabulary size a model needs (every id is below it)."""

    source: str
    train: TokenSplit
    val: TokenSplit
    tokenizer: Tokenizer | None
    vocab_size: int
    details: str

    @cached_property
    def fingerprint(self) -> str:
        """Content hash of the token ids of both splits and the vocabulary size: equal exactly
        when a model would see the same data (for checking a resumed run)."""
        return content_hash([self.vocab_size, self.train.content_hash, self.val.content_hash])

    def describe(self) -> str:
        """A few lines for logs: source, tokenizer, split sizes."""
        if self.tokenizer is None:
            tok = f"pre-tokenized ({self.train.tokens.dtype}), vocabulary {self.vocab_size}"
        else:
            tok = f"byte-level BPE, {self.tokenizer.vocab_size} ids trained on the train split"
        total = len(self.train) + len(self.val)
        return "\n".join(
            [
                f"data       {self.source}: {self.details}",
                f"tokenizer  {tok}",
                f"train      {len(self.train):,} tokens",
                f"val        {len(self.val):,} tokens ({len(self.val) / total:.1%})",
            ]
        )


def load_dataset(
    data: str | os.PathLike | None = None,
    *,
    vocab_size: int | None = None,
    seq_len: int = 128,
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    text_field: str = DEFAULT_TEXT_FIELD,
    token_dtype: str | None = None,
    stdlib_modules: Collection[str] | None = None,
) -> Dataset:
    """Read, split, tokenize and validate ``data``; everything expensive is cached.

    ``data``:
      - ``None`` or ``"stdlib:prose"``: the docstrings of this Python's stdlib (~1.8 MB);
        ``"stdlib:code"``: its whole source (~31 MB). See ``growformer.data.corpus``;
        ``stdlib_modules`` limits either to a few top-level modules (for tests).
      - a text file, a ``.jsonl`` file (the string in ``text_field`` of each line), or a folder
        of them: split by document (``split_documents``), then tokenized by a byte-level BPE
        tokenizer of ``vocab_size`` ids (default 4096) trained on the train split.
      - a ``.bin`` token file or a folder of them (``tokens.read_token_file``; ``token_dtype``
        when no sidecar says it): a folder holding exactly ``train.bin`` and ``val.bin`` gives
        the two splits, otherwise the files are concatenated in name order and the last
        ``val_fraction`` of the tokens is validation. The vocabulary size is the one the
        sidecars declare (it wins over ``vocab_size``), else ``vocab_size``, else the largest
        id + 1.

    Batches come from ``Dataset.train.batch_at(step, batch_size, seq_len)`` (order fixed by
    ``seed``), evaluation from ``Dataset.val.eval_batches(...)``. ``seq_len`` is the longest
    sequence length the run will use: both splits must hold one window of ``seq_len + 1``.

    Raises ``DataError`` (a ``ValueError``) naming the path and what is allowed, for a missing
    path, an empty folder or file, an unknown file type, a JSON line without ``text_field``, a
    ``.bin`` size that is not a whole number of tokens, ids outside the vocabulary, or too few
    tokens for one window, before any training starts.
    """
    check_val_fraction(val_fraction)
    check_text_field(text_field)
    source = DEFAULT_DATA if data is None else os.fspath(data)
    if stdlib_modules is not None and not source.startswith(STDLIB_PREFIX):
        raise DataError(f"stdlib_modules applies to {' or '.join(STDLIB_DATA)}, not to {source}")
    if source.startswith(STDLIB_PREFIX):
        corpus = stdlib_corpus(
            source.removeprefix(STDLIB_PREFIX), packages=stdlib_modules, val_fraction=val_fraction
        )
        dataset = _text_dataset(source, corpus, vocab_size, seed)
    else:
        files = find_files(source)
        source = os.path.abspath(source)  # recorded in a run's data.json, read from any folder
        if files.kind == "tokens":
            dataset = _token_dataset(source, files, vocab_size, token_dtype, val_fraction, seed)
        else:
            corpus = split_documents(source, text_documents(files, text_field), val_fraction)
            dataset = _text_dataset(source, corpus, vocab_size, seed)
    dataset.train.check_seq_len(seq_len)
    dataset.val.check_seq_len(seq_len)
    return dataset


def _text_dataset(source: str, corpus: Corpus, vocab_size: int | None, seed: int) -> Dataset:
    vocab_size = DEFAULT_VOCAB_SIZE if vocab_size is None else vocab_size
    tokenizer = corpus_tokenizer(corpus, vocab_size)
    splits = [
        TokenSplit(f"{split} split of {source}", corpus_tokens(corpus, tokenizer, split), seed)
        for split in ("train", "val")
    ]
    details = (
        f"{len(corpus.train)} train / {len(corpus.val)} val documents, "
        f"{corpus.nbytes('train') / 1e6:.2f} / {corpus.nbytes('val') / 1e6:.3f} MB of text"
    )
    return Dataset(source, *splits, tokenizer, vocab_size, details)


def _token_dataset(
    source: str,
    files: UserFiles,
    vocab_size: int | None,
    dtype: str | None,
    val_fraction: float,
    seed: int,
) -> Dataset:
    if vocab_size is not None and (
        isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1
    ):
        raise DataError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    arrays = {path: read_token_file(path, dtype) for path in files.files}
    declared = {files.name_of(p): token_vocab_size(p) for p in files.files}
    sizes = {size for size in declared.values() if size is not None}
    if len(sizes) > 1:
        raise DataError(f"{source}: the sidecars declare different vocabulary sizes {declared}")
    if sizes:
        vocab = sizes.pop()
    elif vocab_size is not None:
        vocab = vocab_size
    else:
        vocab = max(int(tokens.max()) for tokens in arrays.values()) + 1
    for path, tokens in arrays.items():
        check_token_range(tokens, vocab, str(path))
    by_name = {files.name_of(path): tokens for path, tokens in arrays.items()}
    if set(by_name) == {"train.bin", "val.bin"}:
        train, val = by_name["train.bin"], by_name["val.bin"]
        how = "train.bin and val.bin"
    else:
        parts = list(arrays.values())
        tokens = parts[0] if len(parts) == 1 else np.concatenate(parts)
        cut = len(tokens) - math.ceil(val_fraction * len(tokens))
        train, val = tokens[:cut], tokens[cut:]
        how = f"{len(arrays)} file(s), the last {val_fraction:.1%} of the tokens held out"
    return Dataset(
        source,
        TokenSplit(f"train split of {source}", train, seed),
        TokenSplit(f"val split of {source}", val, seed),
        None,
        vocab,
        how,
    )
