"""User data (``--data PATH``): text files, folders of them, JSON lines, or token files.

A path is a file or a folder; a folder is walked recursively in sorted order, skipping hidden
entries (``.git``, ``.DS_Store``). Its files must all be text (``TEXT_SUFFIXES``, one document
per file, UTF-8) and/or ``.jsonl`` (one document per line, the string in ``text_field``), or
all ``.bin`` token files (each with an optional ``NAME.bin.json`` sidecar; see ``tokens``).
Anything else raises ``DataError`` naming the file and what is allowed, before any training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from growformer.data.corpus import DataError, Document
from growformer.jsonl import JsonLineError, json_lines

TEXT_SUFFIXES = frozenset(
    {".txt", ".text", ".md", ".markdown", ".rst", ".tex", ".html", ".htm", ".xml", ".csv"}
    | {".py", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".java", ".js", ".ts", ".sh"}
    | {".toml", ".yaml", ".yml", ".ini", ".cfg"}
)
JSONL_SUFFIX = ".jsonl"
TOKEN_SUFFIX = ".bin"
SIDECAR_SUFFIX = ".bin.json"
DEFAULT_TEXT_FIELD = "text"


@dataclass(frozen=True)
class UserFiles:
    """The data files under a user path: text/JSON-lines files or token files, not both."""

    root: Path
    files: tuple[Path, ...]
    kind: str  # "text" or "tokens"

    def name_of(self, path: Path) -> str:
        """The document name of ``path``: relative to the folder, or the file name."""
        return path.name if path == self.root else path.relative_to(self.root).as_posix()


def allowed() -> str:
    suffixes = ", ".join(sorted(TEXT_SUFFIXES | {JSONL_SUFFIX, TOKEN_SUFFIX}))
    return f"text files or folders of them ({suffixes}; .bin with an optional .bin.json sidecar)"


def find_files(path: str | os.PathLike) -> UserFiles:
    """Classify and list the data files under ``path``; raise ``DataError`` for a missing path,
    an empty folder, an unknown suffix, or token files mixed with text."""
    if not os.fspath(path):
        raise DataError(f"the data path is empty; expected {allowed()}")
    root = Path(path)
    if not root.exists():
        raise DataError(f"data path {root} does not exist; expected {allowed()}")
    if root.is_dir():
        files = [
            p
            for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        ]
    else:
        files = [root]
    sidecars = {p for p in files if p.name.endswith(SIDECAR_SUFFIX)}
    files = [p for p in files if p not in sidecars]
    if not files:
        raise DataError(f"data path {root} holds no data files; expected {allowed()}")
    for p in files:
        if p.suffix.lower() not in TEXT_SUFFIXES | {JSONL_SUFFIX, TOKEN_SUFFIX}:
            raise DataError(
                f"{p}: unknown data file type {p.suffix or '(no suffix)'!r}; allowed: {allowed()}"
            )
    tokens = [p for p in files if p.suffix.lower() == TOKEN_SUFFIX]
    if tokens and len(tokens) != len(files):
        text = next(p for p in files if p not in tokens)
        raise DataError(
            f"data path {root} mixes .bin token files ({tokens[0]}) with text ({text}); "
            "give one kind"
        )
    return UserFiles(root, tuple(files), "tokens" if tokens else "text")


def _read_utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e


def _jsonl_documents(path: Path, name: str, text_field: str) -> list[Document]:
    docs = []
    try:
        for number, record in json_lines(_read_utf8(path)):
            docs.extend(_jsonl_document(record, f"{path}:{number}", f"{name}:{number}", text_field))
    except JsonLineError as e:
        raise DataError(f"{path}:{e.number}: not valid JSON ({e.reason})") from e
    return docs


def _jsonl_document(record: object, where: str, name: str, text_field: str) -> list[Document]:
    """The document of one JSON line (none when its text is empty); ``DataError`` naming
    ``where`` unless it is an object whose ``text_field`` is a string."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: each line must be a JSON object with {text_field!r}")
    if text_field not in record:
        raise DataError(
            f"{where}: no field {text_field!r} (fields: {sorted(record)}); "
            "choose the field with --text-field (text_field in a run file)"
        )
    text = record[text_field]
    if not isinstance(text, str):
        raise DataError(
            f"{where}: field {text_field!r} must be a string, got {type(text).__name__}"
        )
    return [Document(name, text)] if text else []


def check_text_field(text_field: object) -> None:
    """Raise ``DataError`` unless ``text_field`` is a non-empty string."""
    if not isinstance(text_field, str) or not text_field:
        raise DataError(
            f"text_field (the JSON lines' field to read) must be a non-empty string, got "
            f"{text_field!r}"
        )


def text_documents(files: UserFiles, text_field: str = DEFAULT_TEXT_FIELD) -> list[Document]:
    """The non-empty documents of text files (one per file) and JSON lines (the string in
    ``text_field`` of each line), in file order; raise ``DataError`` when there are none or
    ``text_field`` is not a non-empty string."""
    check_text_field(text_field)
    docs = []
    for path in files.files:
        name = files.name_of(path)
        if path.suffix.lower() == JSONL_SUFFIX:
            docs.extend(_jsonl_documents(path, name, text_field))
        else:
            text = _read_utf8(path)
            if text:
                docs.append(Document(name, text))
    if not docs:
        raise DataError(f"data path {files.root} holds no text (every file or record is empty)")
    return docs
