"""The trainer: schedules, exact growth events, resume, validation before training."""

from __future__ import annotations

import math
import os

import pytest
import torch

from growformer.config import SIZE_FIELDS, ModelConfig
from growformer.expand import GrowthOptions
from growformer.train.checkpoint import TRAINER_FILE, RunPosition, latest_checkpoint, read_position
from growformer.train.config import TrainConfig, TrainConfigError
from growformer.train.metrics import read_events, read_metrics
from growformer.train.schedule import SCHEDULES, GrowthEvent, Schedule, named_schedule
from growformer.train.trainer import Trainer
from train_data import MarkovTokens

TARGET = ModelConfig(vocab_size=64, n_layers=4, hidden=32, n_heads=4, ffn=128, max_seq_len=32)
TRAIN = TrainConfig(
    steps=12, batch_size=4, seq_len=32, warmup_steps=2, eval_every=6, eval_batches=1, log_every=1
)
TRAIN_DATA, VAL_DATA = MarkovTokens(seed=0), MarkovTokens(seed=1)


def run(tmp_path, schedule, train=TRAIN, name="run", **kwargs):
    trainer = Trainer(
        TARGET, train, schedule, TRAIN_DATA, VAL_DATA, tmp_path / name, progress=False, **kwargs
    )
    return trainer.run()


def losses(run_dir) -> list[float]:
    return [float(r["loss"]) for r in read_metrics(run_dir)]


@pytest.mark.parametrize("name", SCHEDULES)
def test_every_named_schedule_trains_to_the_target(tmp_path, name):
    schedule = named_schedule(name, TARGET, TRAIN)
    result = run(tmp_path, schedule)
    assert all(getattr(result.config, f) == getattr(TARGET, f) for f in SIZE_FIELDS)
    assert math.isfinite(result.final_val_loss)
    assert len(read_events(result.run_dir)) == len(schedule.events)
    assert [int(r["step"]) for r in read_metrics(result.run_dir)] == list(range(1, 13))


def test_loss_is_unchanged_by_an_exact_growth_event(tmp_path):
    event = GrowthEvent(
        step=5,
        sizes={"n_layers": 4, "hidden": 32, "n_heads": 4, "n_kv_heads": 4, "ffn": 128},
        options=GrowthOptions(layer_init="copy", where="interleave"),
    )
    schedule = Schedule(
        "exact",
        {"n_layers": 2, "hidden": 24, "n_heads": 3, "n_kv_heads": 3, "ffn": 64},
        None,
        (event,),
    )
    result = run(tmp_path, schedule)
    (logged,) = read_events(result.run_dir)
    assert logged["config_before"]["hidden"] == 24 and logged["config_after"]["hidden"] == 32
    assert abs(logged["loss_after"] - logged["loss_before"]) <= 1e-5 * max(
        1.0, abs(logged["loss_before"])
    )


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_a_schedule_can_grow_the_context(tmp_path, position):
    """A model that starts with a shorter ``max_seq_len`` than the final ``seq_len`` is
    evaluated on the windows' first ``max_seq_len`` tokens until it grows, and its growth keeps
    the loss there."""
    target = TARGET.replace(position=position)
    event = GrowthEvent(step=6, sizes={"max_seq_len": 32}, seq_len=32)
    schedule = Schedule("context", {"max_seq_len": 16}, 16, (event,))
    trainer = Trainer(
        target, TRAIN, schedule, TRAIN_DATA, VAL_DATA, tmp_path / "run", progress=False
    )
    result = trainer.run()
    assert result.config.max_seq_len == 32
    (logged,) = read_events(result.run_dir)
    assert logged["config_before"]["max_seq_len"] == 16
    assert abs(logged["loss_after"] - logged["loss_before"]) <= 1e-5 * logged["loss_before"]
    val = [float(r["val_loss"]) for r in read_metrics(result.run_dir) if r["val_loss"]]
    assert len(val) == 2 and all(math.isfinite(v) for v in val)


def test_stacking_is_logged_with_its_loss_jump(tmp_path):
    result = run(tmp_path, named_schedule("stack", TARGET, TRAIN))
    (event,) = read_events(result.run_dir)
    assert event["method"] == "stack"
    assert event["config_before"]["n_layers"] == 2 and event["config_after"]["n_layers"] == 4
    assert event["loss_after"] != event["loss_before"]


@pytest.mark.parametrize(("name", "params"), [("compound", {"at": 0.4}), ("apollo", {})])
@pytest.mark.parametrize("stop_at", [4, 8])
def test_resume_reproduces_an_uninterrupted_run(tmp_path, stop_at, name, params):
    """Killed at a checkpoint, then resumed: CompoundGrow before (4) or after (8) its growth
    at step 5; Apollo after its growths, with the depths it samples per step."""
    schedule = named_schedule(name, TARGET, TRAIN, **params)
    full = run(tmp_path, schedule, name="full")
    partial = TRAIN.replace(checkpoint_every=stop_at)
    first = Trainer(
        TARGET, partial, schedule, TRAIN_DATA, VAL_DATA, tmp_path / "cut", progress=False
    )
    first.start()
    for _ in range(stop_at):
        first.step()
    first.save()
    first.step()  # a step after the checkpoint that the resumed run must redo
    resumed = run(tmp_path, schedule, train=partial, name="cut", resume=True)
    assert losses(full.run_dir) == losses(resumed.run_dir)
    assert resumed.final_val_loss == full.final_val_loss
    assert latest_checkpoint(resumed.run_dir).name == f"step_{TRAIN.steps:07d}"


def test_reset_policy_drops_the_optimizer_state(tmp_path):
    event = GrowthEvent(step=3, sizes={"ffn": 128}, state_policy="reset", rewarm_steps=2)
    schedule = Schedule("exact", {"ffn": 64}, None, (event,))
    trainer = Trainer(TARGET, TRAIN, schedule, TRAIN_DATA, VAL_DATA, tmp_path / "r", progress=False)
    trainer.start()
    for _ in range(3):
        trainer.step()
    assert trainer.optimizer.state
    stage = trainer._stage_at(3)
    trainer._grow(stage, 3)
    assert not trainer.optimizer.state
    assert trainer.position.rewarm_from == 3


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (Schedule("bad", {"n_layers": 8}), "n_layers=8 (target 4)"),
        (Schedule("bad", {"ffn": 64}), "not the target"),
        (
            Schedule("bad", {"ffn": 64}, None, (GrowthEvent(step=20, sizes={"ffn": 128}),)),
            "within (0, 12)",
        ),
        (
            Schedule(
                "bad",
                {"n_layers": 2},
                None,
                (GrowthEvent(step=3, sizes={"n_layers": 3}, method="stack"),),
            ),
            "multiple of 2",
        ),
        (Schedule("bad", {}, 64), "longer than the model's max_seq_len"),
        (Schedule("bad", {"bogus": 1}), "unknown size field"),
        # Growths that the expansions refuse, found before the run trains up to them.
        (
            Schedule("bad", {"n_kv_heads": 1}, None, (GrowthEvent(3, {"n_kv_heads": 4}),)),
            "below the current group size",
        ),
        (
            Schedule(
                "bad",
                {"n_layers": 2},
                None,
                (GrowthEvent(3, {"n_layers": 4}, options=GrowthOptions(where=(5, 6))),),
            ),
            "new-layer positions must be in",
        ),
        (
            Schedule(
                "bad", {"n_heads": 2, "n_kv_heads": 2}, None, (GrowthEvent(3, {"n_heads": 4}),)
            ),
            "n_kv_heads=4 (the schedule's 2): an MHA model's n_kv_heads follows n_heads",
        ),
    ],
)
def test_bad_schedules_fail_before_anything_is_written(tmp_path, schedule, message):
    with pytest.raises(TrainConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Trainer(TARGET, TRAIN, schedule, TRAIN_DATA, VAL_DATA, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["midas", "lag-stack"])
def test_gradual_stacking_alpha_cannot_overflow_and_is_checked(name):
    """Stage i lasts in proportion to i**alpha: a huge alpha is a large one's limit (stages
    before the last as short as a step) where (i + 1)**alpha overflowed; an alpha that is
    negative or not finite, or that puts two growths on one step, is named."""
    assert [e.step for e in named_schedule(name, TARGET, TRAIN).events] == [3, 8]
    for alpha in (1e308, 10**400 // 10**100):
        assert [e.step for e in named_schedule(name, TARGET, TRAIN, alpha=alpha).events] == [1, 8]
    deep = TARGET.replace(n_layers=8)  # from 4 layers: 4 growths in 12 steps
    with pytest.raises(
        TrainConfigError, match=rf"^{name}: growth points 1 and 2 of 4 both fall on step 1 of 12 "
    ):
        named_schedule(name, deep, TRAIN, alpha=1e308)
    # Negative: the early stages longer; far below 0 the later ones collapse to no steps.
    assert [e.step for e in named_schedule(name, TARGET, TRAIN, alpha=-1.0).events] == [6, 8]
    with pytest.raises(TrainConfigError, match=rf"^{name}: growth points 1 and 2 of 4 both"):
        named_schedule(name, deep, TRAIN, alpha=-1e308)
    for alpha in (math.nan, math.inf, -math.inf, 10**400, -(10**400)):
        with pytest.raises(TrainConfigError, match=f"^{name}: alpha must be a finite number "):
            named_schedule(name, TARGET, TRAIN, alpha=alpha)


def test_a_schedule_name_must_be_a_string():
    with pytest.raises(
        TrainConfigError, match=r"schedule must be one of scratch, .*; got \['midas'\]"
    ):
        named_schedule(["midas"], TARGET, TRAIN)


def test_sampling_temperature_is_finite_and_its_extremes_are_well_defined():
    """temperature → 0 is greedy and temperature → ∞ uniform over the top_k tokens, however
    far the float quotient overflows or vanishes (was: a torch error about inf or nan
    probabilities); nan and inf are refused like a negative temperature."""
    from growformer.model import Transformer
    from growformer.train.generate import sample

    torch.manual_seed(0)
    model = Transformer(TARGET)
    prompt = torch.tensor([1, 2, 3])
    greedy = sample(model, prompt, 8, temperature=0)
    for tiny in (1e-300, 5e-324):
        assert torch.equal(sample(model, prompt, 8, temperature=tiny, seed=1), greedy)
    assert torch.equal(sample(model, prompt, 8, temperature=1e300, top_k=1), greedy)
    hot = sample(model, prompt, 8, temperature=1e300, top_k=3, seed=1)
    assert torch.equal(hot, sample(model, prompt, 8, temperature=1e300, top_k=3, seed=1))
    with torch.no_grad():
        for end in range(3, 11):
            assert hot[end] in model(hot[:end].unsqueeze(0))[0, -1].topk(3).indices
    for bad in (math.nan, math.inf, -1.0):
        with pytest.raises(ValueError, match="temperature must be a finite number ≥ 0"):
            sample(model, prompt, 1, temperature=bad)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"steps": 0}, "steps must be an integer"),
        ({"batch_size": 6, "grad_accum": 4}, "multiple of grad_accum"),
        ({"lr": -1.0}, "lr must be a finite number"),
        ({"dtype": "float16"}, "dtype must be one of"),
        ({"beta2": 1.5}, "beta2 must be in"),
        ({"beta1": 1.0}, r"beta1 must be in \[0, 1\)"),
    ],
)
def test_bad_train_configs_are_rejected(fields, message):
    with pytest.raises(TrainConfigError, match=message):
        TRAIN.replace(**fields)


def test_resume_without_a_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(TrainConfigError, match="no checkpoint"):
        run(tmp_path, Schedule(), resume=True)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    one = run(tmp_path, Schedule(), name="one")
    accum = run(tmp_path, Schedule(), train=TRAIN.replace(grad_accum=2), name="accum")
    assert losses(one.run_dir) == pytest.approx(losses(accum.run_dir), rel=1e-4)
    assert torch.isfinite(torch.tensor(accum.final_val_loss))


def test_a_run_files_model_vocab_size_sizes_the_tokenizer():
    from growformer.train.run_config import run_spec

    assert run_spec("tiny").vocab_size == 512
    assert run_spec("tiny", model={"vocab_size": 300}).vocab_size == 300


def _peak_rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="Linux peak RSS")
def test_reading_a_checkpoint_position_does_not_read_the_optimizer_state(tmp_path):
    """A resume checks the position before it loads the checkpoint: the moments (twice the
    model) are not read for it."""
    moments = {"exp_avg": torch.ones(1 << 23), "exp_avg_sq": torch.ones(1 << 23)}  # 64 MiB
    state = {
        "position": RunPosition(step=3).to_dict(),
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0), **moments}},
            "param_groups": [{"params": [0], "lr": 1e-3}],
        },
        "torch_rng": torch.get_rng_state(),
    }
    torch.save(state, tmp_path / TRAINER_FILE)
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    del state, moments
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = _peak_rss_kib()
    assert read_position(tmp_path).step == 3
    assert _peak_rss_kib() - before < 16 * 1024
    # torch maps only zip archives: a file in torch's legacy format is read whole, as
    # load_checkpoint reads it.
    (tmp_path / "legacy.pt").replace(tmp_path / TRAINER_FILE)
    assert read_position(tmp_path).step == 3
