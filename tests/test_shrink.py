"""Subcloning on small models: grow-then-shrink recovers the source, the record, GQA grouping,
block removal, rescaling, and every bad input (clear errors, nothing written)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import POST_NORM, VARIANTS, assert_same_function, cli, make_model, tokens_for
from growformer import GrowthOptions, ModelConfig, Transformer, grow, model_from_state
from growformer.data import DataError
from growformer.data.cache import CACHE_ENV
from growformer.model_io import load_model, save_model
from growformer.shrink import (
    REPORT_FILE,
    Importance,
    ShrinkError,
    apply_plan,
    choose_layers,
    measure_importance,
    plan_subclone,
    resolve_shrink_target,
    subclone,
    truncation_plan,
)
from growformer.shrink.calibration import DEFAULT_CALIB_TOKENS, calibration_batches, folder_encoder


def calibration(config: ModelConfig, batches: int = 2) -> list[torch.Tensor]:
    return [tokens_for(config, batch=2, seed=s) for s in range(batches)]


def measured(model: Transformer) -> Importance:
    return measure_importance(model.config, model.state_dict(), calibration(model.config))


# -- the source's own parts come back exactly ------------------------------------------------


@pytest.mark.parametrize("variant", ["llama_gqa_tied_eps", "gpt2_all_bias", "qwen_mqa_qkv_bias"])
def test_shrinking_a_grown_model_recovers_the_source(variant):
    """Growth adds heads, kv groups, FFN neurons and identity layers that write nothing: their
    importance and block change are zero, so subcloning back to the source's sizes picks
    exactly the source's parts (hidden unchanged, so no rescaling) and its function."""
    config = VARIANTS[variant]
    small = make_model(config)
    heads = {"n_heads": config.n_heads + config.group_size, "n_kv_heads": config.n_kv_heads + 1}
    big, _ = grow(
        small,
        {**heads, "ffn": config.ffn + 24, "n_layers": config.n_layers + 2},
        GrowthOptions(where="middle", seed=7),
    )
    importance = measured(big)
    assert importance.block_change[1:3].max() < 1e-12 < importance.block_change[[0, 3]].min()
    sizes = {f: getattr(config, f) for f in ("n_layers", "n_heads", "n_kv_heads", "ffn")}
    child = subclone(big.config, big.state_dict(), sizes, importance)
    assert child.report.layers_kept == [0, 3] and child.report.layers_removed == [1, 2]
    assert child.config == config
    tokens = tokens_for(config)
    assert_same_function(small, model_from_state(child.config, child.state), tokens, 1e-10)


def test_post_norm_grown_heads_and_ffn_come_back_exactly():
    small = make_model(POST_NORM)
    big, _ = grow(small, {"n_heads": 6, "n_kv_heads": 6, "ffn": 64}, GrowthOptions(seed=1))
    child = subclone(big.config, big.state_dict(), {"n_heads": 4, "ffn": 48}, measured(big))
    assert child.config == POST_NORM
    assert child.report.reader_scale == 1.0
    assert_same_function(
        small, model_from_state(child.config, child.state), tokens_for(POST_NORM), 1e-10
    )


def test_the_same_sizes_give_the_same_model():
    model = make_model(VARIANTS["ln_learned_swiglu_tied_headdims"])
    child = subclone(model.config, model.state_dict(), {}, measured(model))
    assert child.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(child.state[name], tensor), name
    assert child.report.hidden_coverage == 1.0


# -- what the child holds --------------------------------------------------------------------


@pytest.mark.parametrize("variant", [*list(VARIANTS), "post_norm"])
@pytest.mark.parametrize("rescale", [True, False])
def test_record_maps_every_child_entry_to_its_source_entry(variant, rescale):
    config = POST_NORM if variant == "post_norm" else VARIANTS[variant]
    model = make_model(config)
    target = {
        "n_layers": 1 if config.n_layers == 2 else 2,
        "hidden": config.hidden - 8,
        "n_heads": config.n_heads // 2 if config.n_kv_heads > 1 else 2,
        "ffn": config.ffn // 2,
        "max_seq_len": config.max_seq_len - 4,
    }
    if config.n_kv_heads > 1:
        target["n_kv_heads"] = config.n_kv_heads // 2
    child = subclone(config, model.state_dict(), target, measured(model), rescale=rescale)
    state = model.state_dict()
    small = model_from_state(child.config, child.state)
    assert small.config == child.config
    for name, tensor in small.state_dict().items():
        entry = child.record[name]
        assert torch.equal(entry.carry(state[entry.source], scale="value"), tensor), name
    scales = [s for r in child.record.params.values() for s in r.value_scale if s is not None]
    assert bool(scales) == rescale
    logits = small(tokens_for(child.config))
    assert logits.shape[-1] == config.vocab_size and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "variant", ["llama_mha", "llama_gqa_tied_eps", "ln_learned_swiglu_tied_headdims"]
)
def test_readers_are_rescaled_by_the_root_of_the_hidden_ratio(variant):
    """Q, K, V, up, gate and an untied W_U are multiplied by √(h/ĥ); a tied W_U is the
    embedding, a writer, so the final norm's gain (and LayerNorm bias) takes the factor."""
    config = VARIANTS[variant]
    model = make_model(config)
    importance = measured(model)
    hidden = config.hidden // 4
    plain = subclone(config, model.state_dict(), {"hidden": hidden}, importance, rescale=False)
    scaled = subclone(config, model.state_dict(), {"hidden": hidden}, importance)
    assert scaled.report.reader_scale == pytest.approx(2.0)
    tied_head = ("final_norm.weight", "final_norm.bias") if config.tie_embeddings else ()
    for name, tensor in plain.state.items():
        reader = name.endswith(("q.weight", "k.weight", "v.weight", "up.weight", "gate.weight"))
        factor = 2.0 if reader or name == "lm_head.weight" or name in tied_head else 1.0
        assert torch.allclose(scaled.state[name], factor * tensor), name


def test_post_norm_gains_are_calibrated_to_the_kept_spread():
    """In a post-norm model each LayerNorm gain is multiplied by the measured ratio of the
    normalized input's spread over the kept dimensions to its spread over all (> 1: the kept
    dimensions are the important, wide ones)."""
    model = make_model(POST_NORM)
    importance = measured(model)
    plain = subclone(POST_NORM, model.state_dict(), {"hidden": 16}, importance, rescale=False)
    scaled = subclone(POST_NORM, model.state_dict(), {"hidden": 16}, importance)
    for norm in ("emb_norm", "layers.0.attn_norm", "layers.1.mlp_norm"):
        ratio = scaled.state[f"{norm}.weight"] / plain.state[f"{norm}.weight"]
        kept_spread = importance.norm_sq[norm][scaled.plan.hidden].mean().sqrt()
        assert torch.allclose(ratio, kept_spread.expand_as(ratio), rtol=1e-12, atol=0), norm
        assert 1.0 < float(kept_spread) < 2.0, norm
    assert torch.equal(scaled.state["emb_norm.bias"], plain.state["emb_norm.bias"])


def test_gqa_keeps_whole_groups_and_the_best_query_heads_in_each():
    config = VARIANTS["llama_mha"].replace(n_heads=8, n_kv_heads=4, qk_head_dim=4, v_head_dim=4)
    heads = torch.tensor([[1.0, 9, 5, 5, 0, 1, 8, 2], [3.0, 2, 1, 0, 7, 1, 1, 1]])
    importance = Importance(
        hidden=torch.rand(config.hidden, dtype=torch.float64),
        heads=heads.double(),
        ffn=torch.rand(2, config.ffn, dtype=torch.float64),
        block_change=torch.ones(2, dtype=torch.float64),
        norm_sq={},
        tokens=1,
    )
    target = resolve_shrink_target(config, {"n_heads": 2, "n_kv_heads": 2})
    plan = plan_subclone(config, target, importance)
    # layer 0 groups (sums): 10, 10, 1, 10 → groups 0 and 1 (ties to the lower index)
    assert plan.kv_heads[0].tolist() == [0, 1] and plan.heads[0].tolist() == [1, 2]
    # layer 1 groups: 5, 1, 8, 2 → groups 0 and 2, heads 0 and 4
    assert plan.kv_heads[1].tolist() == [0, 2] and plan.heads[1].tolist() == [0, 4]
    target = resolve_shrink_target(config, {"n_heads": 4})  # group size 2 kept: 2 kv heads
    assert target.n_kv_heads == 2
    target = resolve_shrink_target(config, {"n_heads": 4, "n_kv_heads": 4})  # 1 head per group
    plan = plan_subclone(config, target, importance)
    assert plan.heads[0].tolist() == [1, 2, 5, 6] and plan.kv_heads[0].tolist() == [0, 1, 2, 3]


def test_block_removal_keeps_first_last_and_the_most_changing_layers():
    change = torch.tensor([0.1, 0.5, 0.01, 0.3, 0.02, 0.2])
    assert choose_layers(change, 3) == (0, 1, 5)
    assert choose_layers(change, 4) == (0, 1, 3, 5)
    assert choose_layers(change, 1) == (0,)
    assert choose_layers(change, 6) == tuple(range(6))
    assert choose_layers(change, 3, keep_layers=[5, 2, 0]) == (0, 2, 5)


def test_truncation_plan_is_the_naive_baseline():
    config = VARIANTS["llama_gqa_tied_eps"]
    model = make_model(config)
    target = resolve_shrink_target(config, {"n_layers": 1, "hidden": 16, "n_heads": 2})
    child = apply_plan(model.state_dict(), truncation_plan(config, target), rescale=False)
    assert child.report.layers_kept == [0] and child.report.hidden_coverage is None
    assert torch.equal(child.state["tok_emb.weight"], model.state_dict()["tok_emb.weight"][:, :16])
    assert torch.equal(
        child.state["layers.0.attn.k.weight"],
        model.state_dict()["layers.0.attn.k.weight"][: config.qk_head_dim, :16],
    )


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"hidden": 64}, "hidden: target 64 is larger than the source's 32.*growformer grow"),
        ({"n_layers": 3}, "n_layers: target 3 is larger.*grow"),
        ({"qk_head_dim": 4}, "qk_head_dim: subcloning keeps or removes whole heads"),
        ({"n_heads": 4, "n_kv_heads": 1}, r"allowed n_kv_heads: \[2\]"),
        ({"n_heads": 3}, "n_heads=3 is not a multiple of the source's group size 2"),
        ({"bogus": 1}, "unknown size field"),
        ({"ffn": 0}, "ffn must be a positive integer"),
    ],
)
def test_bad_targets_are_refused_naming_the_field(sizes, message):
    with pytest.raises(ShrinkError, match=message):
        resolve_shrink_target(VARIANTS["llama_gqa_tied_eps"], sizes)


def test_mha_cannot_become_gqa_by_selection():
    with pytest.raises(ShrinkError, match=r"allowed n_kv_heads: \[2\]"):
        resolve_shrink_target(VARIANTS["llama_mha"], {"n_heads": 2, "n_kv_heads": 1})


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        ([0, 0], "names a layer twice"),
        ([0, 5], r"\[5\] not a layer of the source \(allowed 0..1\)"),
        ([1], "names 1 layers but the target has n_layers=2"),
    ],
)
def test_bad_keep_layers_are_refused(keep, message):
    model = make_model(VARIANTS["llama_mha"])
    with pytest.raises(ShrinkError, match=message):
        subclone(
            model.config, model.state_dict(), {"n_layers": 2}, measured(model), keep_layers=keep
        )


def test_calibration_data_shorter_than_one_window_is_refused(tmp_path):
    path = tmp_path / "few.bin"
    np.arange(200, dtype=np.uint16).tofile(path)
    with pytest.raises(DataError, match="fewer than one calibration window of 256"):
        calibration_batches(path, 256, lambda: None)
    assert len(calibration_batches(path, 256, lambda: None, tokens=64)) == 1


def test_calibration_reads_the_chosen_field_of_json_lines(tmp_path):
    path = tmp_path / "calib.jsonl"
    lines = [json.dumps({"title": "ZZZ", "body": f"document {i} " * 20}) for i in range(8)]
    path.write_text("\n".join(lines) + "\n")

    def byte_encoder():
        return lambda texts: [list(t.encode()) for t in texts]

    with pytest.raises(DataError, match=r"no field 'text'.*--text-field"):
        calibration_batches(path, 256, byte_encoder, tokens=64, seq_len=32)
    (batch,) = calibration_batches(
        path, 256, byte_encoder, tokens=64, seq_len=32, text_field="body"
    )
    text = bytes(batch.flatten().tolist()).decode()
    assert "document" in text and "Z" not in text


def test_calibration_tokens_must_fit_the_model():
    config = VARIANTS["llama_mha"]
    model = make_model(config)
    with pytest.raises(ValueError, match="must be in"):
        measure_importance(config, model.state_dict(), [torch.full((1, 4), config.vocab_size)])
    with pytest.raises(ValueError, match="at least one batch"):
        measure_importance(config, model.state_dict(), [])


# -- the command -------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    config = VARIANTS["llama_gqa_tied_eps"].replace(n_layers=4)
    path = tmp_path / "parent"
    save_model(make_model(config, torch.float32), path)
    return path


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "calib.bin"
    np.random.default_rng(0).integers(0, 40, 3000, dtype=np.uint16).tofile(path)
    return path


def test_cli_writes_child_report_and_prints_it(folder, token_file, tmp_path, capsys):
    dst = tmp_path / "child"
    sizes = ["--layers", 2, "--hidden", 16, "--heads", 2, "--ffn", 24]
    assert cli("shrink", folder, dst, *sizes, "--data", token_file, "--calib-tokens", 256) == 0
    out = capsys.readouterr().out
    assert "layers kept [0, 3]" in out and "hidden importance kept" in out
    assert sorted(p.name for p in dst.iterdir()) == [
        "config.json",
        "model.safetensors",
        REPORT_FILE,
    ]
    child = load_model(dst)
    assert (child.config.n_layers, child.config.hidden, child.config.n_heads) == (2, 16, 2)
    assert child.config.n_kv_heads == 1 and child.config.ffn == 24
    report = json.loads((dst / REPORT_FILE).read_text())
    assert report["layers_kept"] == [0, 3] and report["calibration_tokens"] == 256
    assert report["calibration_data"] == str(token_file)
    assert 0.5 < report["hidden_coverage"] < 1 and len(report["layers"]) == 2
    assert math.isclose(report["reader_scale"], math.sqrt(2))
    plain = tmp_path / "plain"
    keep = ["--keep-layers", "1,2", "--no-rescale"]
    assert cli("shrink", folder, plain, *sizes, "--data", token_file, *keep) == 0
    report = json.loads((plain / REPORT_FILE).read_text())
    assert report["layers_kept"] == [1, 2] and report["reader_scale"] == 1.0


def test_cli_says_when_the_data_gives_fewer_tokens_than_asked(folder, token_file, tmp_path, capsys):
    assert cli("shrink", folder, tmp_path / "child", "--ffn", 8, "--data", token_file) == 0
    used = json.loads((tmp_path / "child" / REPORT_FILE).read_text())["calibration_tokens"]
    assert used < DEFAULT_CALIB_TOKENS
    assert f"gave {used} of the {DEFAULT_CALIB_TOKENS} tokens asked for" in capsys.readouterr().out


def test_a_folder_tokenizer_does_not_truncate_calibration_documents(tmp_path):
    """A sentence model's tokenizer.json truncates (MiniLM: 128 tokens); calibration reads
    whole documents."""
    import tokenizers

    words = [f"w{i}" for i in range(40)]
    backend = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0")
    )
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    backend.enable_truncation(max_length=8)
    backend.save(str(tmp_path / "tokenizer.json"))
    encode = folder_encoder(tmp_path, hugging_face=False)
    assert encode([" ".join(words)]) == [list(range(40))]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hidden", 64], "hidden: target 64 is larger than the source's 32.*growformer grow"),
        (["--layers", 2, "--keep-layers", "0,9"], "not a layer of the source"),
        (["--layers", 2, "--keep-layers", "0,x"], "--keep-layers must be"),
        (["--ffn", 8, "--calib-tokens", 0], "calibration tokens must be a positive integer"),
        (["--ffn", 8, "--text-field", ""], "text_field .*must be a non-empty string"),
        (["--ffn", 8], "vocab_size must be >= 257"),
        ([], "give at least one size"),
    ],
)
def test_cli_bad_input_writes_nothing(folder, token_file, tmp_path, capsys, args, message):
    dst = tmp_path / "child"
    data = [] if args == ["--ffn", 8] else ["--data", token_file]
    assert cli("shrink", folder, dst, *args, *data) == 2
    err = capsys.readouterr().err
    assert err.startswith("growformer shrink: error:")
    assert re.search(message, err), err
    assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.bin", "parent"]


def test_cli_refuses_missing_source_and_existing_destination(folder, token_file, tmp_path, capsys):
    assert cli("shrink", tmp_path / "nope", tmp_path / "out", "--ffn", 8) == 2
    assert "not a model folder" in capsys.readouterr().err
    dst = tmp_path / "taken"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert cli("shrink", folder, dst, "--ffn", 8, "--data", token_file) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]


@pytest.mark.slow
def test_cli_calibrates_on_the_default_corpus_in_the_models_vocabulary(
    tmp_path, capsys, monkeypatch
):
    """Without --data a growformer folder calibrates on the default corpus, tokenized by the
    tokenizer ``growformer train`` builds for its vocabulary size (here 300 ids)."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    src = tmp_path / "parent"
    save_model(make_model(VARIANTS["llama_mha"].replace(vocab_size=300), torch.float32), src)
    dst = tmp_path / "child"
    assert cli("shrink", src, dst, "--hidden", 16, "--calib-tokens", 512) == 0
    report = json.loads((dst / REPORT_FILE).read_text())
    assert report["calibration_data"] == "stdlib:prose" and report["calibration_tokens"] == 512
    assert load_model(dst).config.hidden == 16


class CountingState(dict):
    """A state that records every read, in order (as a lazy on-disk state would load)."""

    def __init__(self, state):
        super().__init__(state)
        self.reads: list[str] = []

    def __getitem__(self, name):
        self.reads.append(name)
        return super().__getitem__(name)


def test_weights_are_read_once_layer_by_layer():
    """Calibration reads each weight once, block after block, and building the child reads
    each kept source weight once: a lazy state never needs the whole parent in memory."""
    model = make_model(VARIANTS["gpt2_all_bias"].replace(n_layers=3))
    state = CountingState(model.state_dict())
    importance = measure_importance(model.config, state, calibration(model.config))
    layers = [int(n.split(".")[1]) for n in state.reads if n.startswith("layers.")]
    assert layers == sorted(layers)
    assert len(set(state.reads)) == len(state.reads) - 1  # tok_emb: dtype probe, then load
    assert not any(n.startswith(("final_norm", "lm_head")) for n in state.reads)
    state.reads.clear()
    child = subclone(model.config, state, {"n_layers": 2}, importance)
    assert sorted(state.reads) == sorted({r.source for r in child.record.params.values()})
    assert len(set(state.reads)) == len(state.reads)
