"""The on-disk cache of built corpora, tokenizers and token arrays: location and keys.

Everything cached is keyed by a content hash of what it was built from, so a stale entry is
never read: a changed input gives a new key. Entries are written with
``growformer.atomic.atomic_write``, so a reader (another process, a second rank) never sees half
a file, and two processes building the same entry at once both end with one complete file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

CACHE_ENV = "GROWFORMER_CACHE"


def cache_dir() -> Path:
    """``$GROWFORMER_CACHE`` if set, else ``$XDG_CACHE_HOME/growformer``, else
    ``~/.cache/growformer``. Not created here; writers create the folders they need."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "growformer"


def content_hash(parts: Iterable[bytes | str | int | float]) -> str:
    """SHA-256 hex digest of a sequence of parts, each length-prefixed (so ``("ab", "c")`` and
    ``("a", "bc")`` differ). Strings are hashed as UTF-8, numbers through their ``repr``."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, str):
            data = part.encode()
        elif isinstance(part, bytes):
            data = part
        else:
            data = repr(part).encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()
