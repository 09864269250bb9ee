"""Hugging Face folders through the ``growformer`` command and ``growformer.hf``: grow, verify and
info; dtype and sharding kept; tensor-by-tensor (memory-mapped) reading; and bad input failing
clearly with nothing written at the destination."""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import check_overwrite, cli
from growformer import grow, hf
from hf_tiny import RTOL, gpt2, llama, load, output, qwen2, relative_error, saved, tokens


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return saved(llama(), tmp_path / "src")


def test_cli_grow_check_verify_and_info_on_a_hf_folder(src: Path, tmp_path: Path, capsys) -> None:
    dst = tmp_path / "dst"
    assert cli("grow", src, dst, "--ffn", "80", "--layers", "3", "--heads", "8", "--check") == 0
    out = capsys.readouterr().out
    assert "ffn 48 → 80" in out and "check: max_abs_diff=" in out
    assert sorted(p.name for p in dst.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]
    error = relative_error(output(load(src), tokens()), output(load(dst), tokens()))
    assert error <= RTOL
    assert cli("verify", src, dst) == 0
    assert float(capsys.readouterr().out.strip().splitlines()[-1].split("=")[1]) < 1e-4
    assert cli("info", dst) == 0
    info = capsys.readouterr().out
    assert "format: llama (LlamaForCausalLM)" in info and "dtype: float32" in info
    assert "n_heads: 8" in info and "ffn: 80" in info
    assert f"parameters: {load(dst).num_parameters():,}" in info


def _figures(out: str) -> dict[str, float]:
    """``label: max_abs_diff=X`` lines of ``grow --check`` as {label: X}."""
    return {
        line.split(":")[0]: float(line.split("max_abs_diff=")[1].split()[0])
        for line in out.splitlines()
        if "max_abs_diff=" in line
    }


def test_bf16_source_gives_a_bf16_folder(tmp_path: Path, capsys) -> None:
    """The check's verdict is on the growth computed in float32; the rounding of the rescaled
    norm gains to bf16, which no tolerance on the stored model separates from a wrong growth,
    is reported beside it."""
    src = saved(llama().to(torch.bfloat16), tmp_path / "src")
    args = ["--ffn", "80", "--hidden", "48", "--check"]
    assert cli("grow", src, tmp_path / "dst", *args, "--tol", "1e-5") == 0
    figures = _figures(capsys.readouterr().out)
    assert figures["stored in bfloat16"] > 100 * figures["check"]
    with safe_open(str(tmp_path / "dst" / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(n).dtype for n in f.keys()} == {torch.bfloat16}  # noqa: SIM118
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["dtype"] == "bfloat16"
    assert load(tmp_path / "dst").dtype == torch.bfloat16


def test_a_folder_of_mixed_dtypes_is_read_in_the_widest(tmp_path: Path) -> None:
    """Norm gains kept in float32 beside bfloat16 matrices (transformers loads such folders):
    every weight is read as float32, which loses nothing, and the growth is exact."""
    source = llama()
    src = saved(source, tmp_path / "src")
    weights = load_file(src / "model.safetensors")
    mixed = {n: t if "norm" in n else t.to(torch.bfloat16) for n, t in weights.items()}
    save_file(mixed, src / "model.safetensors", metadata={"format": "pt"})
    canonical = hf.read_folder(src)
    assert {t.dtype for t in canonical.state.values()} == {torch.float32}
    assert torch.equal(
        canonical.state["tok_emb.weight"], mixed["model.embed_tokens.weight"].float()
    )
    assert cli("grow", src, tmp_path / "dst", "--ffn", "80", "--hidden", "48", "--check") == 0
    assert cli("info", src) == 0


def _shard_bytes(shard: Path) -> tuple[int, int]:
    """(tensor bytes, tensor count) of a safetensors file."""
    with safe_open(str(shard), framework="pt") as f:
        tensors = [f.get_tensor(n) for n in f.keys()]  # noqa: SIM118
    return sum(t.numel() * t.element_size() for t in tensors), len(tensors)


def test_sharded_source_gives_a_sharded_folder(tmp_path: Path) -> None:
    source = gpt2(n_layer=3)
    src = saved(source, tmp_path / "src", max_shard_size="30KB")
    source_shards = sorted(src.glob("model-*.safetensors"))
    assert len(source_shards) > 1
    limit = max(_shard_bytes(f)[0] for f in source_shards)
    hf.grow_folder(src, tmp_path / "dst", {"ffn": 96, "n_layers": 5})
    dst = tmp_path / "dst"
    shards = sorted(dst.glob("model-*.safetensors"))
    assert len(shards) > len(source_shards)
    assert not (dst / "model.safetensors").exists()
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f.name for f in shards}
    for shard in shards:
        nbytes, count = _shard_bytes(shard)
        assert nbytes <= limit or count == 1
    error = relative_error(output(source, tokens()), output(load(dst), tokens()))
    assert error <= RTOL


def _anon_mib() -> float:
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no RssAnon in /proc/self/status")


def test_reading_maps_tensors_instead_of_copying_them(tmp_path: Path) -> None:
    """About 70 MB of weights read (and grown in the MLP alone) without copying the source."""
    config = llama(vocab_size=16384, hidden_size=512, num_hidden_layers=1).config
    config.intermediate_size = 512
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "config.json").write_text(config.to_json_string())
    gen = torch.Generator().manual_seed(0)
    shapes = {
        "model.embed_tokens.weight": (16384, 512),
        "lm_head.weight": (16384, 512),
        "model.norm.weight": (512,),
        "model.layers.0.input_layernorm.weight": (512,),
        "model.layers.0.post_attention_layernorm.weight": (512,),
        "model.layers.0.self_attn.q_proj.weight": (512, 512),
        "model.layers.0.self_attn.k_proj.weight": (256, 512),
        "model.layers.0.self_attn.v_proj.weight": (256, 512),
        "model.layers.0.self_attn.o_proj.weight": (512, 512),
        "model.layers.0.mlp.gate_proj.weight": (512, 512),
        "model.layers.0.mlp.up_proj.weight": (512, 512),
        "model.layers.0.mlp.down_proj.weight": (512, 512),
    }
    save_file(
        {n: torch.randn(s, generator=gen) for n, s in shapes.items()}, folder / "model.safetensors"
    )
    size = (folder / "model.safetensors").stat().st_size / 2**20
    hf.read_folder(folder).model()  # first-call costs (meta model construction) are not reading
    before = _anon_mib()
    source = hf.read_folder(folder)
    read = _anon_mib() - before
    grown = hf.grow_storable(source, {"ffn": 1024})
    grew = _anon_mib() - before
    new_mlp = 3 * 512 * 1024 * 4 / 2**20
    assert read < 0.1 * size, f"reading {size:.0f} MiB took {read:.1f} MiB of memory"
    assert grew < new_mlp + 0.1 * size, f"growth took {grew:.1f} MiB, the new MLP {new_mlp:.0f}"
    hf.write_folder(grown, tmp_path / "out", like=folder)
    assert hf.read_folder(tmp_path / "out").config.ffn == 1024


# -- bad input: a clear error, exit status 2, nothing at the destination --------------------------


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _unknown_model_type(folder: Path) -> None:
    _edit_config(folder, model_type="t5")


def _truncated_weights(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) - 100])


def _missing_config(folder: Path) -> None:
    (folder / "config.json").unlink()


def _pickle_weights_only(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def _layers_do_not_match(folder: Path) -> None:
    _edit_config(folder, num_hidden_layers=3)


def _scaled_rope(folder: Path) -> None:
    _edit_config(folder, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4})


def _legacy_scaling_beside_rope_parameters(folder: Path) -> None:
    """transformers applies a legacy rope_scaling even when rope_parameters is there."""
    _edit_config(
        folder,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        rope_scaling={"type": "linear", "factor": 2.0},
    )


def _integer_weights(folder: Path) -> None:
    weights = load_file(folder / "model.safetensors")
    save_file({n: t.to(torch.int32) for n, t in weights.items()}, folder / "model.safetensors")


BAD_FOLDERS = {
    "model_type_not_a_string": (
        lambda folder: _edit_config(folder, model_type=["llama"]),
        "model_type ['llama'] is not supported",
    ),
    "rope_theta_a_string": (
        lambda folder: _edit_config(folder, rope_parameters=None, rope_theta="big"),
        "rope_theta must be a finite number; got 'big'",
    ),
    "rope_parameters_theta_a_string": (
        lambda folder: _edit_config(folder, rope_parameters={"rope_theta": "1e4"}),
        "rope_parameters.rope_theta must be a finite number; got '1e4'",
    ),
    "rope_theta_past_the_float_range": (
        lambda folder: _edit_config(folder, rope_parameters=None, rope_theta=10**400),
        "rope_theta must be a finite number; got 1000",
    ),
    "tie_a_string": (
        lambda folder: _edit_config(folder, tie_word_embeddings="no"),
        "tie_word_embeddings must be true or false; got 'no'",
    ),
    "attention_bias_a_string": (
        lambda folder: _edit_config(folder, attention_bias="false"),
        "attention_bias must be true or false; got 'false'",
    ),
    "zero_kv_heads": (
        lambda folder: _edit_config(folder, num_key_value_heads=0),
        "n_kv_heads must be an integer in [1, 2147483647], got 0",
    ),
    "integer_weights": (
        _integer_weights,
        "weights must be of float32, float64, bfloat16, float16; got int32",
    ),
    "unknown_model_type": (
        _unknown_model_type,
        "model_type 't5' is not supported; supported: gpt2, llama, qwen2, mistral, bert",
    ),
    "truncated_weights": (_truncated_weights, "not a readable safetensors file"),
    "missing_config": (_missing_config, "config.json is missing"),
    "pickle_weights_only": (_pickle_weights_only, "growformer reads safetensors weights only"),
    "layers_do_not_match": (_layers_do_not_match, "missing ['model.layers.2."),
    "scaled_rope": (_scaled_rope, "rope_type='linear' is not supported"),
    "legacy_scaling": (_legacy_scaling_beside_rope_parameters, "rope_scaling.rope_type="),
}


@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_bad_folders_fail_clearly_and_write_nothing(
    src: Path, tmp_path: Path, capsys, case: str
) -> None:
    spoil, message = BAD_FOLDERS[case]
    bad = _copy(src, tmp_path / "bad")
    spoil(bad)
    dst = tmp_path / "dst"
    assert cli("grow", bad, dst, "--ffn", "64") == 2
    assert message in capsys.readouterr().err
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".dst")] == []


def test_a_fused_qkv_of_the_wrong_width_is_named_before_it_is_split(tmp_path: Path, capsys) -> None:
    folder = saved(gpt2(), tmp_path / "gpt2")
    weights = load_file(folder / "model.safetensors")
    name = "transformer.h.0.attn.c_attn.weight"
    weights[name] = weights[name][:, 1:].contiguous()
    save_file(weights, folder / "model.safetensors")
    assert cli("grow", folder, tmp_path / "dst", "--ffn", "64") == 2
    assert f"{name} has shape (32, 95), config.json needs (32, 96)" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("command", ["verify", "shrink"])
def test_integer_weights_fail_by_name_in_verify_and_shrink(
    src: Path, tmp_path: Path, capsys, command: str
) -> None:
    bad = _copy(src, tmp_path / "bad")
    _integer_weights(bad)
    args = [src] if command == "verify" else [tmp_path / "dst", "--ffn", "32"]
    assert cli(command, bad, *args) == 2
    assert "weights must be of float32, float64, bfloat16, float16" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()


def test_missing_shard_fails_clearly(tmp_path: Path, capsys) -> None:
    src = saved(llama(), tmp_path / "src", max_shard_size="30KB")
    next(iter(sorted(src.glob("model-*.safetensors")))).unlink()
    assert cli("grow", src, tmp_path / "dst", "--ffn", "64") == 2
    assert "lists shards that are missing" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("weight_map", [["model-00001-of-00002.safetensors"], None, {"a": 1}])
def test_an_index_whose_weight_map_is_not_names_to_files_fails_clearly(
    tmp_path: Path, capsys, weight_map: object
) -> None:
    src = saved(llama(), tmp_path / "src", max_shard_size="30KB")
    index = src / "model.safetensors.index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "weight_map": weight_map}))
    assert cli("info", src) == 2
    assert "weight_map must map tensor names to shard file names" in capsys.readouterr().err


def test_a_single_weights_file_wins_over_an_index_beside_it(src: Path, tmp_path: Path) -> None:
    """transformers loads ``model.safetensors`` when both are there; so does growformer."""
    stale = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}
    (src / "model.safetensors.index.json").write_text(json.dumps(stale))
    assert cli("grow", src, tmp_path / "dst", "--ffn", "64") == 0
    ids = tokens()
    assert relative_error(output(load(src), ids), output(load(tmp_path / "dst"), ids)) <= RTOL


TARGETS_NOT_STORABLE = {
    "gpt2_heads_without_hidden": (gpt2, ["--heads", "6"], "GPT-2 stores no head_dim"),
    "gpt2_grouped_kv": (
        gpt2,
        ["--hidden", "64", "--heads", "8", "--kv-heads", "4"],
        "GPT-2 has no grouped kv heads",
    ),
    "llama_one_head_dim": (llama, ["--qk-head-dim", "12"], "one head_dim for q, k and v"),
    "llama_hidden_heads": (llama, ["--heads", "6", "--kv-heads", "2"], "multiple of num_attention"),
}


@pytest.mark.parametrize("case", TARGETS_NOT_STORABLE)
def test_targets_the_family_cannot_store_fail_before_writing(
    tmp_path: Path, capsys, case: str
) -> None:
    build, args, message = TARGETS_NOT_STORABLE[case]
    src = saved(build(), tmp_path / "src")
    assert cli("grow", src, tmp_path / "dst", *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize(
    ("settings", "theta"),
    [
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 500.0}}, 500.0),
        ({"rope_parameters": None, "rope_theta": 700.0}, 700.0),
        # A legacy rope_scaling replaces rope_parameters whole (its base: the top-level one).
        (
            {
                "rope_parameters": {"rope_type": "default", "rope_theta": 500.0},
                "rope_scaling": {"type": "default"},
            },
            10000.0,
        ),
        (
            {
                "rope_parameters": {"rope_type": "default", "rope_theta": 500.0},
                "rope_scaling": {"rope_type": "default"},
                "rope_theta": 900.0,
            },
            900.0,
        ),
    ],
)
def test_the_rope_base_is_read_as_transformers_reads_it(
    tmp_path: Path, settings: dict, theta: float
) -> None:
    src = saved(llama(), tmp_path / "src")
    _edit_config(src, **settings)
    assert load(src).config.rope_parameters["rope_theta"] == theta
    assert hf.read_folder(src).config.rope_theta == theta
    assert cli("grow", src, tmp_path / "dst", "--ffn", "64") == 0
    written = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert written["rope_parameters"] == {"rope_type": "default", "rope_theta": theta}
    assert "rope_scaling" not in written and "rope_theta" not in written
    ids = tokens()
    assert relative_error(output(load(src), ids), output(load(tmp_path / "dst"), ids)) <= RTOL


def _sliding_qwen2(folder: Path, explicit: bool) -> Path:
    """A 4-layer Qwen2 whose layers 2 and 3 attend through a window of 4 tokens: as
    ``layer_types``, or (``explicit=False``, as the Hub's Qwen2 configs do) only through
    ``max_window_layers``."""
    model = qwen2(
        num_hidden_layers=4, use_sliding_window=True, sliding_window=4, max_window_layers=2
    )
    src = saved(model, folder)
    if not explicit:
        config = json.loads((src / "config.json").read_text())
        del config["layer_types"]
        (src / "config.json").write_text(json.dumps(config))
    return src


@pytest.mark.parametrize("explicit", [True, False], ids=["layer_types", "max_window_layers"])
@pytest.mark.parametrize(
    ("where", "init", "sliding"),
    [
        ("interleave", "identity", [4, 5, 6, 7]),  # each new layer follows its source
        ("middle", "copy", [6, 7]),  # the new layers are copies of layer 1 (full)
    ],
)
def test_sliding_and_full_layers_keep_their_attention_through_depth_growth(
    tmp_path: Path, explicit: bool, where: str, init: str, sliding: list[int]
) -> None:
    """Every layer keeps its attention type wherever growth moves it (a new layer takes the
    type of the layer it was made from), so on sequences longer than the window the grown
    model still equals the source in transformers; ``max_window_layers`` is rewritten to say
    the same for readers that derive the types from it."""
    src = _sliding_qwen2(tmp_path / "src", explicit)
    dst = tmp_path / "dst"
    assert cli("grow", src, dst, "--layers", "8", "--where", where, "--layer-init", init) == 0
    ids = tokens(seq=16)
    assert relative_error(output(load(src), ids), output(load(dst), ids)) <= RTOL
    written = json.loads((dst / "config.json").read_text())
    types = written["layer_types"]
    assert [i for i, t in enumerate(types) if t == "sliding_attention"] == sliding
    legacy = {k: v for k, v in written.items() if k != "layer_types"}
    assert transformers.Qwen2Config(**legacy).layer_types == written["layer_types"]


def test_mixed_layer_types_of_weights_grown_elsewhere_cannot_grow_in_depth(tmp_path: Path) -> None:
    """Without growth's record of where the new layers went, mixed types cannot be placed."""
    src = _sliding_qwen2(tmp_path / "src", explicit=False)
    source = hf.read_folder(src)
    grown = source.model()
    deeper, _ = grow(grown, {"n_layers": 6})
    with pytest.raises(hf.FormatError, match="layer_types mixes"):
        hf.write_folder(source.with_model(deeper), tmp_path / "dst", like=src)
    assert not (tmp_path / "dst").exists()
    assert cli("grow", src, tmp_path / "wider", "--ffn", "64") == 0
    assert "layer_types" not in json.loads((tmp_path / "wider" / "config.json").read_text())


def test_existing_destination_is_refused_and_overwrite_replaces_it(
    src: Path, tmp_path: Path, capsys
) -> None:
    check_overwrite(src, tmp_path / "dst", capsys, "--ffn", "64")
    assert load(tmp_path / "dst").config.intermediate_size == 64
