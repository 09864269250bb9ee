"""Calibration batches: token windows of the user's data, or of the default corpus, in the
source model's own vocabulary.

Which tokenizer (decided here, so that calibration never sees random or foreign ids):

- the source folder has a ``tokenizer.json`` (a Hugging Face fast tokenizer, or the one
  ``growformer train`` writes): it encodes the text (the default corpus or ``--data``);
- a Hugging Face folder without one: transformers ``AutoTokenizer`` on the folder, offline;
- a growformer folder without one: ``load_dataset(data, vocab_size=<the model's>)``, which for
  the default corpus (and for user text) rebuilds the very tokenizer ``growformer train`` used
  for it: training is deterministic in (text, vocabulary size). A model trained on other text
  should be shrunk with ``--data`` pointing at that text or at its token ids.

Token files (``.bin``) are used as they are, whatever the folder holds. Every id must be below
the model's ``vocab_size``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from growformer.data import (
    DEFAULT_DATA,
    DEFAULT_TEXT_FIELD,
    DataError,
    TokenSplit,
    load_dataset,
    stdlib_corpus,
)
from growformer.data.dataset import STDLIB_PREFIX
from growformer.data.tokenizer import MIN_VOCAB_SIZE
from growformer.data.user_data import check_text_field, find_files, text_documents
from growformer.train.checkpoint import CHECKPOINTS, MODEL_DIR

DEFAULT_CALIB_TOKENS = 16384
CALIB_SEQ_LEN = 256
CALIB_BATCH = 8
TOKENIZER_FILE = "tokenizer.json"
# Documents encoded at a time while collecting calibration text.
ENCODE_CHUNK = 64

Encode = Callable[[list[str]], list[list[int]]]


# The vocabulary files of tokenizers that ship without tokenizer.json (BERT's WordPiece,
# GPT-2's BPE, SentencePiece models).
SLOW_TOKENIZER_FILES = ("vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")


def folder_tokenizer(folder: str | os.PathLike) -> Path | None:
    """The ``tokenizer.json`` of the model in ``folder``: its own, else, for the model of a
    training checkpoint (``RUN/checkpoints/step_N/model``), the run's; None when neither is
    there."""
    folder = Path(folder)
    if (folder / TOKENIZER_FILE).is_file():
        return folder / TOKENIZER_FILE
    run = folder.parent.parent.parent
    in_checkpoint = folder.name == MODEL_DIR and folder.parent.parent.name == CHECKPOINTS
    if in_checkpoint and (run / TOKENIZER_FILE).is_file():
        return run / TOKENIZER_FILE
    return None


def folder_encoder(folder: str | os.PathLike, hugging_face: bool) -> Encode | None:
    """The text encoder of a model folder (see the module docstring), or None for a growformer
    folder without ``tokenizer.json``. Raises ``DataError`` when a Hugging Face folder's
    tokenizer cannot be loaded."""
    path = folder_tokenizer(folder)
    if path is not None:
        import tokenizers

        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception on malformed files
            raise DataError(f"cannot read the tokenizer {path}: {err}") from err
        backend.no_truncation()  # a sentence model's (MiniLM: 128) would cut every document
        return lambda texts: [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    if not hugging_face:
        return None
    if not any((Path(folder) / name).is_file() for name in SLOW_TOKENIZER_FILES):
        # transformers would build an empty tokenizer (every word unknown) rather than fail.
        raise DataError(
            f"{folder} has no tokenizer ({TOKENIZER_FILE} or "
            f"{', '.join(SLOW_TOKENIZER_FILES)}); pass --data with token ids (.bin) in the "
            "model's vocabulary"
        )
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (ImportError, OSError, ValueError) as err:
        raise DataError(
            f"{folder} has no {TOKENIZER_FILE} and transformers could not load its tokenizer "
            f"({err}); pass --data with token ids (.bin) in the model's vocabulary"
        ) from err
    return lambda texts: tokenizer(
        texts, add_special_tokens=False, truncation=False, verbose=False
    )["input_ids"]


def calibration_batches(
    data: str | os.PathLike | None,
    vocab_size: int,
    encoder: Callable[[], Encode | None],
    *,
    tokens: int = DEFAULT_CALIB_TOKENS,
    seq_len: int = CALIB_SEQ_LEN,
    batch_size: int = CALIB_BATCH,
    seed: int = 0,
    text_field: str = DEFAULT_TEXT_FIELD,
) -> list[Tensor]:
    """About ``tokens`` calibration token ids as int64 batches ``[batch_size, seq_len]``:
    ``ceil(tokens / seq_len)`` windows spread evenly over the text of ``data`` (None: the
    default corpus's train split; of JSON lines, the string in ``text_field``), encoded with
    the encoder ``encoder()`` returns (None: ``load_dataset``'s tokenizer of ``vocab_size``
    ids); token files need no encoder. Data
    shorter than ``tokens`` is used whole, each window once. Raises ``DataError`` for unusable
    data, fewer tokens than one window (``min(tokens, seq_len)``), or ids outside the
    vocabulary."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise DataError(f"calibration tokens must be a positive integer, got {tokens!r}")
    check_text_field(text_field)
    source = DEFAULT_DATA if data is None else os.fspath(data)
    is_bin = not source.startswith(STDLIB_PREFIX) and find_files(source).kind == "tokens"
    encode = None if is_bin else encoder()
    if encode is None and not is_bin and vocab_size < MIN_VOCAB_SIZE:
        raise DataError(
            f"the model's vocab_size={vocab_size} is too small for the byte-level tokenizer "
            f"that calibration on text needs (vocab_size must be >= {MIN_VOCAB_SIZE}): pass "
            "--data with token ids (.bin) in the model's vocabulary"
        )
    if encode is None:
        dataset = load_dataset(
            source, vocab_size=vocab_size, seq_len=1, seed=seed, text_field=text_field
        )
        if dataset.vocab_size > vocab_size:
            raise DataError(
                f"{source} declares a vocabulary of {dataset.vocab_size} ids, more than the "
                f"model's vocab_size={vocab_size}"
            )
        ids = dataset.train.tokens
    else:
        ids = _encoded(_texts(source, seed, text_field), encode, tokens + seq_len)
    if len(ids) and int(ids.max()) >= vocab_size:
        raise DataError(
            f"calibration data of {source} holds token id {int(ids.max())}, outside the model's "
            f"vocab_size={vocab_size}"
        )
    if len(ids) < min(tokens, seq_len):
        raise DataError(
            f"calibration data of {source} holds {len(ids)} tokens, fewer than one calibration "
            f"window of {min(tokens, seq_len)}: give more data"
        )
    split = TokenSplit(f"calibration data of {source}", np.asarray(ids), seed)
    seq_len = min(seq_len, max(1, len(ids) - 1))
    windows = math.ceil(tokens / seq_len)
    return [inputs for inputs, _ in split.eval_batches(batch_size, seq_len, windows)]


def _texts(source: str, seed: int, text_field: str) -> list[str]:
    """The documents of ``source`` in a seeded random order (so a prefix spreads over all)."""
    if source.startswith(STDLIB_PREFIX):
        texts = [doc.text for doc in stdlib_corpus(source.removeprefix(STDLIB_PREFIX)).train]
    else:
        texts = [doc.text for doc in text_documents(find_files(source), text_field)]
    order = np.random.default_rng(seed).permutation(len(texts))
    return [texts[i] for i in order]


def _encoded(texts: Sequence[str], encode: Encode, wanted: int) -> np.ndarray:
    """The ids of the first documents of ``texts`` that give at least ``wanted`` tokens."""
    ids: list[int] = []
    for start in range(0, len(texts), ENCODE_CHUNK):
        for row in encode(list(texts[start : start + ENCODE_CHUNK])):
            ids.extend(row)
        if len(ids) >= wanted:
            break
    return np.asarray(ids, dtype=np.int64)
