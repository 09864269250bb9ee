"""The `growformer` command end to end: init, grow --check, verify, info, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import check_overwrite, cli
from growformer.config import ModelConfig
from growformer.model import Transformer
from growformer.model_io import load_model, save_model

TINY = ["--layers", "2", "--hidden", "32", "--heads", "4", "--ffn", "64", "--vocab", "50"]


def last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src"
    assert cli("init", path, *TINY, "--kv-heads", "2", "--max-seq-len", "32") == 0
    return path


def test_init_writes_folder_with_requested_config(tmp_path: Path, capsys) -> None:
    dst = tmp_path / "m"
    args = [*TINY, "--norm", "layer", "--position", "learned", "--mlp", "gelu", "--tie", "--bias"]
    assert cli("init", dst, *args, "--seed", "3") == 0
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((dst / "config.json").read_text())
    assert config["model_type"] == "growformer"
    assert (config["norm"], config["position"], config["mlp"]) == ("layer", "learned", "gelu")
    assert config["tie_embeddings"] and config["attn_bias"] and config["mlp_bias"]
    again = tmp_path / "again"
    assert cli("init", again, *args, "--seed", "3") == 0
    a, b = load_model(dst), load_model(again)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_grow_check_then_verify_reports_exactness(src: Path, tmp_path: Path, capsys) -> None:
    dst = tmp_path / "grown"
    sizes = ["--layers", "3", "--hidden", "48", "--heads", "8", "--kv-heads", "4", "--ffn", "96"]
    assert (
        cli("grow", src, dst, *sizes, "--qk-head-dim", "12", "--v-head-dim", "10", "--check") == 0
    )
    out = capsys.readouterr().out
    assert "check: max_abs_diff=" in out
    grown = load_model(dst).config
    assert (grown.n_layers, grown.hidden, grown.n_heads, grown.n_kv_heads) == (3, 48, 8, 4)
    assert (grown.ffn, grown.qk_head_dim, grown.v_head_dim) == (96, 12, 10)
    assert cli("verify", src, dst) == 0
    line = last_line(capsys)
    assert line.startswith("max_abs_diff=")
    assert float(line.split("=")[1]) < 1e-5
    assert cli("verify", src, dst, "--dtype", "float64") == 0
    assert float(last_line(capsys).split("=")[1]) < 1e-6


@pytest.mark.parametrize(
    "options",
    [
        ["--layer-init", "copy", "--where", "middle"],
        ["--where", "interleave"],
        ["--width-init", "tile"],
    ],
)
def test_grow_options(src: Path, tmp_path: Path, options: list[str]) -> None:
    dst = tmp_path / "grown"
    assert cli("grow", src, dst, "--layers", "4", "--ffn", "128", *options, "--check") == 0
    assert cli("verify", src, dst) == 0


def test_verify_fails_above_tolerance(src: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other"
    assert cli("init", other, *TINY, "--kv-heads", "2", "--max-seq-len", "32", "--seed", "1") == 0
    assert cli("verify", src, other) == 1
    assert float(last_line(capsys).split("=")[1]) > 1e-3


def test_grow_check_failure_writes_nothing(tmp_path: Path, capsys) -> None:
    config = ModelConfig(
        vocab_size=50, hidden=32, ffn=64, norm="layer", norm_placement="post", final_norm=False
    )
    torch.manual_seed(0)
    post_norm = Transformer(config)
    with torch.no_grad():
        for name, p in post_norm.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    save_model(post_norm, tmp_path / "post")
    dst = tmp_path / "approx"
    assert cli("grow", tmp_path / "post", dst, "--hidden", "48", "--approximate", "--check") == 1
    assert not dst.exists()
    assert "nothing written" in capsys.readouterr().err


def test_info_prints_config_and_parameter_count(src: Path, capsys) -> None:
    assert cli("info", src) == 0
    out = capsys.readouterr().out
    assert "n_kv_heads: 2" in out
    assert f"parameters: {load_model(src).num_parameters():,}" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layers", "1"], "n_layers: target 1 is smaller"),
        (["--heads", "5"], "n_heads=5 must be a multiple of n_kv_heads=2"),
        (["--heads", "4", "--kv-heads", "4"], "below the current group size"),
        (["--qk-head-dim", "9"], "qk_head_dim=9 must be even"),
    ],
)
def test_grow_bad_targets_fail_clearly_and_write_nothing(
    src: Path, tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    dst = tmp_path / "dst"
    assert cli("grow", src, dst, *args) == 2
    assert message in capsys.readouterr().err
    assert not dst.exists()


def test_a_destination_around_or_inside_the_source_is_refused(
    src: Path, tmp_path: Path, capsys
) -> None:
    """--overwrite of a folder holding the source would delete the source."""
    assert cli("grow", src, src.parent, "--ffn", "96", "--overwrite") == 2
    assert "a folder holding the source" in capsys.readouterr().err
    assert cli("grow", src, src / "inner", "--ffn", "96") == 2
    assert "inside the source" in capsys.readouterr().err
    assert load_model(src).config.ffn == 64 and not (src / "inner").exists()


def test_smaller_target_points_to_shrinking(src: Path, tmp_path: Path, capsys) -> None:
    assert cli("grow", src, tmp_path / "dst", "--ffn", "32") == 2
    assert "shrink" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        (["--heads", "6", "--kv-heads", "4", "--hidden", "48"], "n_kv_heads"),
        (["--qk-head-dim", "7"], "qk_head_dim"),
        (["--layers", "0"], "n_layers"),
        (["--hidden", "30"], "hidden"),
    ],
)
def test_init_refuses_a_bad_config_and_writes_nothing(
    tmp_path: Path, capsys, sizes: list[str], message: str
) -> None:
    assert cli("init", tmp_path / "m", *sizes) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_existing_destination_is_refused_without_overwrite(
    src: Path, tmp_path: Path, capsys
) -> None:
    check_overwrite(src, tmp_path / "dst", capsys, "--ffn", "96")
    assert load_model(tmp_path / "dst").config.ffn == 96


def test_corrupt_and_missing_checkpoints_fail_clearly(src: Path, tmp_path: Path, capsys) -> None:
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((src / "config.json").read_text())
    data = (src / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert cli("grow", truncated, tmp_path / "out1", "--ffn", "96") == 2
    assert "not a readable safetensors file" in capsys.readouterr().err

    no_config = tmp_path / "no_config"
    no_config.mkdir()
    assert cli("info", no_config) == 2
    assert "config.json is missing" in capsys.readouterr().err

    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{not json")
    assert cli("info", bad_json) == 2
    assert "not valid JSON" in capsys.readouterr().err

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "growformer", "depth": 3}))
    assert cli("info", unknown) == 2
    assert "unknown config field(s) ['depth']" in capsys.readouterr().err

    assert cli("info", tmp_path / "nowhere") == 2
    assert "no such folder" in capsys.readouterr().err
    assert cli("info", unknown / "config.json") == 2
    assert "a file, not a folder" in capsys.readouterr().err
    assert not (tmp_path / "out1").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("norm_eps", 10**400, "norm_eps must be a finite number > 0"),
        ("rope_theta", 10**400, "rope_theta must be a finite number > 0"),
        ("hidden", 10**30, "hidden must be an integer in [1, 2147483647]"),
    ],
    ids=["norm_eps", "rope_theta", "hidden"],
)
def test_out_of_range_config_values_fail_clearly(
    src: Path, tmp_path: Path, capsys, field: str, value: int, message: str
) -> None:
    """Numbers too large for a float or a tensor dimension are refused by the config, not by
    a traceback from math or torch."""
    folder = tmp_path / "huge"
    folder.mkdir()
    config = json.loads((src / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, field: value}))
    (folder / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    assert cli("info", folder) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "sizes", [["--vocab", "2147483647"], ["--layers", "100000", "--hidden", "4096"]]
)
def test_init_larger_than_memory_fails_by_name(tmp_path, capsys, sizes) -> None:
    dst = tmp_path / "huge"
    assert cli("init", dst, *sizes) == 2
    assert "parameters" in (err := capsys.readouterr().err) and "GiB of memory of cpu" in err
    assert not dst.exists()


def test_growth_larger_than_memory_fails_by_name(src: Path, tmp_path, capsys) -> None:
    dst = tmp_path / "huge"
    assert cli("grow", src, dst, "--ffn", "2000000000") == 2
    assert "the grown model has" in capsys.readouterr().err
    assert not dst.exists()


@pytest.mark.parametrize("seed", ["-1", str(2**64), "x"])
def test_init_refuses_a_seed_torch_cannot_take(tmp_path: Path, capsys, seed: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli("init", tmp_path / "m", *TINY, "--seed", seed)
    assert exit_info.value.code == 2
    assert "--seed: must be an integer in [0, 18446744073709551615]" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_mismatched_weights_fail_clearly(src: Path, tmp_path: Path, capsys) -> None:
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    config = json.loads((src / "config.json").read_text())
    config["ffn"] = 80
    (wrong / "config.json").write_text(json.dumps(config))
    (wrong / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    assert cli("info", wrong) == 2
    assert "does not match config.json" in capsys.readouterr().err
    weights = load_file(src / "model.safetensors")
    del weights["tok_emb.weight"]
    save_file(weights, wrong / "model.safetensors")
    (wrong / "config.json").write_text((src / "config.json").read_text())
    assert cli("info", wrong) == 2
    err = capsys.readouterr().err
    assert "missing ['tok_emb.weight']" in err and '"' not in err


def test_config_with_missing_fields_is_refused(src: Path, tmp_path: Path, capsys) -> None:
    """A missing field would silently take its default and load another model."""
    partial = tmp_path / "partial"
    partial.mkdir()
    config = json.loads((src / "config.json").read_text())
    del config["rope_theta"], config["norm_eps"]
    (partial / "config.json").write_text(json.dumps(config))
    (partial / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    assert cli("info", partial) == 2
    assert "missing config field(s) ['norm_eps', 'rope_theta']" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text", ["[" * 100_000, '{"n_layers": 1' + "0" * 5000 + "}"], ids=["deep", "long-int"]
)
def test_a_config_json_python_cannot_parse_fails_clearly(tmp_path: Path, capsys, text: str) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text(text)
    assert cli("info", folder) == 2
    assert "config.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    "dtypes",
    [
        {"tok_emb.weight": torch.int64},
        {"tok_emb.weight": torch.float16},
        {"tok_emb.weight": torch.float8_e4m3fn},
    ],
)
def test_weights_of_a_wrong_or_mixed_dtype_fail_clearly(
    src: Path, tmp_path: Path, capsys, dtypes: dict[str, torch.dtype]
) -> None:
    from safetensors.torch import load_file, save_file

    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text((src / "config.json").read_text())
    state = load_file(src / "model.safetensors")
    state.update({name: state[name].to(dtype) for name, dtype in dtypes.items()})
    save_file(state, odd / "model.safetensors")
    assert cli("grow", odd, tmp_path / "out", "--ffn", "96", "--check") == 2
    err = capsys.readouterr().err
    assert "one dtype of float32, float64, bfloat16, float16" in err and "tok_emb.weight" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype", [torch.int64, torch.float8_e4m3fn])
def test_verify_in_another_dtype_refuses_weights_it_would_cast(
    src: Path, tmp_path: Path, capsys, dtype: torch.dtype
) -> None:
    from safetensors.torch import load_file, save_file

    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text((src / "config.json").read_text())
    state = load_file(src / "model.safetensors")
    state["tok_emb.weight"] = state["tok_emb.weight"].to(dtype)
    save_file(state, odd / "model.safetensors")
    assert cli("verify", odd, src, "--dtype", "float64") == 2
    err = capsys.readouterr().err
    assert "must be of float32, float64, bfloat16, float16" in err and "tok_emb.weight" in err


@pytest.mark.parametrize("tol", ["nan", "inf", "-1", "0", "x"])
def test_tolerance_must_be_a_finite_positive_number(src: Path, tol: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli("verify", src, src, "--tol", tol)
    assert exit_info.value.code == 2
    assert "--tol" in capsys.readouterr().err


def test_grow_tolerance_needs_check(src: Path, tmp_path: Path, capsys) -> None:
    assert cli("grow", src, tmp_path / "dst", "--ffn", "96", "--tol", "1e-3") == 2
    assert "--check" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()
    assert cli("grow", src, tmp_path / "dst", "--ffn", "96", "--tol", "1e-3", "--check") == 0


def test_a_destination_under_a_file_is_named(src: Path, tmp_path: Path, capsys):
    (tmp_path / "afile").write_text("x")
    for args in (
        ["init", tmp_path / "afile" / "sub", *TINY],
        ["grow", src, tmp_path / "afile" / "g", "--ffn", "512"],
    ):
        assert cli(*args) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / 'afile'} is not a folder" in err and "Errno" not in err


def test_a_dangling_symbolic_link_is_not_followed(tmp_path: Path, capsys):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    assert cli("init", tmp_path / "link", *TINY) == 2
    assert "is a symbolic link to" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_overwriting_the_working_folder_leaves_no_debris(tmp_path: Path, monkeypatch) -> None:
    here = tmp_path / "here"
    here.mkdir()
    (here / "old.txt").write_text("x")
    monkeypatch.chdir(here)
    assert cli("init", ".", *TINY, "--overwrite") == 0
    assert sorted(p.name for p in here.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]


def test_output_folder_permissions_follow_the_umask(tmp_path: Path) -> None:
    import os

    previous = os.umask(0o022)
    try:
        assert cli("init", tmp_path / "m", *TINY) == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o755
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644}


def test_console_script_and_module_entry_points(src: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "growformer", "info", str(src)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "parameters:" in result.stdout


def test_a_reader_that_leaves_early_is_not_an_error(src: Path) -> None:
    """``growformer info M | head -1``: the closed pipe ends the command quietly."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "growformer", "info", str(src)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # long before the command, still importing torch, prints
    stderr = proc.stderr.read().decode()
    assert proc.wait() in (0, 1)
    assert stderr == ""
