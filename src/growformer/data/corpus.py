"""Text corpora as named documents split into train and validation, and the default corpus.

The default corpus needs no download and is the same on every machine that runs the same
Python: it is read from the standard library of the running interpreter.

- ``prose``: the docstrings (module, class, function, method; nested ones too) of every stdlib
  module outside test folders, extracted with ``ast`` in source order, cleaned with
  ``inspect.cleandoc`` and deduplicated across the whole corpus (first occurrence kept). One
  document per module: its docstrings joined by blank lines. About 1.8 MB on Python 3.11.
- ``code``: the whole stdlib source, test folders included, one document per ``.py`` file
  (decoded with its PEP 263 encoding; the few files that cannot be decoded are skipped). About
  31 MB on Python 3.11, for runs that need more tokens than the prose holds.

Both skip ``site-packages``/``dist-packages`` (installed packages, not the stdlib), the
``config-*`` build folder and ``_sysconfigdata*.py`` (build paths and compiler flags of this
machine). The walk is sorted, so the same stdlib gives the same bytes. Prose leaves out the
``test``/``tests``/``idle_test`` folders: their docstrings are mostly one-line test
descriptions, repetitive rather than prose.

A built stdlib corpus is cached under ``cache_dir()/corpus`` keyed by a hash of the source
files' bytes and of this recipe, so it is extracted once per Python installation.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import math
import sysconfig
import tokenize
import warnings
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from growformer.atomic import atomic_write
from growformer.data.cache import cache_dir, content_hash

log = logging.getLogger(__name__)

STDLIB_KINDS = ("prose", "code")
DEFAULT_VAL_FRACTION = 0.02
# Bump when the extraction or the split changes, so cached corpora are rebuilt.
RECIPE = "stdlib-corpus-1"
SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
TEST_DIRS = frozenset({"test", "tests", "idle_test"})
DOCSTRING_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


class DataError(ValueError):
    """Data that cannot be used for training; the message names the path or value at fault
    and what is allowed."""


@dataclass(frozen=True)
class Document:
    """One unit of text; ``name`` (a relative path, ``path:line`` for a JSON line) decides its
    split and is unique within a corpus."""

    name: str
    text: str


@dataclass(frozen=True)
class Corpus:
    """Documents split into train and validation, disjoint by document (or, for data with too
    few documents, by a cut at a line boundary; see ``split_documents``)."""

    name: str
    train: tuple[Document, ...]
    val: tuple[Document, ...]

    @cached_property
    def content_hash(self) -> str:
        """Hash of the names, texts and split of every document (not of ``name``)."""

        def parts() -> Iterator[str | int]:
            for split in (self.train, self.val):
                yield len(split)
                for doc in split:
                    yield doc.name
                    yield doc.text

        return content_hash(parts())

    def nbytes(self, split: str) -> int:
        """UTF-8 size of the texts of ``split`` ("train" or "val")."""
        return sum(len(doc.text.encode()) for doc in getattr(self, split))

    def to_json(self) -> bytes:
        data = {
            "name": self.name,
            "train": [[d.name, d.text] for d in self.train],
            "val": [[d.name, d.text] for d in self.val],
        }
        return json.dumps(data, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Corpus:
        data = json.loads(raw)
        return cls(
            data["name"],
            tuple(Document(*d) for d in data["train"]),
            tuple(Document(*d) for d in data["val"]),
        )


def check_val_fraction(val_fraction: float) -> None:
    if not (isinstance(val_fraction, float | int) and 0 < val_fraction <= 0.5):
        raise DataError(f"val_fraction must be a number in (0, 0.5], got {val_fraction!r}")


def _name_hash(doc: Document) -> bytes:
    return hashlib.sha256(doc.name.encode()).digest()


def split_documents(
    name: str, docs: Sequence[Document], val_fraction: float = DEFAULT_VAL_FRACTION
) -> Corpus:
    """Split ``docs`` (in order, non-empty texts, unique names) into train and validation.

    Validation takes whole documents in the order of the hash of their names, skipping those
    that would take it past twice ``val_fraction`` of the characters, until it holds at least
    ``val_fraction``; both splits keep the input order. When that fails or leaves no training
    document (a single file, a few large ones), the tail of the data is held out instead: the
    last documents and the end of the one before them, ``val_fraction`` of the characters.
    """
    check_val_fraction(val_fraction)
    want = math.ceil(val_fraction * sum(len(d.text) for d in docs))
    held_out: set[str] = set()
    size = 0
    for doc in sorted(docs, key=_name_hash):
        if size >= want:
            break
        if size + len(doc.text) <= 2 * want:
            held_out.add(doc.name)
            size += len(doc.text)
    if size < want or len(held_out) == len(docs):
        return _split_tail(name, docs, want)
    train = tuple(d for d in docs if d.name not in held_out)
    return Corpus(name, train, tuple(d for d in docs if d.name in held_out))


def _split_tail(name: str, docs: Sequence[Document], want: int) -> Corpus:
    """Hold out the last ``want`` characters: whole documents from the end, then the end of
    the one before them, cut at the line start nearest to the exact cut when one lies within
    ``want / 2`` of it (else at the exact cut), keeping at least one character for training."""
    train = list(docs)
    val: list[Document] = []
    while want > 0 and train:
        doc = train.pop()
        if len(doc.text) <= want and train:
            val.insert(0, doc)
            want -= len(doc.text)
            continue
        cut = max(len(doc.text) - want, 1)
        before = doc.text.rfind("\n", 0, cut) + 1
        after = doc.text.find("\n", cut) + 1
        starts = [s for s in (before, after) if 0 < s < len(doc.text) and abs(s - cut) <= want / 2]
        cut = min(starts, key=lambda s: abs(s - cut), default=cut)
        train.append(Document(doc.name, doc.text[:cut]))
        val.insert(0, Document(f"{doc.name}#tail", doc.text[cut:]))
        break
    return Corpus(name, tuple(train), tuple(val))


def stdlib_root() -> Path:
    """The standard library folder of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(kind: str, packages: Collection[str] | None = None) -> list[tuple[str, Path]]:
    """``(relative POSIX path, path)`` of the ``.py`` files of corpus ``kind``, sorted.

    ``packages`` limits the walk to these top-level modules or packages (``"json"`` is
    ``json/`` or ``json.py``); an unknown name raises ``DataError``.
    """
    if kind not in STDLIB_KINDS:
        raise DataError(f"stdlib corpus must be one of {', '.join(STDLIB_KINDS)}; got {kind!r}")
    root = stdlib_root()
    skipped = SKIPPED_DIRS | TEST_DIRS if kind == "prose" else SKIPPED_DIRS

    def wanted_dir(path: Path) -> bool:
        return path.name not in skipped and not path.name.startswith("config-")

    def walk(folder: Path) -> Iterator[Path]:
        for path in sorted(folder.iterdir()):
            if path.is_dir() and wanted_dir(path):
                yield from walk(path)
            elif path.suffix == ".py" and not path.name.startswith("_sysconfigdata"):
                yield path

    files = [(p.relative_to(root).as_posix(), p) for p in walk(root)]
    if packages is None:
        return files
    tops = {rel.split("/")[0].removesuffix(".py") for rel, _ in files}
    unknown = sorted(set(packages) - tops)
    if unknown:
        raise DataError(f"no stdlib module(s) {unknown} in the {kind} corpus of {root}")
    return [(rel, p) for rel, p in files if rel.split("/")[0].removesuffix(".py") in packages]


def module_docstrings(source: bytes) -> list[str]:
    """The cleaned, non-empty docstrings of a module in source order (depth first); none when
    the source does not parse."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, DOCSTRING_OWNERS):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                found.append(doc)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _decode_source(source: bytes) -> str | None:
    """Python source decoded with its declared encoding; None when it cannot be decoded."""
    lines = iter(source.splitlines(keepends=True))
    try:
        encoding, _ = tokenize.detect_encoding(lambda: next(lines, b""))
        return source.decode(encoding)
    except (SyntaxError, UnicodeDecodeError, LookupError):
        return None


def build_stdlib_documents(kind: str, sources: Sequence[tuple[str, bytes]]) -> list[Document]:
    """The documents of corpus ``kind`` from ``(relative path, bytes)`` pairs in walk order."""
    docs: list[Document] = []
    if kind == "code":
        for rel, source in sources:
            text = _decode_source(source)
            if text:
                docs.append(Document(rel, text))
        return docs
    seen: set[str] = set()
    for rel, source in sources:
        fresh = []
        for doc in module_docstrings(source):
            if doc not in seen:
                seen.add(doc)
                fresh.append(doc)
        if fresh:
            docs.append(Document(rel, "\n\n".join(fresh)))
    return docs


def stdlib_corpus(
    kind: str = "prose",
    *,
    packages: Collection[str] | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> Corpus:
    """The ``prose`` or ``code`` corpus of this interpreter's stdlib (see the module docstring),
    built once and then read from the cache; ``packages`` limits it to a few top-level
    modules (for tests)."""
    check_val_fraction(val_fraction)
    sources = [(rel, path.read_bytes()) for rel, path in stdlib_files(kind, packages)]
    key = content_hash([RECIPE, kind, val_fraction, *(x for pair in sources for x in pair)])
    path = cache_dir() / "corpus" / f"stdlib-{kind}-{key[:24]}.json"
    if path.exists():
        try:
            return Corpus.from_json(path.read_bytes())
        except (ValueError, KeyError, TypeError) as error:
            log.warning("rebuilding the unreadable cache entry %s (%s)", path, error)
    log.info("building the stdlib %s corpus from %s (cached at %s)", kind, stdlib_root(), path)
    name = f"stdlib-{kind}" if packages is None else f"stdlib-{kind}[{','.join(sorted(packages))}]"
    corpus = split_documents(name, build_stdlib_documents(kind, sources), val_fraction)
    atomic_write(path, corpus.to_json())
    return corpus
