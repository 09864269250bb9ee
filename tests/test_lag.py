"""LAG: candidate growths tried on the run's batches, the choice, lag-stack, and select."""

from __future__ import annotations

import math

import pytest
import torch

from growformer.config import ModelConfig
from growformer.expand import GrowthError, midas_order
from growformer.train.config import TrainConfig, TrainConfigError
from growformer.train.flops import train_flops_per_token
from growformer.train.lag import Trial, choose, trials_table
from growformer.train.metrics import read_events, read_metrics
from growformer.train.schedule import (
    LAG_CANDIDATES,
    GrowthEvent,
    Schedule,
    named_schedule,
    schedule_from_dict,
    schedule_to_dict,
)
from growformer.train.select import branch_schedule
from growformer.train.trainer import Trainer
from train_data import MarkovTokens

TARGET = ModelConfig(vocab_size=64, n_layers=4, hidden=32, n_heads=4, ffn=128, max_seq_len=32)
TRAIN = TrainConfig(
    steps=12, batch_size=4, seq_len=32, warmup_steps=2, eval_every=6, eval_batches=1, log_every=1
)
TRAIN_DATA, VAL_DATA = MarkovTokens(seed=0), MarkovTokens(seed=1)
CANDIDATES = ("stack", "midas", "interpolate", "identity")


def trainer(tmp_path, schedule, name="run", target=TARGET, **kwargs) -> Trainer:
    run_dir = None if name is None else tmp_path / name
    return Trainer(target, TRAIN, schedule, TRAIN_DATA, VAL_DATA, run_dir, progress=False, **kwargs)


def lag_event(step=4, candidates=CANDIDATES, lag_steps=3) -> GrowthEvent:
    return GrowthEvent(
        step=step,
        sizes={"n_layers": 4},
        method="lag",
        candidates=candidates,
        lag_steps=lag_steps,
    )


def started_at(tmp_path, step: int) -> Trainer:
    """A 2-layer run trained ``step`` steps, its next step the lag event's."""
    t = trainer(tmp_path, Schedule("lag", {"n_layers": 2}, None, (lag_event(step),)), name=None)
    t.start()
    for _ in range(step):
        t.step()
    return t


def test_midas_block_positions():
    assert midas_order(4, 6, 2, "first") == [0, 1, 0, 1, 2, 3]
    assert midas_order(4, 6, 2, "middle") == [0, 1, 2, 1, 2, 3]
    assert midas_order(4, 6, 2, "last") == [0, 1, 2, 3, 2, 3]
    assert midas_order(2, 4, 1, "last") == [0, 1, 1, 1]
    with pytest.raises(GrowthError, match="block position must be one of"):
        midas_order(4, 6, 2, "top")


def test_a_trial_leaves_the_run_untouched_and_costs_its_steps(tmp_path):
    t = started_at(tmp_path, 4)
    params = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    moments = [s["exp_avg"].clone() for s in t.optimizer.state.values()]
    step, flops = t.position.step, t.position.flops
    trial = t.try_growth(lag_event().candidate("midas"), 3, "midas")
    assert trial.config.n_layers == 4 and len(trial.train_losses) == 3
    assert t.model.config.n_layers == 2 and t.position.step == step
    assert all(torch.equal(p, params[n]) for n, p in t.model.named_parameters())
    assert all(
        torch.equal(s["exp_avg"], m)
        for s, m in zip(t.optimizer.state.values(), moments, strict=True)
    )
    per_step = TRAIN.tokens_per_step * train_flops_per_token(trial.config, TRAIN.seq_len)
    assert t.position.flops - flops == pytest.approx(3 * per_step)


def test_a_trial_is_what_the_run_with_that_growth_computes(tmp_path):
    """The trial's losses equal, bit for bit, a run that applies the candidate at that step."""
    trial = started_at(tmp_path, 4).try_growth(lag_event().candidate("stack"), 3, "stack")
    event = lag_event().candidate("stack")
    direct = trainer(tmp_path, Schedule("stack", {"n_layers": 2}, None, (event,)), name=None)
    direct.start()
    losses = [direct.step() for _ in range(7)]
    assert tuple(losses[4:]) == trial.train_losses
    assert direct.evaluate() == trial.loss_after


def test_identity_candidate_keeps_the_loss_at_growth(tmp_path):
    t = started_at(tmp_path, 4)
    before = t.evaluate()
    trial = t.try_growth(lag_event().candidate("identity"), 1, "identity")
    assert trial.loss_at_growth == pytest.approx(before, abs=1e-5)


def test_a_lag_event_applies_the_candidate_with_the_lowest_loss_after_k_steps(tmp_path):
    t = trainer(tmp_path, Schedule("lag", {"n_layers": 2}, None, (lag_event(),)))
    result = t.run()
    (event,) = read_events(result.run_dir)
    trials = event["lag"]["trials"]
    assert [r["name"] for r in trials] == list(CANDIDATES)
    best = min(trials, key=lambda r: r["loss_after"])
    assert event["lag"]["chosen"] == best["name"]
    assert event["method"] == LAG_CANDIDATES[best["name"]]["method"]
    assert all(r["steps"] == 3 for r in trials)
    assert result.config.n_layers == 4 and math.isfinite(result.final_val_loss)


def test_lag_stack_pays_for_its_trials(tmp_path):
    """lag-stack's FLOPs are midas's (same growth points and sizes) plus every trial's steps."""
    lag = trainer(tmp_path, named_schedule("lag-stack", TARGET, TRAIN), "lag").run()
    midas = trainer(tmp_path, named_schedule("midas", TARGET, TRAIN), "midas").run()
    events = read_events(lag.run_dir)
    assert len(events) == 2 and all(len(e["lag"]["trials"]) == 3 for e in events)
    trial_flops = sum(
        3
        * 2
        * TRAIN.tokens_per_step
        * train_flops_per_token(
            TARGET.replace(n_layers=e["config_after"]["n_layers"]), TRAIN.seq_len
        )
        for e in events
    )
    assert lag.flops == pytest.approx(midas.flops + trial_flops)


def test_resume_across_a_lag_event_reproduces_the_run(tmp_path):
    schedule = Schedule("lag", {"n_layers": 2}, None, (lag_event(step=5),))
    full = trainer(tmp_path, schedule, "full").run()
    cut = trainer(tmp_path, schedule, "cut")
    cut.start()
    for _ in range(4):
        cut.step()
    cut.save()
    resumed = trainer(tmp_path, schedule, "cut", resume=True).run()
    assert [r["loss"] for r in read_metrics(full.run_dir)] == [
        r["loss"] for r in read_metrics(resumed.run_dir)
    ]
    assert read_events(full.run_dir) == read_events(resumed.run_dir)


def test_lag_events_round_trip_through_run_json():
    schedule = named_schedule("lag-stack", TARGET, TRAIN, candidates=("midas", "stack"))
    assert schedule_from_dict(schedule_to_dict(schedule)) == schedule


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"method": "lag", "candidates": ("stack",), "lag_steps": 2}, "at least two distinct"),
        ({"method": "lag", "candidates": ("stack", "bogus"), "lag_steps": 2}, "unknown candi"),
        ({"method": "lag", "candidates": ("stack", "midas"), "lag_steps": 0}, "lag_steps ≥ 1"),
        ({"method": "stack", "candidates": ("stack", "midas")}, "need method = 'lag'"),
        ({"method": "midas", "block_at": "top"}, "block_at must be one of"),
    ],
)
def test_bad_lag_events_are_rejected(fields, message):
    with pytest.raises(TrainConfigError, match=message):
        GrowthEvent(step=3, sizes={"n_layers": 4}, **fields)


def test_a_lag_event_must_grow_depth_and_its_candidates_must_reach_it(tmp_path):
    width_only = GrowthEvent(
        step=3, sizes={"ffn": 128}, method="lag", candidates=("stack", "midas"), lag_steps=2
    )
    with pytest.raises(TrainConfigError, match="n_layers must grow"):
        Schedule("w", {"ffn": 64}, None, (width_only,)).plan(TARGET, TRAIN)
    to_three = GrowthEvent(
        step=3, sizes={"n_layers": 3}, method="lag", candidates=("midas", "stack"), lag_steps=2
    )
    with pytest.raises(TrainConfigError, match="stack: n_layers: stacking 2 layers"):
        Schedule("s", {"n_layers": 2}, None, (to_three,)).plan(TARGET.replace(n_layers=3), TRAIN)


def test_a_branch_before_the_runs_growth_drops_what_the_lag_already_grew():
    """LAG at step 2 to the depth the run's own growth (step 5) reaches: that growth is left
    with nothing to do and goes; a later event's other sizes stay."""
    start = {"n_layers": 1, "ffn": 128}
    later = GrowthEvent(step=5, sizes={"n_layers": 2, "ffn": 256})
    schedule = Schedule("mine", start, None, (later,))
    lag = GrowthEvent(
        step=2,
        sizes={"n_layers": 2},
        method="lag",
        candidates=("stack", "identity"),
        lag_steps=1,
    )
    branched, target = branch_schedule(schedule, TARGET.replace(n_layers=2, ffn=256), lag)
    assert [(e.step, dict(e.sizes)) for e in branched.events] == [
        (2, {"n_layers": 2}),
        (5, {"ffn": 256}),
    ]
    assert (target.n_layers, target.ffn) == (2, 256)
    branched.plan(target, TRAIN)
    depth_only = Schedule(
        "mine", {"n_layers": 1}, None, (GrowthEvent(step=5, sizes={"n_layers": 2}),)
    )
    branched, _ = branch_schedule(depth_only, TARGET.replace(n_layers=2), lag)
    assert [e.step for e in branched.events] == [2]
    # A run that starts at its target (scratch) branches into one that grows past it: the
    # depth it started at goes into the branch's start.
    scratch = Schedule("scratch")
    branched, target = branch_schedule(scratch, TARGET.replace(n_layers=1), lag)
    assert dict(branched.start) == {"n_layers": 1} and target.n_layers == 2
    branched.plan(target, TRAIN)


def test_choose_and_the_table():
    event = lag_event().candidate("stack")
    trials = [
        Trial("a", event, TARGET, 2.0, 1.5, (1.9, 1.6)),
        Trial("b", event, TARGET, 1.0, 1.7, (1.2, 1.8)),
    ]
    assert choose(trials).name == "a"
    table = trials_table(trials)
    assert "after 2 steps" in table
    row_a = next(line for line in table.splitlines() if line.startswith("| a "))
    assert row_a.endswith("✓ |") and "| 2 |" in row_a
    with pytest.raises(ValueError, match="at least one trial"):
        choose([])


def test_choose_skips_diverged_trials():
    event = lag_event().candidate("stack")
    diverged = Trial("nan", event, TARGET, 2.0, float("nan"), (2.0, float("nan")))
    infinite = Trial("inf", event, TARGET, 2.0, float("inf"), (2.0, float("inf")))
    finite = Trial("ok", event, TARGET, 2.0, 3.0, (2.5, 3.0))
    assert choose([diverged, infinite, finite]).name == "ok"
    assert choose([diverged, infinite]).name == "nan"  # all diverged: the first
