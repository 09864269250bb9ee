"""Token arrays on disk: encoded corpus splits (cached) and pre-tokenized ``.bin`` files.

A token file is raw little-endian integers with no header, read as an ``np.memmap``. Its dtype
comes from a sidecar ``NAME.bin.json`` (``{"dtype": "uint16", "vocab_size": 50257}``, both
optional) or is given, else ``uint16`` (the nanoGPT convention). The cache writes the same
format, so a cached split can itself be passed as data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from growformer.atomic import atomic_write
from growformer.data.cache import cache_dir, content_hash
from growformer.data.corpus import Corpus, DataError, Document
from growformer.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

TOKEN_DTYPES = ("uint16", "uint32", "int32", "int64")
DEFAULT_TOKEN_DTYPE = "uint16"
RECIPE = "tokens-1"
ENCODE_CHUNK = 64  # documents per encode_batch call, to bound the memory of Python id lists


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id below ``vocab_size``."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def encode_documents(tokenizer: Tokenizer, docs: Sequence[Document]) -> np.ndarray:
    """The ids of every document, each followed by ``<|endoftext|>``, as one 1-D array."""
    dtype = token_dtype(tokenizer.vocab_size)
    parts = []
    for i in range(0, len(docs), ENCODE_CHUNK):
        chunk = docs[i : i + ENCODE_CHUNK]
        for ids in tokenizer.encode_batch([doc.text for doc in chunk]):
            parts.append(np.asarray(ids, dtype=dtype))
            parts.append(np.asarray([tokenizer.eot_id], dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def corpus_tokens(corpus: Corpus, tokenizer: Tokenizer, split: str) -> np.memmap:
    """``split`` ("train" or "val") of ``corpus`` encoded by ``encode_documents``, cached under
    ``cache_dir()/tokens`` keyed by the corpus and tokenizer content hashes."""
    key = content_hash([RECIPE, corpus.content_hash, tokenizer.fingerprint, split])
    path = cache_dir() / "tokens" / f"{split}-{key[:24]}.bin"
    if not _complete_entry(path):
        log.info("encoding the %s split of %s (cached at %s)", split, corpus.name, path)
        tokens = encode_documents(tokenizer, getattr(corpus, split))
        meta = {"dtype": tokens.dtype.name, "vocab_size": tokenizer.vocab_size}
        atomic_write(sidecar_path(path), json.dumps({**meta, "tokens": len(tokens)}).encode())
        atomic_write(path, tokens.tobytes())
    return read_token_file(path)


def _complete_entry(path: Path) -> bool:
    """Whether a cached token file and its sidecar are there, the file of the length the
    sidecar records (an entry cut short is encoded again)."""
    try:
        meta = json.loads(sidecar_path(path).read_text())
        return path.stat().st_size == meta["tokens"] * np.dtype(meta["dtype"]).itemsize
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _sidecar(path: Path) -> dict:
    side = sidecar_path(path)
    if not side.exists():
        return {}
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {side}: {e}") from e
    if not isinstance(meta, dict):
        raise DataError(f"{side} must hold a JSON object with dtype and/or vocab_size")
    return meta


def read_token_file(path: Path, dtype: str | None = None) -> np.memmap:
    """A ``.bin`` token file as a read-only 1-D memmap.

    The dtype is the sidecar's, else ``dtype``, else ``uint16``; a sidecar and ``dtype`` that
    disagree, a dtype outside ``TOKEN_DTYPES``, a size that is not a whole number of tokens and
    an empty file raise ``DataError``.
    """
    meta_dtype = _sidecar(path).get("dtype")
    if meta_dtype is not None and dtype is not None and meta_dtype != dtype:
        raise DataError(f"{path}: dtype {dtype} given but {sidecar_path(path)} says {meta_dtype}")
    name = meta_dtype or dtype or DEFAULT_TOKEN_DTYPE
    if name not in TOKEN_DTYPES:
        raise DataError(
            f"{path}: token dtype must be one of {', '.join(TOKEN_DTYPES)}; got {name!r}"
        )
    itemsize = np.dtype(name).itemsize
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path} is empty: a .bin token file needs at least one token")
    if size % itemsize:
        raise DataError(
            f"{path} has {size} bytes, not a multiple of {itemsize} ({name}); is the dtype right? "
            f'give it in {sidecar_path(path).name} as {{"dtype": ...}}, one of '
            f"{', '.join(TOKEN_DTYPES)}"
        )
    tokens = np.memmap(path, dtype=np.dtype(name).newbyteorder("<"), mode="r")
    if meta_dtype is None and dtype is None and _looks_wider(tokens):
        raise DataError(
            f"{path} read as {name} has a zero at every odd position: it looks like 32-bit "
            f'tokens; give the dtype in {sidecar_path(path).name} as {{"dtype": "uint32"}}'
        )
    return tokens


def _looks_wider(tokens: np.ndarray, sample: int = 1 << 16) -> bool:
    """Whether 16-bit ``tokens`` are the little-endian halves of 32-bit ones (every high half,
    at the odd positions, zero) in the first ``sample`` pairs; real 16-bit ids never are."""
    head = np.asarray(tokens[: 2 * sample])
    return head.size >= 2 and head.size % 2 == 0 and not head[1::2].any() and head[0::2].any()


def token_vocab_size(path: Path) -> int | None:
    """The ``vocab_size`` a ``.bin`` file's sidecar declares, if any (validated)."""
    value = _sidecar(path).get("vocab_size")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise DataError(
            f"{sidecar_path(path)}: vocab_size must be a positive integer, got {value!r}"
        )
    return value


def check_token_range(tokens: np.ndarray, vocab_size: int, source: str) -> None:
    """Every id of ``tokens`` must lie in ``[0, vocab_size)``."""
    if tokens.size == 0:
        return
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        raise DataError(
            f"{source}: token ids span [{low}, {high}] but must lie in [0, {vocab_size}); "
            "give the vocabulary size of the tokenizer that wrote them (vocab_size in a .bin.json "
            "sidecar, or [model] vocab_size in a run file)"
        )
