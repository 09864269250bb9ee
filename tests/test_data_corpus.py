"""The stdlib corpus (extraction, determinism, cache) and the train/validation split."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from growformer.atomic import atomic_write, current_umask
from growformer.data import DataError, Document, split_documents, stdlib_corpus
from growformer.data.cache import CACHE_ENV, cache_dir, content_hash
from growformer.data.corpus import build_stdlib_documents, module_docstrings, stdlib_files

SMALL = ("json", "textwrap", "email")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "growformer"


def test_atomic_write_leaves_one_whole_file_with_the_umask_mode(tmp_path):
    path = tmp_path / "entries" / "f.bin"
    mask = os.umask(0o027)
    try:
        atomic_write(path, b"first")
        atomic_write(path, b"second")
    finally:
        os.umask(mask)
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]


@pytest.mark.skipif(
    not Path("/proc/self/status").is_file()
    or "Umask:" not in Path("/proc/self/status").read_text(),
    reason="the kernel does not report the umask",
)
def test_reading_the_umask_does_not_change_it(monkeypatch):
    """Where the kernel reports it, reading the umask never sets it (another thread creating a
    file meanwhile would get the wrong mode)."""
    mask = os.umask(0o027)
    try:

        def no_umask(_):
            raise AssertionError("os.umask called")

        monkeypatch.setattr(os, "umask", no_umask)
        assert current_umask() == 0o027
        monkeypatch.undo()
    finally:
        os.umask(mask)


def test_content_hash_separates_parts():
    assert content_hash(["ab", "c"]) != content_hash(["a", "bc"])
    assert content_hash([1, b"x"]) == content_hash([1, b"x"])


def test_stdlib_files_skip_tests_for_prose_and_machine_specific_files():
    prose = [rel for rel, _ in stdlib_files("prose")]
    code = [rel for rel, _ in stdlib_files("code")]
    assert "json/decoder.py" in prose and "json/decoder.py" in code
    assert not any(r.startswith(("test/", "idlelib/idle_test/")) for r in prose)
    assert any(r.startswith("test/") for r in code)
    for rels in (prose, code):
        assert not any("site-packages/" in r or r.startswith("config-") for r in rels)
        assert not any(r.split("/")[-1].startswith("_sysconfigdata") for r in rels)


def test_stdlib_files_rejects_unknown_kind_and_module():
    with pytest.raises(DataError, match="prose, code"):
        stdlib_files("poetry")
    with pytest.raises(DataError, match="no_such_module"):
        stdlib_files("prose", ["json", "no_such_module"])


def test_module_docstrings_in_source_order_cleaned():
    source = b'''"""Module doc."""
class A:
    """Class doc.

        indented
      less
    """
    def f(self):
        """Method doc."""
        def inner():
            """Inner doc."""
async def g():
    """Async doc."""
def h():
    pass
'''
    assert module_docstrings(source) == [
        "Module doc.",
        "Class doc.\n\n  indented\nless",
        "Method doc.",
        "Inner doc.",
        "Async doc.",
    ]
    assert module_docstrings(b"def broken(:\n") == []


def test_stdlib_prose_is_deterministic_and_cached(cache, monkeypatch, tmp_path):
    first = stdlib_corpus("prose", packages=SMALL)
    (path,) = (cache / "corpus").iterdir()
    start = time.perf_counter()
    again = stdlib_corpus("prose", packages=SMALL)
    assert time.perf_counter() - start < 1.0
    assert again.content_hash == first.content_hash
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "other"))  # rebuilt from scratch
    rebuilt = stdlib_corpus("prose", packages=SMALL)
    assert rebuilt.content_hash == first.content_hash
    assert (tmp_path / "other" / "corpus" / path.name).read_bytes() == path.read_bytes()

    docs = first.train + first.val
    assert len({d.name for d in docs}) == len(docs)
    assert all(d.name.split("/")[0].removesuffix(".py") in SMALL for d in docs)
    assert first.nbytes("train") > 10 * first.nbytes("val") > 0


def test_prose_documents_deduplicate_docstrings_across_modules():
    sources = [
        ("a.py", b'"""A."""\ndef f():\n    """Shared."""\n'),
        ("b.py", b'def g():\n    """Shared."""\ndef h():\n    """B."""\n'),
        ("c.py", b'def k():\n    """Shared."""\n'),
    ]
    assert build_stdlib_documents("prose", sources) == [
        Document("a.py", "A.\n\nShared."),
        Document("b.py", "B."),
    ]


def test_stdlib_code_is_the_source():
    corpus = stdlib_corpus("code", packages=["json"])
    docs: dict[str, str] = {}
    for d in corpus.train + corpus.val:  # a held-out tail (name#tail) follows its head
        name = d.name.removesuffix("#tail")
        docs[name] = docs.get(name, "") + d.text
    assert set(docs) == {rel for rel, _ in stdlib_files("code", ["json"])}
    for rel, path in stdlib_files("code", ["json"]):
        assert docs[rel] == path.read_text(encoding="utf-8")


def test_cache_key_depends_on_the_recipe_inputs(cache):
    stdlib_corpus("prose", packages=["json"])
    stdlib_corpus("prose", packages=["json"], val_fraction=0.1)
    stdlib_corpus("code", packages=["json"])
    assert len(list((cache / "corpus").iterdir())) == 3


def _docs(n: int, size: int = 100) -> list[Document]:
    return [Document(f"doc{i}", f"line {i}\n" * (size // 8)) for i in range(n)]


def test_split_by_document_hash_is_disjoint_complete_and_near_the_fraction():
    docs = _docs(1000)
    corpus = split_documents("d", docs, 0.05)
    train, val = {d.name for d in corpus.train}, {d.name for d in corpus.val}
    assert not train & val and train | val == {d.name for d in docs}
    assert 0.05 <= corpus.nbytes("val") / (corpus.nbytes("train") + corpus.nbytes("val")) < 0.06
    # Input order is kept in both splits, and the split is a function of the documents.
    order = [d.name for d in docs]
    assert [d.name for d in corpus.train] == [n for n in order if n in train]
    assert split_documents("d", docs, 0.05).content_hash == corpus.content_hash


def test_split_falls_back_to_the_tail_for_one_document():
    text = "".join(f"line {i}\n" for i in range(100))
    corpus = split_documents("one", [Document("a.txt", text)], 0.1)
    (train,), (val,) = corpus.train, corpus.val
    assert train.text + val.text == text
    assert val.text.startswith("line ") and train.text.endswith("\n")
    assert abs(len(val.text) - 0.1 * len(text)) <= 0.05 * len(text)


def test_split_tail_takes_whole_last_documents_first():
    docs = [Document("big", "x\n" * 500), Document("small1", "y\n" * 20), Document("s2", "z\n")]
    corpus = split_documents("d", docs, 0.05)
    assert [d.name for d in corpus.val] == ["big#tail", "small1", "s2"]
    assert "".join(d.text for d in corpus.train + corpus.val) == "".join(d.text for d in docs)


@pytest.mark.parametrize("fraction", [0, -0.1, 0.6, "0.1"])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(DataError, match="val_fraction"):
        split_documents("d", _docs(3), fraction)
