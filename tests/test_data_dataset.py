"""``load_dataset``: the stdlib corpus, user text / JSON lines / token files, every bad input."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from growformer.data import DataError, load_dataset
from growformer.data.cache import CACHE_ENV

SMALL = ("json", "textwrap", "email")
PARAGRAPH = "Growing a model while it trains saves compute when the growth keeps what it learned.\n"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _lines(n: int, tag: str = "") -> str:
    return "".join(f"{tag}{i}: {PARAGRAPH}" for i in range(n))


def test_stdlib_subset_dataset(cache):
    ds = load_dataset(stdlib_modules=SMALL, vocab_size=512, seq_len=64, seed=3)
    assert ds.source == "stdlib:prose" and ds.vocab_size == 512
    assert ds.tokenizer is not None and ds.tokenizer.vocab_size <= 512
    assert len(ds.train) > 10 * len(ds.val) > 0
    x, y = ds.train.batch_at(0, 4, 64)
    assert int(x.max()) < ds.vocab_size and torch.equal(x[:, 1:], y[:, :-1])
    assert "stdlib:prose" in ds.describe() and f"{len(ds.train):,} tokens" in ds.describe()

    start = time.perf_counter()
    again = load_dataset(stdlib_modules=SMALL, vocab_size=512, seq_len=64, seed=3)
    assert time.perf_counter() - start < 1.0  # everything read from the cache
    assert again.fingerprint == ds.fingerprint
    assert torch.equal(again.train.batch_at(9, 4, 64)[0], ds.train.batch_at(9, 4, 64)[0])
    for sub in ("corpus", "tokenizer", "tokens"):
        assert any((cache / sub).iterdir())


@pytest.mark.parametrize(
    ("entries", "damage"),
    [
        ("corpus/*.json", lambda b: b[: len(b) // 2]),
        ("tokenizer/*.json", lambda b: b""),
        ("tokens/train-*.bin", lambda b: b[: len(b) // 2]),
        ("tokens/val-*.bin.json", lambda b: b"{"),
    ],
)
def test_a_damaged_cache_entry_is_built_again_not_trusted(cache, entries, damage):
    ds = load_dataset(stdlib_modules=SMALL, vocab_size=512, seq_len=64, seed=3)
    fingerprint, train_tokens = ds.fingerprint, len(ds.train)
    del ds  # its token files are memory-mapped: cutting them under it would fault
    (path,) = cache.glob(entries)
    path.write_bytes(damage(path.read_bytes()))
    again = load_dataset(stdlib_modules=SMALL, vocab_size=512, seq_len=64, seed=3)
    assert again.fingerprint == fingerprint and len(again.train) == train_tokens


def test_stdlib_train_and_val_are_disjoint_documents():
    ds = load_dataset("stdlib:code", stdlib_modules=["json", "email"], vocab_size=300, seq_len=8)
    text = ds.tokenizer.decode(ds.val.tokens)
    val_docs = [d for d in text.split("<|endoftext|>") if len(d) > 200]
    train_text = ds.tokenizer.decode(ds.train.tokens)
    assert val_docs and not any(d in train_text for d in val_docs)


def test_text_file_and_folder(tmp_path):
    (tmp_path / "notes.md").write_text(_lines(300))
    ds = load_dataset(tmp_path / "notes.md", vocab_size=300, seq_len=16)
    assert ds.source.endswith("notes.md") and len(ds.val) >= 17
    assert ds.tokenizer.decode(ds.train.tokens[:40]).startswith("0: Growing a model")

    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    for i in range(40):
        (folder / "sub" / f"part{i:02}.txt").write_text(_lines(10, f"p{i}-"))
    (folder / "code.py").write_text("def f():\n    return 1\n" * 50)
    (folder / ".hidden").write_text("ignored: not data")
    ds = load_dataset(folder, vocab_size=320, seq_len=16, val_fraction=0.1)
    train, val = (ds.tokenizer.decode(s.tokens) for s in (ds.train, ds.val))
    assert "def f():" in train + val and "ignored" not in train + val
    held_out = {line.split("-")[0] for line in val.splitlines() if line.startswith("p")}
    assert held_out and not any(f"\n{p}-" in "\n" + train for p in held_out)


def test_jsonl_with_default_and_custom_field(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"text": _lines(3, f"r{i}-"), "body": f"body {i} " * 20} for i in range(60)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = load_dataset(path, vocab_size=300, seq_len=16)
    all_text = ds.tokenizer.decode(np.concatenate([ds.train.tokens, ds.val.tokens]))
    assert "r59-2: Growing" in all_text and "body" not in all_text
    ds = load_dataset(path, vocab_size=300, seq_len=16, text_field="body")
    assert "body 7 body 7" in ds.tokenizer.decode(ds.train.tokens) + ds.tokenizer.decode(
        ds.val.tokens
    )


def test_jsonl_lines_end_at_newline_only(tmp_path):
    """U+2028 and U+0085 may stand unescaped inside a JSON string (``str.splitlines`` would
    break the line there)."""
    path = tmp_path / "data.jsonl"
    rows = [{"text": _lines(3, f"r{i}\u2028\u0085-")} for i in range(60)]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    ds = load_dataset(path, vocab_size=300, seq_len=16)
    all_text = ds.tokenizer.decode(np.concatenate([ds.train.tokens, ds.val.tokens]))
    assert "r59\u2028\u0085-2: Growing" in all_text


def test_an_empty_data_path_is_refused_not_read_as_the_current_folder():
    with pytest.raises(DataError, match="the data path is empty"):
        load_dataset("", seq_len=64)


def test_bin_file_with_and_without_sidecar(tmp_path):
    tokens = (np.arange(5000) % 1000).astype(np.uint16)
    path = tmp_path / "tokens.bin"
    tokens.tofile(path)
    ds = load_dataset(path, seq_len=32)
    assert ds.tokenizer is None and ds.vocab_size == 1000  # largest id + 1
    assert len(ds.train) == 4900 and len(ds.val) == 100
    assert np.array_equal(np.concatenate([ds.train.tokens, ds.val.tokens]), tokens)
    assert "pre-tokenized" in ds.describe()
    assert load_dataset(path, seq_len=32, vocab_size=1024).vocab_size == 1024

    wide = tmp_path / "wide.bin"
    (np.arange(3000) * 30).astype(np.uint32).tofile(wide)
    (tmp_path / "wide.bin.json").write_text(json.dumps({"dtype": "uint32", "vocab_size": 100_000}))
    ds = load_dataset(wide, seq_len=16)
    assert ds.vocab_size == 100_000 and int(ds.train.batch_at(0, 2, 16)[0].max()) < 100_000


def test_bin_folder_with_train_and_val(tmp_path):
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "val.bin")
    ds = load_dataset(tmp_path, seq_len=16, vocab_size=1000)
    assert len(ds.train) == 1000 and len(ds.val) == 100


def test_bin_files_concatenate_in_name_order(tmp_path):
    np.full(600, 1, dtype=np.uint16).tofile(tmp_path / "a.bin")
    np.full(400, 2, dtype=np.uint16).tofile(tmp_path / "b.bin")
    ds = load_dataset(tmp_path, seq_len=8, val_fraction=0.1)
    assert ds.train.tokens[:600].tolist() == [1] * 600 and ds.val.tokens.tolist() == [2] * 100


def _bad(tmp_path, name: str, content: bytes | str) -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(
    ("files", "data", "kwargs", "match"),
    [
        ({}, "missing", {}, "does not exist"),
        ({"empty/.keep": ""}, "empty", {}, "holds no data files"),
        ({"e.txt": ""}, "e.txt", {}, "holds no text"),
        ({"d/a.txt": "hi " * 100, "d/img.png": b"\x89PNG"}, "d", {}, r"img\.png: unknown .*\.png"),
        ({"README": "x"}, "README", {}, "no suffix"),
        ({"m/a.txt": "x" * 50, "m/t.bin": b"\0\0"}, "m", {}, "mixes .bin"),
        ({"l.latin1.txt": "caf\xe9".encode("latin-1")}, "l.latin1.txt", {}, "not UTF-8"),
        ({"j.jsonl": '{"text": "a"}\n{"body": "b"}\n'}, "j.jsonl", {}, r"j\.jsonl:2: no field"),
        ({"j.jsonl": '{"text": "a"}\n'}, "j.jsonl", {"text_field": "body"}, "'body'"),
        ({"j.jsonl": '{"text": "a"}\n'}, "j.jsonl", {"text_field": ""}, "non-empty string"),
        ({"j.jsonl": '{"text": "a"}\n'}, "j.jsonl", {"text_field": 3}, "non-empty string"),
        ({"j.jsonl": "[1, 2]\n"}, "j.jsonl", {}, "JSON object"),
        ({"j.jsonl": "{oops\n"}, "j.jsonl", {}, r"j\.jsonl:1: not valid JSON"),
        ({"j.jsonl": '{"text": 3}\n'}, "j.jsonl", {}, "must be a string"),
        ({"j.jsonl": '{"text": ""}\n'}, "j.jsonl", {}, "holds no text"),
        ({"o.bin": b"\0" * 7}, "o.bin", {}, "7 bytes, not a multiple of 2"),
        ({"o.bin": b"\0" * 6}, "o.bin", {"token_dtype": "uint32"}, "not a multiple of 4"),
        ({"z.bin": b""}, "z.bin", {}, "is empty"),
        (
            {"w.bin": (np.arange(500, dtype=np.uint32) % 300 + 1).tobytes()},
            "w.bin",
            {},
            "looks like 32-bit tokens",
        ),
        ({"f.bin": b"\0" * 8}, "f.bin", {"token_dtype": "float32"}, "one of uint16"),
        (
            {"s.bin": b"\0" * 8, "s.bin.json": '{"dtype": "uint32"}'},
            "s.bin",
            {"token_dtype": "uint16"},
            "says uint32",
        ),
        ({"s.bin": b"\0" * 8, "s.bin.json": "[1]"}, "s.bin", {}, "JSON object"),
        (
            {"v.bin": np.arange(500, dtype=np.uint16).tobytes()},
            "v.bin",
            {"vocab_size": 300},
            r"span \[0, 499\] but must lie in \[0, 300\)",
        ),
        (
            {"n.bin": np.array([-1] + [1] * 99, dtype=np.int32).tobytes()},
            "n.bin",
            {"token_dtype": "int32"},
            r"span \[-1, 1\]",
        ),
        ({"few.bin": np.arange(20, dtype=np.uint16).tobytes()}, "few.bin", {}, "too few"),
        ({"short.txt": _lines(40)}, "short.txt", {"vocab_size": 300}, "val split.*too few"),
        ({"ok.txt": "x"}, "ok.txt", {"stdlib_modules": ["json"]}, "stdlib_modules applies"),
        ({}, "stdlib:poetry", {}, "prose, code"),
        ({"ok.txt": "x"}, "ok.txt", {"vocab_size": 100}, "vocab_size must be >= 257"),
        ({"ok.txt": "x"}, "ok.txt", {"val_fraction": 0.9}, "val_fraction"),
    ],
)
def test_bad_data_fails_with_a_clear_error(tmp_path, files, data, kwargs, match):
    for name, content in files.items():
        _bad(tmp_path, name, content)
    source = data if data.startswith("stdlib:") else str(tmp_path / data)
    with pytest.raises(DataError, match=match):
        load_dataset(source, **{"seq_len": 64, **kwargs})


def test_bin_vocabulary_size_from_sidecars(tmp_path):
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "a.bin")
    (tmp_path / "a.bin.json").write_text('{"vocab_size": 2000}')
    assert load_dataset(tmp_path / "a.bin", vocab_size=4096, seq_len=8).vocab_size == 2000
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "b.bin")
    (tmp_path / "b.bin.json").write_text('{"vocab_size": 3000}')
    with pytest.raises(DataError, match="different vocabulary sizes"):
        load_dataset(tmp_path, seq_len=8)
    (tmp_path / "b.bin.json").write_text('{"vocab_size": "many"}')
    with pytest.raises(DataError, match=r"b\.bin\.json: vocab_size must be a positive integer"):
        load_dataset(tmp_path, seq_len=8)
    with pytest.raises(DataError, match="vocab_size must be a positive integer"):
        load_dataset(tmp_path / "a.bin", vocab_size=0, seq_len=8)


@pytest.mark.slow
def test_real_prose_corpus():
    start = time.perf_counter()
    ds = load_dataset(seq_len=128)
    elapsed = time.perf_counter() - start
    assert 1.5e6 < sum(len(ds.tokenizer.decode(s.tokens)) for s in (ds.train, ds.val)) < 3e6
    assert ds.vocab_size == ds.tokenizer.vocab_size == 4096
    assert 0.01 < len(ds.val) / (len(ds.train) + len(ds.val)) < 0.04
    assert elapsed < 30
