"""growformer train / plot / generate from the command line, and their bad inputs."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from growformer.cli import main
from growformer.train.commands import check_same_data, run_training
from growformer.train.config import TrainConfigError
from growformer.train.metrics import read_events, read_metrics
from growformer.train.run_config import run_spec

TEXT = "\n\n".join(
    f"Paragraph {i}: the quick brown fox jumps over the lazy dog, and the cat watches it "
    f"from the window while number {i * 7 % 13} is counted."
    for i in range(400)
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROWFORMER_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def test_train_a_named_schedule_then_plot_and_generate(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--schedule", "compound", "--data", str(corpus)]
    assert main([*args, "--out", str(out), "--steps", "8", "--no-progress"]) == 0
    assert "compound: 8 steps" in capsys.readouterr().out
    assert read_metrics(out)[-1]["step"] == "8"
    (event,) = read_events(out)
    assert event["method"] == "stack" and event["config_after"]["n_layers"] == 2
    assert main(["plot", str(out), "--out", str(tmp_path / "loss.png")]) == 0
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "The quick", "--tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("The quick")


def test_train_from_a_toml_file_with_explicit_growth(tmp_path, corpus):
    config = tmp_path / "run.toml"
    config.write_text(
        f"""
preset = "tiny"
data = "{corpus}"
[train]
steps = 6
eval_every = 3
[schedule]
name = "mine"
start = {{ n_layers = 1, ffn = 128 }}
[[schedule.grow]]
step = 3
n_layers = 2
ffn = 256
layer_init = "copy"
"""
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    (event,) = read_events(out)
    assert event["step"] == 3
    assert event["config_before"]["n_layers"] == 1 and event["config_after"]["n_layers"] == 2


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('preset = "huge"', "preset must be one of"),
        ("[train]\nsteps = -1", "steps must be an integer"),
        ("[train]\nbogus = 1", "unknown field"),
        ('[schedule]\nname = "compound"\nat = 1.5', "at must be a fraction"),
        ("[schedule]\nstart = { n_layers = 9 }", "not the target"),
        ("[[schedule.grow]]\nstep = 3", "changes nothing"),
        ("[[schedule.grow]]\nstep = 3\nffn = 512\nbogus = 1", "unknown key"),
        ('[schedule]\nname = "compound"\n[[schedule.grow]]\nstep = 3', "built-in schedule"),
        ("[schedule]\n[[schedule.grow]]\nn_layers = 4", "exactly one of at"),
        ("[model]\nn_heads = 3", "n_heads=3"),
        ("nonsense = 1", "unknown key"),
        ("not toml [", "not valid TOML"),
        ("train = 5", "[train] must be a table"),
        ("model = 5", "[model] must be a table"),
        ("schedule = 5", "schedule must be a name or a table"),
        ("data = 5", "data must be a path"),
        ("text_field = 5", "text_field (the JSON lines' field to read) must be a non-empty"),
        ('text_field = ""', "text_field (the JSON lines' field to read) must be a non-empty"),
        ('[schedule]\nname = "stack"\nfactor = 0', "factor must be at least 2"),
        ('[schedule]\nname = "stack"\nat = "0.3"', "at must be a number"),
        ('[schedule]\nname = "lag-stack"\ncandidates = "midas"', "candidates must be a list"),
        ('[schedule]\nname = "lag-stack"\nlag_steps = 1000', "past the run's end"),
        ('[schedule]\nname = "compound"\nwhere = "top"', "where must be one of"),
        ('[schedule]\nname = "compound"\nffn = 0.0', "compound: ffn must be a fraction in (0, 1]"),
        ('[schedule]\nname = "midas"\nstart_layers = 0', "midas: start_layers must be an integer"),
        (
            '[schedule]\nname = "compound"\natt = 0.7',
            "schedule 'compound': unknown parameter(s) ['att']; allowed: at,",
        ),
        ('[schedule]\nname = "scratch"\nat = 0.7', "allowed: none"),
        ("[schedule]\nname = 5\nstart = { n_layers = 1 }", "name must be a string"),
        ("[schedule]\nstart = 5", "[schedule.start] must be a table"),
        ("[schedule]\ngrow = 5", "must be a list of tables"),
        ("[schedule]\nstart = { seq_len = -32 }", "seq_len must be an integer ≥ 1"),
        ("[schedule]\nstart = { seq_len = 0 }", "seq_len must be an integer ≥ 1"),
        ('[[schedule.grow]]\nstep = "3"\nffn = 512', "step must be an integer"),
        ("[[schedule.grow]]\nstep = 3.7\nffn = 512", "step must be an integer"),
        ("[[schedule.grow]]\nstep = true\nffn = 512", "step must be an integer"),
        ("[[schedule.grow]]\ntokens = 2048.5\nffn = 512", "tokens must be an integer"),
        ('[[schedule.grow]]\nat = "0.4"\nffn = 512', "at must be a fraction"),
        ("[[schedule.grow]]\nat = nan\nffn = 512", "at must be a fraction"),
        ("[[schedule.grow]]\nat = inf\nffn = 512", "at must be a fraction"),
        ("preset = [1]", "preset must be one of"),
        ('[[schedule.grow]]\nstep = 3\nn_layers = 2\nseq_len = "64"', "seq_len must be"),
        ("[model]\nmax_seq_len = 64\n[train]\nseq_len = 128", "longer than [model] max_seq_len"),
        ("[train]\nseed = 18446744073709551616", "seed must be an integer ≤ 18446744073709551615"),
        ("[model]\nnorm_eps = 1e400", "norm_eps must be a finite number > 0"),
        # Integers past the float range (math.isfinite raised OverflowError on them).
        (f"[train]\nlr = 1{'0' * 400}", "lr must be a finite number ≥ 0"),
        (f"[[schedule.grow]]\nat = 1{'0' * 400}\nffn = 512", "at must be a fraction"),
        # A schedule name that is not a string (was: TypeError, unhashable list).
        ('[schedule]\nname = ["midas"]', "schedule must be one of scratch, compound, stack,"),
        # Gradual stacking's alpha (was: OverflowError in (i + 1) ** alpha, or a message
        # about a growth point or event that did not name alpha).
        (
            '[model]\nn_layers = 8\n[schedule]\nname = "midas"\nalpha = 1e308',
            "midas: growth points 1 and 2 of 4 both fall on step 1 of 800 (stage lengths ∝ "
            "i**alpha with alpha 1e+308",
        ),
        (
            '[model]\nn_layers = 8\n[schedule]\nname = "lag-stack"\nalpha = 1e308',
            "lag-stack: growth points 1 and 2 of 4 both fall on step 1 of 800",
        ),
        (
            '[model]\nn_layers = 8\n[train]\nsteps = 10\n[schedule]\nname = "midas"\nalpha = -50',
            "midas: growth points 1 and 2 of 4 both fall on step",
        ),
        ('[schedule]\nname = "lag-stack"\nalpha = nan', "lag-stack: alpha must be a finite"),
    ],
)
def test_bad_run_files_fail_before_anything_is_written(tmp_path, corpus, capsys, toml, message):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_config_file_excludes_preset_and_data_flags(tmp_path, corpus, capsys):
    config = tmp_path / "run.toml"
    config.write_text('preset = "tiny"')
    assert main(["train", "--config", str(config), "--data", str(corpus)]) == 2
    assert "go in the --config file" in capsys.readouterr().err


def test_json_lines_are_read_from_the_chosen_field_and_resume_keeps_it(tmp_path, capsys):
    data = tmp_path / "docs.jsonl"
    paragraphs = TEXT.split("\n\n")
    data.write_text(
        "".join(json.dumps({"id": i, "body": p}) + "\n" for i, p in enumerate(paragraphs))
    )
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(data), "--out", str(out), "--no-progress"]
    assert main([*args, "--steps", "2"]) == 2
    assert "no field 'text'" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--steps", "2", "--text-field", "body"]) == 0
    assert json.loads((out / "data.json").read_text())["text_field"] == "body"
    resume = ["train", "--out", str(out), "--steps", "4", "--resume", "--no-progress"]
    assert main(resume) == 0
    assert read_metrics(out)[-1]["step"] == "4"
    # A branch that select continues keeps the field, and resumes with it.
    assert main([*args, "--steps", "8", "--text-field", "body", "--resume"]) == 0
    checkpoint = out / "checkpoints" / "step_0000004"
    branch = tmp_path / "branch"
    select = ["select", str(checkpoint), "--candidates", "stack,identity", "--steps", "2"]
    assert main([*select, "--layers", "4", "--continue", "--out", str(branch)]) == 0
    assert json.loads((branch / "data.json").read_text())["text_field"] == "body"
    resume_branch = ["train", "--out", str(branch), "--steps", "9", "--resume", "--no-progress"]
    assert main(resume_branch) == 0
    config = tmp_path / "run.toml"
    config.write_text(f'preset = "tiny"\ndata = "{data}"\ntext_field = "body"\n')
    toml_out = tmp_path / "toml_run"
    assert main(["train", "--config", str(config), "--out", str(toml_out), "--steps", "2"]) == 0
    assert json.loads((toml_out / "data.json").read_text())["text_field"] == "body"
    assert main(["train", "--config", str(config), "--text-field", "body"]) == 2
    assert "go in the --config file" in capsys.readouterr().err


def test_demo_trains_both_schedules_and_keeps_existing_runs(tmp_path, corpus, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--preset", "tiny", "--data", str(corpus), "--out", str(out), "--steps", "4"]
    assert main(args) == 0
    assert "compound" in (out / "table.md").read_text()
    assert read_metrics(out / "scratch")[-1]["step"] == "4"
    (out / "compound" / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--resume" not in err  # demo has no --resume
    assert (out / "compound" / "notes.txt").read_text() == "mine"
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "compound" / "notes.txt").exists()
    capsys.readouterr()
    assert main(args) == 2  # its own table and plot are not replaced without --overwrite
    assert "pass --overwrite" in capsys.readouterr().err
    (out / "model.safetensors").write_text("not the demo's")
    assert main([*args, "--overwrite"]) == 2
    assert "holds other files (model.safetensors)" in capsys.readouterr().err
    run_dir = out / "scratch"
    assert main(["plot", str(run_dir), "--out", str(run_dir)]) == 2  # a folder, not a file
    assert not list(out.glob(".*tmp*"))
    assert main(["demo", "--out", str(tmp_path / "zero"), "--steps", "0"]) == 2
    assert "steps" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "afile"), "--steps", "2"]) == 2
    captured = capsys.readouterr()
    assert "exists and is not a folder" in captured.err and "==" not in captured.out


@pytest.mark.parametrize("content", [b"x", b"", b"PK\x03\x04"])
def test_a_damaged_trainer_state_is_a_clear_error(tmp_path, corpus, capsys, content):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out), "--steps", "2"]
    assert main([*args, "--no-progress"]) == 0
    (trainer_file,) = out.glob("checkpoints/*/trainer.pt")
    trainer_file.write_bytes(content)
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--steps", "4"]) == 2
    assert "is not a readable trainer state" in capsys.readouterr().err
    assert main(["generate", str(out), "--prompt", "The"]) == 2
    assert "is not a readable trainer state" in capsys.readouterr().err


def _position(**fields):
    return lambda state: state["position"].update(fields)


def _exp_avg_of_shape(shape):
    def spoil(state):
        for entries in state["optimizer"]["state"].values():
            entries["exp_avg"] = torch.zeros(shape)

    return spoil


DAMAGED_FIELDS = {
    "step_a_string": (_position(step="a"), "position step must be an integer >= 0; got 'a'"),
    "negative_step": (_position(step=-3), "position step must be an integer >= 0; got -3"),
    "negative_stage": (_position(stage=-1), "position stage must be an integer >= 0; got -1"),
    "nan_flops": (_position(flops=math.nan), "position flops must be a finite number >= 0"),
    "rewarm_a_string": (_position(rewarm_from="x"), "position rewarm_from must be an integer"),
    "unknown_field": (_position(epoch=1), "unknown ['epoch']"),
    "rng_of_floats": (
        lambda state: state.update(torch_rng=torch.zeros(3)),
        "RNG state must be a torch.ByteTensor",
    ),
    "optimizer_not_a_state_dict": (
        lambda state: state.update(optimizer=[1]),
        "optimizer must be a dict of 'state' and 'param_groups'",
    ),
    "optimizer_group_missing": (
        lambda state: state["optimizer"]["param_groups"].pop(),
        "the optimizer state has parameter groups of",
    ),
    # torch's fused AdamW does not check moment shapes: this one crashed the process.
    "moment_of_another_shape": (
        _exp_avg_of_shape(2),
        "optimizer exp_avg of tok_emb.weight has shape (2,); the parameter's is",
    ),
    "flops_past_the_float_range": (_position(flops=10**400), "flops must be a finite number"),
}


@pytest.mark.parametrize("case", DAMAGED_FIELDS)
def test_damaged_trainer_state_fields_fail_before_the_run_changes(tmp_path, corpus, capsys, case):
    spoil, message = DAMAGED_FIELDS[case]
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out), "--steps", "2"]
    assert main([*args, "--no-progress"]) == 0
    (trainer_file,) = out.glob("checkpoints/*/trainer.pt")
    state = torch.load(trainer_file, weights_only=True)
    spoil(state)
    torch.save(state, trainer_file)
    before = {name: (out / name).read_bytes() for name in ("run.json", "metrics.csv")}
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--steps", "4", "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in before} == before


def test_an_empty_text_field_is_refused(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out)]
    assert main([*args, "--text-field", ""]) == 2
    assert "must be a non-empty string" in capsys.readouterr().err
    assert not out.exists()


def test_bad_data_fails_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--preset", "tiny", "--data", str(tmp_path / "nope"), "--out", str(out)])
    assert code == 2
    assert "nope" in capsys.readouterr().err
    assert not out.exists()


def test_generate_needs_a_run_folder(tmp_path, capsys):
    assert main(["generate", str(tmp_path), "--prompt", "x"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_resume_continues_a_run_and_refuses_other_data(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--schedule", "stack", "--data", str(corpus)]
    assert main([*args, "--out", str(out), "--steps", "6", "--no-progress"]) == 0
    assert main([*args, "--out", str(out), "--steps", "10", "--resume", "--no-progress"]) == 0
    assert read_metrics(out)[-1]["step"] == "10"
    assert b"\r" not in (out / "metrics.csv").read_bytes()  # one line ending, resumed or not
    other = tmp_path / "other.txt"
    other.write_text(TEXT.replace("fox", "wolf"))
    args[-1] = str(other)
    assert main([*args, "--out", str(out), "--steps", "12", "--resume"]) == 2
    assert "the data differs" in capsys.readouterr().err
    args[-1] = str(corpus)
    for record in ('{"source": "x"', "{}"):
        (out / "data.json").write_text(record)
        assert main([*args, "--out", str(out), "--steps", "12", "--resume"]) == 2
        assert "not a growformer run folder with run.json and data.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("record", "message"), [('{"source": "x"', "not valid JSON"), ("{}", "not a data record")]
)
def test_a_damaged_data_record_is_a_clear_error(tmp_path, record, message):

    (tmp_path / "data.json").write_text(record)
    with pytest.raises(TrainConfigError, match=message):
        check_same_data(tmp_path, None)


def test_a_relative_data_path_is_recorded_so_resume_works_from_anywhere(
    tmp_path, corpus, monkeypatch
):
    monkeypatch.chdir(corpus.parent)
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", corpus.name, "--out", str(out), "--steps", "2"]
    assert main([*args, "--no-progress"]) == 0
    assert json.loads((out / "data.json").read_text())["source"] == str(corpus)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--out", str(out), "--steps", "3", "--resume", "--no-progress"]) == 0


def test_resume_refuses_flags_that_describe_another_run(tmp_path, corpus, capsys):
    """Resuming under another schedule, model or training setting would continue the
    checkpoints under a plan they were not made with."""
    out = tmp_path / "run"
    base = ["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out)]
    assert main([*base, "--schedule", "compound", "--steps", "6", "--no-progress"]) == 0
    capsys.readouterr()
    for other, field in (
        (["--schedule", "stack"], "schedule.name"),
        (["--schedule", "compound", "--preset", "small"], "model.n_layers"),
    ):
        args = [a for a in base if a != "tiny"] if "small" in other else base
        args = [a for a in args if a != "--preset"] if "small" in other else args
        assert main([*args, *other, "--steps", "8", "--resume"]) == 2
        err = capsys.readouterr().err
        assert "was trained with other settings" in err and field in err
    assert read_metrics(out)[-1]["step"] == "6"
    assert main([*base, "--schedule", "compound", "--steps", "8", "--resume"]) == 0
    assert main(["train", "--out", str(out), "--steps", "10", "--resume"]) == 0
    assert read_metrics(out)[-1]["step"] == "10"
    # Restating the run's flags without --steps keeps its budget (not the preset's 40 steps).
    assert main([*base, "--schedule", "compound", "--resume", "--no-progress"]) == 0
    assert read_metrics(out)[-1]["step"] == "10"
    assert json.loads((out / "run.json").read_text())["train"]["steps"] == 10


def test_resume_takes_what_the_flags_leave_out_from_the_run(tmp_path, corpus, capsys):
    """A preset, schedule or data restated alone is compared with the run's own; the rest is
    the run's (not the default preset and schedule)."""
    out = tmp_path / "run"
    data = ["--data", str(corpus), "--out", str(out)]
    assert main(["train", "--preset", "tiny", "--schedule", "compound", *data, "--steps", "4"]) == 0
    for restated, steps in ((["--preset", "tiny"], 5), (["--schedule", "compound"], 6), ([], 7)):
        assert main(["train", *restated, *data, "--steps", str(steps), "--resume"]) == 0
        assert read_metrics(out)[-1]["step"] == str(steps)
    capsys.readouterr()
    for other, field in (
        (["--preset", "small"], "model.hidden"),
        (["--schedule", "stack"], "schedule.name"),
    ):
        assert main(["train", *other, *data, "--steps", "8", "--resume"]) == 2
        err = capsys.readouterr().err
        assert "was trained with other settings" in err and field in err
        assert "schedule" not in err if "--preset" in other else "model." not in err
    assert read_metrics(out)[-1]["step"] == "7"


def test_resume_refuses_a_config_file_whose_schedule_changed_under_the_same_name(
    tmp_path, corpus, capsys
):
    """The schedule is compared by its start and events, not its name alone: an edited config
    file would otherwise continue the checkpoints under a plan they were not made with."""
    config = tmp_path / "run.toml"
    schedule = '[schedule]\nname = "mine"\nstart = {{ ffn = {start} }}\n'
    schedule += '[[schedule.grow]]\nstep = 3\nffn = 256\nwidth_init = "{init}"\n'
    head = f'preset = "tiny"\ndata = "{corpus}"\n[train]\nsteps = 6\neval_every = 3\n'
    config.write_text(head + schedule.format(start=128, init="zero"))
    out = tmp_path / "run"
    args = ["train", "--config", str(config), "--out", str(out), "--no-progress"]
    assert main([*args, "--steps", "4"]) == 0
    capsys.readouterr()
    for start, init, field in ((64, "zero", "schedule.start"), (128, "tile", "schedule.events")):
        config.write_text(head + schedule.format(start=start, init=init))
        assert main([*args, "--steps", "6", "--resume"]) == 2
        err = capsys.readouterr().err
        assert "was trained with other settings" in err and field in err
    config.write_text(head + schedule.format(start=128, init="zero"))
    assert main([*args, "--steps", "6", "--resume"]) == 0
    assert read_metrics(out)[-1]["step"] == "6"


def test_a_new_run_refuses_a_non_empty_folder_unless_overwritten(tmp_path, corpus, capsys):
    """Without --resume, a second run into the same folder would mix their checkpoints."""
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out), "--no-progress"]
    assert main([*args, "--steps", "4"]) == 0
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert main([*args, "--steps", "2", "--schedule", "stack"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    assert main([*args, "--steps", "2", "--schedule", "stack", "--overwrite"]) == 0
    assert read_metrics(out)[-1]["step"] == "2"
    assert [p.name for p in (out / "checkpoints").iterdir()] != before
    (tmp_path / "afile").write_text("x")
    base = ["train", "--preset", "tiny", "--data", str(corpus), "--steps", "2"]
    assert main([*base, "--out", str(tmp_path / "afile")]) == 2
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--temperature", "-1"], "--temperature"),
        (["--temperature", "nan"], "--temperature"),
        (["--tokens", "-1"], "--tokens"),
        (["--prompt", ""], "--prompt"),
    ],
)
def test_generate_bad_input(tmp_path, corpus, capsys, extra, message):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out), "--steps", "2"]
    assert main([*args, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "The", *extra]) == 2
    assert message in capsys.readouterr().err


def test_generate_at_extreme_temperatures_is_well_defined(tmp_path, corpus, capsys):
    """--temperature so small that logits / temperature overflows samples greedily, as 0 does;
    one so large that the quotients vanish samples the top tokens uniformly (both were a torch
    error about inf or nan probabilities)."""
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out), "--steps", "2"]
    assert main([*args, "--no-progress"]) == 0
    capsys.readouterr()
    texts = {}
    for temperature in ("0", "1e-300", "5e-324", "1e300"):
        generate = ["generate", str(out), "--prompt", "The", "--tokens", "8"]
        assert main([*generate, "--temperature", temperature]) == 0
        texts[temperature] = capsys.readouterr().out
    assert texts["1e-300"] == texts["5e-324"] == texts["0"]
    assert texts["1e300"].startswith("The")


def test_plot_of_a_missing_run_fails_in_one_line(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nosuch")]) == 2
    assert "metrics.csv" in capsys.readouterr().err


METRICS_HEADER = "step,tokens,flops,time,loss,val_loss,lr,params,stage,seq_len\n"
METRICS_ROWS = "1,64,1e9,0.1,5.0,5.1,0.001,100,0,32\n2,128,2e9,0.2,4.9,,0.001,100,0,32\n"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("events.jsonl", '{"step": 1}\nnot json\n', "events.jsonl line 2 is not valid JSON"),
        ("events.jsonl", "[" * 100_000 + "\n", "events.jsonl line 1 is not valid JSON"),
        ("events.jsonl", "[1, 2]\n", "events.jsonl line 1 is not a growth event"),
        ("events.jsonl", '\n{"method": "stack"}\n', "events.jsonl line 2 is not a growth event"),
        ("events.jsonl", '{"step": "1"}\n', "it needs an integer step"),
        ("events.jsonl", b"\xff\n", "events.jsonl is not UTF-8 text"),
        ("metrics.csv", "a,b\n1,2\n", "metrics.csv line 1: the header lacks step, time, flops"),
        ("metrics.csv", "", "metrics.csv is empty: not a growformer metrics file"),
        (
            "metrics.csv",
            METRICS_HEADER + METRICS_ROWS + "3,64\n",
            "metrics.csv line 4: 2 values for the header's 10 columns",
        ),
        (
            "metrics.csv",
            METRICS_HEADER + "1,64,1e9,0.1,5.0,5.1,0.001,100,0,32,7\n",
            "metrics.csv line 2: 11 values for the header's 10 columns",
        ),
        (
            "metrics.csv",
            METRICS_HEADER + "1,64,abc,0.1,5.0,5.1,0.001,100,0,32\n",
            "metrics.csv line 2: flops must be a number, got 'abc'",
        ),
        (
            "metrics.csv",
            METRICS_HEADER + "x,64,1e9,0.1,5.0,5.1,0.001,100,0,32\n",
            "metrics.csv line 2: step must be an integer, got 'x'",
        ),
        ("metrics.csv", b"\xff\xfe", "metrics.csv is not UTF-8 text"),
    ],
)
def test_plot_of_a_corrupt_run_names_the_file_and_line(tmp_path, capsys, name, content, message):
    """A hand-edited or damaged events.jsonl or metrics.csv fails in one line naming the file
    (was: a traceback, or a short row plotted as if whole)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text(METRICS_HEADER + METRICS_ROWS)
    (run_dir / "events.jsonl").write_text('{"step": 1, "method": "stack"}\n')
    png = tmp_path / "loss.png"
    assert main(["plot", str(run_dir), "--out", str(png)]) == 0  # the intact files plot
    png.unlink()
    (run_dir / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["plot", str(run_dir), "--out", str(png)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"growformer plot: error: {run_dir}") and message in err
    assert not png.exists()


def test_overwrite_keeps_the_old_run_when_the_new_one_is_invalid(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out), "--no-progress"]
    assert main([*args, "--steps", "2"]) == 0
    before = sorted(p.name for p in out.rglob("*"))
    config = tmp_path / "bad.toml"
    config.write_text(f'preset = "tiny"\ndata = "{corpus}"\n[schedule]\nstart = {{ seq_len = 24 }}')
    assert main(["train", "--config", str(config), "--out", str(out), "--overwrite"]) == 2
    capsys.readouterr()
    nope = ["train", "--preset", "tiny", "--data", str(tmp_path / "nope"), "--out", str(out)]
    assert main([*nope, "--overwrite"]) == 2
    assert sorted(p.name for p in out.rglob("*")) == before


def test_resume_refuses_a_checkpoint_of_another_schedule(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out), "--no-progress"]
    assert main([*args, "--steps", "5"]) == 0
    assert main([*args, "--steps", "10", "--schedule", "stack", "--resume"]) == 2
    assert "schedule.name" in capsys.readouterr().err
    assert main([*args, "--steps", "3", "--resume"]) == 2
    assert "past this run's 3 steps" in capsys.readouterr().err

    stack = run_spec("tiny", train={"steps": 10}, schedule="stack", data=str(corpus))
    checkpoint = sorted((out / "checkpoints").iterdir())[-1]
    with pytest.raises(TrainConfigError, match="is not stage 0 of schedule 'stack'"):
        run_training(stack, tmp_path / "branch", resume=checkpoint, progress=False)


def test_resuming_a_finished_run_reports_its_validation_loss(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out), "--no-progress"]
    assert main([*args, "--steps", "4"]) == 0
    first = capsys.readouterr().out.split("final val loss ")[1].split()[0]
    assert main([*args, "--steps", "4", "--resume"]) == 0
    assert capsys.readouterr().out.split("final val loss ")[1].split()[0] == first


def test_resume_without_a_checkpoint_writes_nothing(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out), "--resume"]
    assert main(args) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert not out.exists()


def test_a_checkpoints_model_shrinks_with_its_runs_tokenizer(tmp_path, corpus):
    """A checkpoint's model folder has no tokenizer.json; the run folder above it has: shrink
    calibrates with it and writes it beside the child."""
    from growformer.data.tokenizer import Tokenizer
    from growformer.shrink.calibration import folder_encoder

    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out), "--steps", "2"]
    assert main([*args, "--no-progress"]) == 0
    (model,) = out.glob("checkpoints/*/model")
    encode = folder_encoder(model, hugging_face=False)
    assert encode(["the quick brown fox"]) == [
        Tokenizer.load(out / "tokenizer.json").encode("the quick brown fox")
    ]
    child = tmp_path / "child"
    shrink = ["shrink", str(model), str(child), "--ffn", "64", "--data", str(corpus)]
    assert main([*shrink, "--calib-tokens", "256"]) == 0
    assert (child / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()


@pytest.fixture
def stack_run(tmp_path, corpus):
    """A tiny stack run (1 → 2 layers at step 5 of 16) with a checkpoint at the growth step."""
    config = tmp_path / "stack.toml"
    config.write_text(
        f'preset = "tiny"\ndata = "{corpus}"\n'
        "[train]\nsteps = 16\ncheckpoint_every = 5\neval_every = 8\n"
        '[schedule]\nname = "stack"\nat = 0.3\n'
    )
    out = tmp_path / "stack"
    assert main(["train", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    return out


def test_select_tries_each_candidate_and_writes_nothing(stack_run, capsys):
    checkpoint = stack_run / "checkpoints" / "step_0000005"
    before = sorted(p.name for p in stack_run.rglob("*"))
    args = ["select", str(checkpoint), "--candidates", "stack,identity,midas", "--steps", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "candidate" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["stack", "identity", "midas"]
    assert sum("✓" in r for r in rows) == 1 and "chosen: " in out
    assert sorted(p.name for p in stack_run.rglob("*")) == before


def test_select_continue_trains_the_choice_to_the_end(stack_run, tmp_path, capsys):
    checkpoint = stack_run / "checkpoints" / "step_0000005"
    branch = tmp_path / "branch"
    args = ["select", str(checkpoint), "--candidates", "stack,identity", "--steps", "2"]
    assert main([*args, "--continue", "--out", str(branch)]) == 0
    chosen = capsys.readouterr().out.split("chosen: ")[1].split()[0]
    assert chosen in ("stack", "identity")
    assert "chosen: " + chosen in (branch / "select.md").read_text()
    assert read_metrics(branch)[-1]["step"] == "16"
    (event,) = read_events(branch)
    assert event["step"] == 5 and event["config_after"]["n_layers"] == 2
    # the branch resumes from its own run.json: no schedule flags needed
    resumed = ["train", "--resume", "--out", str(branch), "--steps", "18", "--no-progress"]
    assert main(resumed) == 0
    assert read_metrics(branch)[-1]["step"] == "18"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--candidates", "stack,bogus"], "unknown candidate(s) ['bogus']; allowed: stack,"),
        (["--candidates", "stack"], "at least two distinct candidates"),
        (["--continue", "--out", "full"], "--out {tmp}/full is not empty: choose another"),
        (["--steps", "0"], "--steps must be an integer ≥ 1"),
        (["--out", "x"], "needs --continue"),
        (["--layers", "1"], "--layers must be more than"),
    ],
)
def test_select_bad_input(stack_run, tmp_path, capsys, extra, message):
    checkpoint = stack_run / "checkpoints" / "step_0000005"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("mine")
    extra = [str(tmp_path / e) if e == "full" else e for e in extra]
    assert main(["select", str(checkpoint), *extra]) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["mine.txt"]


def test_select_needs_steps_left_and_a_checkpoint(stack_run, tmp_path, capsys):
    assert main(["select", str(stack_run)]) == 2
    assert "at the end of the run" in capsys.readouterr().err
    assert main(["select", str(tmp_path / "nothing")]) == 2
    assert "not a checkpoint" in capsys.readouterr().err


def test_a_model_larger_than_memory_fails_before_anything_is_written(tmp_path, corpus, capsys):
    config = tmp_path / "huge.toml"
    config.write_text(
        f'preset = "tiny"\ndata = "{corpus}"\n[model]\nn_layers = 4096\nhidden = 65536\n'
        "n_heads = 64\n"
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out)]) == 2
    assert "the run's largest model has" in capsys.readouterr().err
    assert not out.exists()


def test_a_run_folder_or_plot_under_a_file_is_named(tmp_path, corpus, capsys):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(corpus), "--steps", "1"]
    assert main([*args, "--out", str(tmp_path / "afile" / "run")]) == 2
    assert f"{tmp_path / 'afile'} is not a folder" in capsys.readouterr().err
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    assert main(["plot", str(out), "--out", str(tmp_path / "afile" / "loss.png")]) == 2
    assert f"{tmp_path / 'afile'} is not a folder" in capsys.readouterr().err
    stale = tmp_path / "stale.png"
    stale.symlink_to(tmp_path / "gone.png")  # a file output replaces the link itself
    assert main(["plot", str(out), "--out", str(stale)]) == 0
    assert stale.is_file() and not stale.is_symlink()


def test_a_run_folder_that_overlaps_its_data_is_refused(tmp_path, corpus, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "corpus.txt").write_text(corpus.read_text())
    args = ["train", "--preset", "tiny", "--steps", "1", "--overwrite"]
    for data_arg, out in ((data, data / "run"), (data, data), (data / "corpus.txt", data)):
        assert main([*args, "--data", str(data_arg), "--out", str(out)]) == 2
        assert "overlap" in capsys.readouterr().err
    assert sorted(p.name for p in data.iterdir()) == ["corpus.txt"]


def _resumable_run(tmp_path, corpus):
    """A run of 4 steps checkpointed at 2, as if stopped after step 4's log: resuming
    restarts at step 2 and drops what the logs hold past it."""
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out)]
    assert main([*args, "--steps", "2", "--no-progress"]) == 0
    assert main(["train", "--out", str(out), "--steps", "4", "--resume", "--no-progress"]) == 0
    shutil.rmtree(out / "checkpoints" / "step_0000004")
    return out


def test_a_damaged_event_log_is_refused_before_the_run_files_change(tmp_path, corpus, capsys):
    out = _resumable_run(tmp_path, corpus)
    with (out / "events.jsonl").open("a") as f:
        f.write("not json\n")
    before = {name: (out / name).read_bytes() for name in ("run.json", "metrics.csv")}
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--steps", "6", "--resume", "--no-progress"]) == 2
    assert "events.jsonl line 1 is not valid JSON" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in before} == before


def test_a_row_torn_by_a_crash_does_not_block_resume(tmp_path, corpus):
    out = _resumable_run(tmp_path, corpus)
    text = (out / "metrics.csv").read_text()
    (out / "metrics.csv").write_text(text[: text.rstrip("\n").rfind(",")])  # step 4 cut short
    assert main(["train", "--out", str(out), "--steps", "6", "--resume", "--no-progress"]) == 0
    steps = [int(row["step"]) for row in read_metrics(out)]
    assert steps[-1] == 6 and steps == sorted(set(steps))
