"""``growformer shrink`` on Hugging Face decoder folders (tiny GPT-2, Llama, Qwen2): the child
is written in the source's family, loads with its Auto class, computes what the canonical child
computes, and keeps whole GQA groups; family limits are checked before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from growformer import hf
from growformer.cli import main
from growformer.shrink import REPORT_FILE
from hf_tiny import VOCAB, gpt2, llama, load, output, qwen2, relative_error, saved, tokens

FAMILIES = {"gpt2": gpt2, "llama": llama, "qwen2": qwen2}


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "calib.bin"
    np.random.default_rng(0).integers(0, VOCAB, 4000, dtype=np.uint16).tofile(path)
    return path


@pytest.mark.parametrize("family", list(FAMILIES))
def test_hf_decoder_shrinks_into_its_own_family(family, tmp_path, token_file, capsys):
    src = saved(
        FAMILIES[family](n_layer=3) if family == "gpt2" else FAMILIES[family](num_hidden_layers=3),
        tmp_path / "src",
    )
    dst = tmp_path / "dst"
    sizes = ["--layers", 2, "--hidden", 24, "--heads", 2, "--ffn", 32]
    if family == "gpt2":  # GPT-2's head size is hidden/heads: 2 heads of 8 need hidden 16
        sizes[3] = 16
    args = ["shrink", src, dst, *sizes, "--data", token_file, "--calib-tokens", 128]
    assert main([str(a) for a in args]) == 0
    child = load(dst)
    assert type(child).__name__ == type(load(src)).__name__
    report = json.loads((dst / REPORT_FILE).read_text())
    assert report["layers_kept"][0] == 0 and report["layers_kept"][-1] == 2
    canonical = hf.read_folder(dst)
    assert canonical.config.n_layers == 2 and canonical.config.n_heads == 2
    if family != "gpt2":
        assert canonical.config.n_kv_heads == 1  # the source's group size 2 is kept
        assert len(report["layers"][0]["kv_heads"]) == 1
        group = report["layers"][0]["kv_heads"][0]
        assert [h // 2 for h in report["layers"][0]["heads"]] == [group, group]
    ids = tokens()
    with torch.no_grad():
        expected = canonical.model()(ids)
    assert relative_error(expected, output(child, ids)) < 1e-5


def test_gpt2_family_limit_is_checked_before_anything_is_written(tmp_path, token_file, capsys):
    src = saved(gpt2(), tmp_path / "src")
    dst = tmp_path / "dst"
    args = ["shrink", src, dst, "--hidden", 24, "--heads", 2, "--data", token_file]
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert "cannot be saved as gpt2" in err and "hidden=24" in err and "keeps the head" in err
    assert not dst.exists()


@pytest.mark.parametrize("explicit", [True, False], ids=["layer_types", "max_window_layers"])
def test_shrink_keeps_the_layer_types_of_the_kept_layers(tmp_path, token_file, explicit):
    """Sliding and full attention stay with their layers when a shrink drops some, also when
    config.json gives the types only through ``max_window_layers`` (the Hub's Qwen2 configs)."""
    from growformer.shrink import shrink_folder

    source = qwen2(
        num_hidden_layers=4, use_sliding_window=True, sliding_window=8, max_window_layers=2
    )
    src = saved(source, tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    types = config["layer_types"]
    assert types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    if not explicit:
        del config["layer_types"]
        (src / "config.json").write_text(json.dumps(config))
    dst = tmp_path / "dst"
    keep = [0, 2, 3]
    shrink_folder(src, dst, {"n_layers": 3}, keep_layers=keep, data=token_file, calib_tokens=128)
    written = json.loads((dst / "config.json").read_text())
    assert written["layer_types"] == [types[i] for i in keep]
    assert written["max_window_layers"] == 1
    assert load(dst).config.layer_types == [types[i] for i in keep]


def test_written_tokenizer_length_fits_the_positions(tmp_path, token_file):
    """Shrinking the positions below a tokenizer length the source could take lowers it, so
    ``truncation=True`` stays safe; otherwise the tokenizer config is copied as it is."""
    src = saved(llama(), tmp_path / "src")  # 16 positions
    tokenizer_config = src / "tokenizer_config.json"
    tokenizer_config.write_text(json.dumps({"model_max_length": 16}))
    args = ["shrink", src, tmp_path / "short", "--max-seq-len", 8, "--data", token_file]
    assert main([str(a) for a in [*args, "--calib-tokens", 128]]) == 0
    settings = json.loads((tmp_path / "short" / "tokenizer_config.json").read_text())
    assert settings["model_max_length"] == 8
    for length in (16, 1e30):  # fits the source; no limit (transformers' "very large")
        tokenizer_config.write_text(json.dumps({"model_max_length": length, "x": 1}))
        dst = tmp_path / f"grown_{length}"
        assert main(["grow", str(src), str(dst), "--ffn", "96"]) == 0
        assert (dst / "tokenizer_config.json").read_bytes() == tokenizer_config.read_bytes()
    tokenizer_config.write_text("{not json")
    assert main(["grow", str(src), str(tmp_path / "bad"), "--ffn", "96"]) == 2
    assert not (tmp_path / "bad").exists()


def test_a_folder_without_a_tokenizer_needs_token_ids(tmp_path, capsys):
    """transformers would build an empty tokenizer for it (every word unknown), and the
    importance would be measured on nothing."""
    src = saved(llama(), tmp_path / "src")
    assert main(["shrink", str(src), str(tmp_path / "dst"), "--ffn", "24"]) == 2
    assert "has no tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()
