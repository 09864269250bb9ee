"""``growformer select``: LAG from a checkpoint. Try each candidate depth growth for a few
steps on the run's own batches, print the table, and optionally go on training with the one
that has the lowest validation loss after those steps."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from growformer.atomic import atomic_write
from growformer.config import SIZE_FIELDS, ModelConfig
from growformer.train.checkpoint import CHECKPOINTS, latest_checkpoint, read_position
from growformer.train.commands import (
    check_same_data,
    load_run_data,
    run_training,
)
from growformer.train.config import TrainConfigError
from growformer.train.lag import Trial, choose, trials_table
from growformer.train.run_config import RunSpec, load_run_dir
from growformer.train.schedule import LAG_CANDIDATES, GrowthEvent, Schedule
from growformer.train.trainer import Trainer

SELECT_REPORT = "select.md"


def add_select_command(sub: argparse._SubParsersAction) -> None:
    """Register ``select`` on the ``growformer`` parser."""
    select = sub.add_parser(
        "select", help="LAG: try candidate depth growths from a checkpoint, keep the best"
    )
    select.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint or a run folder")
    select.add_argument(
        "--candidates",
        default="stack,midas,interpolate,identity",
        help=f"comma-separated, from: {', '.join(LAG_CANDIDATES)}",
    )
    select.add_argument("--steps", type=int, default=10, metavar="K", help="steps per candidate")
    select.add_argument(
        "--layers",
        type=int,
        metavar="N",
        help="depth after growth (default: that of the run's growth at the checkpoint's step, "
        "else twice the current)",
    )
    select.add_argument(
        "--continue",
        dest="continue_",
        action="store_true",
        help="then train the chosen growth to the end of the run's steps",
    )
    select.add_argument(
        "--out", metavar="DIR", help="folder of the continued run (default RUN_DIR-CANDIDATE)"
    )
    select.set_defaults(run=_cmd_select)


def branch_schedule(
    schedule: Schedule, target: ModelConfig, event: GrowthEvent
) -> tuple[Schedule, ModelConfig]:
    """``schedule`` with ``event`` in place of any event at its step, and the target the new
    schedule ends at (the old target with every event's sizes applied in turn). Sizes of later
    events that ``event`` already reached are dropped, and so are later events left with
    nothing to change. A size the start leaves to the target, which the branch's target
    changes, is written into the start, so the branch starts at the same model."""
    events = sorted(
        [e for e in schedule.events if e.step != event.step] + [event], key=lambda e: e.step
    )
    final = start = target.replace(**dict(schedule.start))
    kept = []
    for e in events:
        if e.step > event.step:
            sizes = {k: v for k, v in e.sizes.items() if getattr(final, k) != v}
            if not sizes and e.seq_len is None:
                continue
            e = dataclasses.replace(e, sizes=sizes)
        final = final.replace(**dict(e.sizes))
        kept.append(e)
    changed = {
        k: getattr(start, k)
        for k in SIZE_FIELDS
        if k not in schedule.start and getattr(start, k) != getattr(final, k)
    }
    branched = dataclasses.replace(
        schedule,
        name=f"{schedule.name}+lag",
        start={**schedule.start, **changed},
        events=tuple(kept),
    )
    return branched, final


def _cmd_select(args: argparse.Namespace) -> int:
    candidates = tuple(c for c in args.candidates.split(",") if c)
    if args.steps < 1:
        raise TrainConfigError(f"--steps must be an integer ≥ 1, got {args.steps}")
    if args.out and not args.continue_:
        raise TrainConfigError("--out names the continued run: it needs --continue")
    if args.out and Path(args.out).exists() and any(Path(args.out).iterdir()):
        raise TrainConfigError(f"--out {args.out} is not empty: choose another folder")
    checkpoint = latest_checkpoint(args.checkpoint)
    if checkpoint is None:
        raise TrainConfigError(f"{args.checkpoint}: not a checkpoint or a run with checkpoints")
    if checkpoint.parent.name != CHECKPOINTS:
        raise TrainConfigError(f"{checkpoint}: select needs a checkpoint inside its run folder")
    run_dir = checkpoint.parent.parent
    spec = load_run_dir(run_dir)
    position = read_position(checkpoint)
    if position.step >= spec.train.steps:
        raise TrainConfigError(
            f"{checkpoint} is at the end of the run (step {position.step} of "
            f"{spec.train.steps}): nothing is left to train after a growth"
        )
    event = _lag_event(spec, position.stage, position.step, candidates, args.steps, args.layers)
    schedule, target = branch_schedule(spec.schedule, spec.target, event)
    schedule.plan(target, spec.train)
    dataset = load_run_data(spec)
    check_same_data(run_dir, dataset)
    trainer = Trainer(
        target.replace(vocab_size=dataset.vocab_size),
        spec.train,
        schedule,
        dataset.train,
        dataset.val,
        None,
        resume=checkpoint,
        progress=False,
    )
    trainer.start()
    trials = trainer.try_candidates(event)
    report = _report(checkpoint, position.step, trials)
    print(report)
    if not args.continue_:
        return 0
    chosen = choose(trials)
    out = Path(args.out or f"{run_dir}-{chosen.name}")
    schedule, target = branch_schedule(spec.schedule, spec.target, chosen.event)
    branch = dataclasses.replace(spec, target=target, schedule=schedule)
    result = run_training(branch, out, dataset=dataset, resume=checkpoint)
    atomic_write(out / SELECT_REPORT, (report + "\n").encode())
    print(
        f"{chosen.name}: {result.steps} steps, final val loss {result.final_val_loss:.4f} → {out}"
    )
    return 0


def _lag_event(
    spec: RunSpec,
    stage_index: int,
    step: int,
    candidates: tuple[str, ...],
    lag_steps: int,
    layers: int | None,
) -> GrowthEvent:
    """The ``lag`` event at ``step``: the run's own event there (its sizes, sequence length and
    policies) when it has one, with the depth ``layers`` (default: that event's depth if it
    grows depth, else twice the current)."""
    stages = spec.schedule.plan(spec.target, spec.train)
    current = stages[stage_index].config
    scheduled = next((s.event for s in stages if s.start_step == step and s.event), None)
    if layers is None:
        grows = scheduled is not None and scheduled.sizes.get("n_layers", 0) > current.n_layers
        layers = scheduled.sizes["n_layers"] if grows else 2 * current.n_layers
    if layers <= current.n_layers:
        raise TrainConfigError(
            f"--layers must be more than the checkpoint's {current.n_layers} layers, got {layers}"
        )
    base = scheduled or GrowthEvent(step=step)
    return dataclasses.replace(
        base,
        sizes={**base.sizes, "n_layers": layers},
        method="lag",
        candidates=candidates,
        lag_steps=lag_steps,
    )


def _report(checkpoint: Path, step: int, trials: list[Trial]) -> str:
    chosen = choose(trials)
    return (
        f"LAG from {checkpoint} (step {step}): {len(trials)} candidates, "
        f"{len(chosen.train_losses)} steps each\n\n{trials_table(trials)}\n\nchosen: {chosen.name}"
    )
