"""The training commands of ``growformer``: train, demo, plot, generate."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from growformer.atomic import atomic_write, creation_problem, nesting
from growformer.config import seed_arg
from growformer.data import DEFAULT_TEXT_FIELD, Dataset, load_dataset
from growformer.train.config import PRESETS, TrainConfigError
from growformer.train.generate import sample
from growformer.train.plot import plot_runs
from growformer.train.report import speedup_table, summarize
from growformer.train.run_config import (
    DATA_FILE,
    RUN_FILE,
    RunSpec,
    load_run_dir,
    load_run_file,
    run_spec,
)
from growformer.train.schedule import SCHEDULES, Schedule, schedule_to_dict
from growformer.train.trainer import RunResult, Trainer

TOKENIZER_FILE = "tokenizer.json"
DEMO_SCHEDULES = ("scratch", "compound")
DEMO_PLOT, DEMO_TABLE = "loss.png", "table.md"  # what demo writes beside the runs


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``train``, ``demo``, ``plot`` and ``generate`` on the ``growformer`` parser."""
    train = sub.add_parser("train", help="train a model, growing it on a schedule")
    source = train.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="FILE", help="a TOML run file")
    source.add_argument("--schedule", choices=SCHEDULES, help="a named schedule")
    train.add_argument("--preset", choices=tuple(PRESETS), help="model and training preset")
    train.add_argument("--data", metavar="PATH", help="text, .jsonl or .bin token files")
    train.add_argument(
        "--text-field",
        metavar="NAME",
        help=f"the field of each JSON line that holds its text (default {DEFAULT_TEXT_FIELD!r})",
    )
    train.add_argument("--out", metavar="DIR", help="run folder (default runs/SCHEDULE)")
    train.add_argument("--steps", type=int, metavar="N", help="override the step budget")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace a non-empty run folder")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=_cmd_train)

    demo = sub.add_parser("demo", help="scratch vs compound growth on the built-in corpus")
    demo.add_argument("--out", metavar="DIR", default="runs/demo")
    demo.add_argument("--preset", choices=tuple(PRESETS), default="small")
    demo.add_argument("--steps", type=int, metavar="N", help="override the step budget")
    demo.add_argument("--data", metavar="PATH", help="text, .jsonl or .bin token files")
    demo.add_argument("--overwrite", action="store_true", help="replace non-empty run folders")
    demo.set_defaults(run=_cmd_demo)

    plot = sub.add_parser("plot", help="validation loss vs time and FLOPs, as PNG")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("--out", metavar="FILE", default=None, help="default RUN_DIR/loss.png")
    plot.set_defaults(run=_cmd_plot)

    generate = sub.add_parser("generate", help="sample text from a trained run")
    generate.add_argument("run_dir", metavar="RUN_DIR")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--tokens", type=int, default=100, metavar="N")
    generate.add_argument("--temperature", type=float, default=0.8)
    generate.add_argument("--seed", type=seed_arg, default=0)
    generate.set_defaults(run=_cmd_generate)


def _spec(args: argparse.Namespace) -> tuple[RunSpec, Path]:
    """The run the flags ask for and its folder. ``--resume`` of a folder with a ``run.json``
    continues the recorded run with its recorded budget unless ``--steps`` changes it (a preset
    or config file restated beside it does not); flags that describe a run beside it must
    describe that same run, and what they leave out (the preset's model and training settings,
    the schedule) is the run's own."""
    described = args.config or args.schedule or args.preset or args.data
    described = described or args.text_field is not None
    budget = {"steps": args.steps} if args.steps is not None else {}
    fresh = None if args.out else _described_spec(args, budget)
    out = Path(args.out or f"runs/{fresh.schedule.name}")
    if not (args.resume and (out / RUN_FILE).is_file()):
        return fresh or _described_spec(args, budget), out
    recorded = load_run_dir(out)
    given = _described_spec(args, budget, recorded) if described else None
    if given is not None:
        check_same_run(out, recorded, given)
        recorded = replace(
            recorded, data=given.data, vocab_size=given.vocab_size, text_field=given.text_field
        )
    return replace(recorded, train=recorded.train.replace(**budget)), out


def _described_spec(
    args: argparse.Namespace, train: dict, recorded: RunSpec | None = None
) -> RunSpec:
    """The run the flags describe; beside a ``recorded`` run (a resume), a preset or schedule
    left out is the recorded run's (its model and training settings, its schedule)."""
    if args.config:
        if args.preset or args.data or args.text_field is not None:
            raise TrainConfigError(
                "--preset, --data and --text-field go in the --config file, not beside it"
            )
        return load_run_file(args.config, train_overrides=train)
    sized_by_run = recorded is not None and not args.preset
    model = None
    if sized_by_run:
        model = recorded.target.to_dict()
        train = {**recorded.train.to_dict(), **train}
    spec = run_spec(
        args.preset or "small",
        model=model,
        train=train,
        schedule=args.schedule or "scratch",
        data=args.data,
        text_field=DEFAULT_TEXT_FIELD if args.text_field is None else args.text_field,
    )
    if sized_by_run:
        spec = replace(spec, vocab_size=recorded.vocab_size)
    if recorded is not None and not args.schedule:
        spec = replace(spec, schedule=recorded.schedule)
    return spec


def check_same_run(run_dir: Path, recorded: RunSpec, given: RunSpec) -> None:
    """Raise ``TrainConfigError`` naming what differs when ``given`` is not the run recorded
    in ``run_dir``: another schedule, target model or training setting (``steps`` aside). A
    schedule differs by name, start or events; the events' ``step`` and ``lag_steps`` are left
    out, since a named schedule plans them from the budget and the recorded ones (planned for
    the budget the run started with) are what continues."""
    target = given.target.replace(vocab_size=recorded.target.vocab_size)
    parts = {
        "model": (target.to_dict(), recorded.target.to_dict()),
        "train": (given.train.to_dict(), recorded.train.to_dict()),
        "schedule": (_budget_free(given.schedule), _budget_free(recorded.schedule)),
    }
    differing = []
    for part, (new, old) in parts.items():
        new, old = json.loads(json.dumps(new)), json.loads(json.dumps(old))
        keys = sorted((set(new) | set(old)) - {"steps"})
        differing += [f"{part}.{key}" for key in keys if new.get(key) != old.get(key)]
    if differing:
        raise TrainConfigError(
            f"{run_dir} was trained with other settings ({', '.join(differing)} differ): resume "
            "it with --resume --out alone (its run.json keeps them; --steps may extend it), "
            "or start a new run in another --out"
        )


def _budget_free(schedule: Schedule) -> dict:
    """``schedule_to_dict`` without what a named schedule derives from the step budget."""
    described = schedule_to_dict(schedule)
    described["events"] = [
        {k: v for k, v in event.items() if k not in ("step", "lag_steps")}
        for event in described["events"]
    ]
    return described


def load_run_data(spec: RunSpec) -> Dataset:
    """The data of ``spec``, tokenized and validated for its sequence length and seed."""
    return load_dataset(
        spec.data,
        vocab_size=spec.vocab_size,
        seq_len=spec.train.seq_len,
        seed=spec.train.seed,
        text_field=spec.text_field,
    )


def run_training(
    spec: RunSpec,
    out: str | Path,
    *,
    dataset: Dataset | None = None,
    resume: bool | Path = False,
    overwrite: bool = False,
    progress: bool = True,
) -> RunResult:
    """Train ``spec`` into ``out`` on ``dataset`` (default: ``load_run_data(spec)``); ``out``
    also gets the tokenizer and ``data.json`` (the data's source, tokenizer size, text field and
    fingerprint: a resumed run must see the same tokens). ``resume``: True for ``out``'s latest
    checkpoint, or a checkpoint folder (of this run or another) to continue from. Unless
    resuming ``out`` itself, ``out`` must be new or empty, else ``TrainConfigError`` before
    anything is read or written; ``overwrite`` removes a non-empty ``out`` once the data and
    the run are validated."""
    out = Path(out)
    fresh = resume is not True and int(os.environ.get("RANK", "0")) == 0
    if spec.data is not None and nesting(out, Path(spec.data)):
        raise TrainConfigError(
            f"run folder {out} and data {spec.data} overlap: a data folder's every file is "
            "read as data (the run's own, on resume) and --overwrite would delete data "
            "inside the run folder; choose an --out apart from --data"
        )
    if fresh:
        check_run_dir(out, overwrite)
    dataset = dataset or load_run_data(spec)
    data_record = {
        "source": dataset.source,
        "vocab_size": spec.vocab_size,
        "text_field": spec.text_field,
        "fingerprint": dataset.fingerprint,
    }
    if resume is True:
        check_same_data(out, dataset)
    target = spec.target.replace(vocab_size=dataset.vocab_size)
    trainer = Trainer(
        target,
        spec.train,
        spec.schedule,
        dataset.train,
        dataset.val,
        out,
        resume=resume,
        progress=progress,
    )
    if fresh and out.is_dir() and any(out.iterdir()):
        shutil.rmtree(out)
    if trainer.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / DATA_FILE, (json.dumps(data_record) + "\n").encode())
        if dataset.tokenizer is not None:
            dataset.tokenizer.save(out / TOKENIZER_FILE)
    return trainer.run()


def check_run_dir(out: Path, overwrite: bool = False, *, resumable: bool = True) -> None:
    """A new run must not mix with files already in ``out``: ``TrainConfigError`` unless it is
    new, empty, or ``overwrite`` (the caller removes it). ``resumable``: the command has
    ``--resume``, which the message then offers."""
    problem = creation_problem(out)
    if problem:
        raise TrainConfigError(f"run folder {out}: {problem}")
    if out.exists() and not out.is_dir():
        raise TrainConfigError(f"run folder {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        resume = "--resume to continue its run, " if resumable else ""
        raise TrainConfigError(
            f"run folder {out} is not empty: pass {resume}--overwrite to replace it, "
            "or another --out"
        )


def check_same_data(run_dir: Path, dataset: Dataset) -> None:
    """Raise ``TrainConfigError`` when ``run_dir`` was trained on other tokens than
    ``dataset``'s (its ``data.json`` fingerprint); a run without one passes."""
    path = run_dir / DATA_FILE
    if not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text())
    except (ValueError, RecursionError) as error:
        raise TrainConfigError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(recorded, dict) or not all(
        isinstance(recorded.get(key), str) for key in ("source", "fingerprint")
    ):
        raise TrainConfigError(f"{path} is not a data record: it needs source and fingerprint")
    if recorded["fingerprint"] != dataset.fingerprint:
        raise TrainConfigError(
            f"{run_dir}: the data differs from the run's ({recorded['source']}, fingerprint "
            f"{recorded['fingerprint'][:12]}); use the same --data"
        )


def _cmd_train(args: argparse.Namespace) -> int:
    spec, out = _spec(args)
    result = run_training(
        spec, out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(
        f"{spec.schedule.name}: {result.steps} steps, {result.train_time:.1f} s, "
        f"{result.flops:.3g} FLOPs, final val loss {result.final_val_loss:.4f} → {out}"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    train = {"steps": args.steps} if args.steps is not None else None
    specs = {
        name: run_spec(args.preset, train=train, schedule=name, data=args.data)
        for name in DEMO_SCHEDULES
    }
    if out.exists() and not out.is_dir():
        raise TrainConfigError(f"--out {out} exists and is not a folder")
    for name in DEMO_SCHEDULES:
        check_run_dir(out / name, args.overwrite, resumable=False)
    foreign = sorted(
        p.name for p in out.glob("*") if p.name not in (*DEMO_SCHEDULES, DEMO_PLOT, DEMO_TABLE)
    )
    if foreign:
        raise TrainConfigError(
            f"--out {out} holds other files ({', '.join(foreign[:3])}): choose an empty or a "
            "demo folder"
        )
    if not args.overwrite and any((out / name).exists() for name in (DEMO_PLOT, DEMO_TABLE)):
        raise TrainConfigError(f"--out {out} has a demo's table and plot: pass --overwrite")
    dataset = load_run_data(specs["scratch"])
    summaries = []
    for name, spec in specs.items():
        print(f"== {name} ==")
        run_training(spec, out / name, dataset=dataset, overwrite=args.overwrite)
        summaries.append(summarize(out / name))
    table = speedup_table(summaries[0], summaries[1:])
    plot = plot_runs([out / name for name in DEMO_SCHEDULES], out / DEMO_PLOT)
    atomic_write(out / DEMO_TABLE, (table + "\n").encode())
    print(table)
    print(f"plot: {plot}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    out = args.out or str(Path(args.runs[0]) / "loss.png")
    problem = creation_problem(Path(out), folder=False)
    if problem:
        raise TrainConfigError(f"--out {out}: {problem}")
    print(plot_runs(args.runs, out))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from growformer.data.tokenizer import Tokenizer
    from growformer.train.checkpoint import latest_checkpoint, load_checkpoint

    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise TrainConfigError(f"--temperature must be a finite number ≥ 0, got {args.temperature}")
    if args.tokens < 0:
        raise TrainConfigError(f"--tokens must be ≥ 0, got {args.tokens}")
    run_dir = Path(args.run_dir)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise TrainConfigError(f"{run_dir}: no checkpoint to sample from")
    tokenizer_path = run_dir / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise TrainConfigError(f"{tokenizer_path} is missing: generate needs the run's tokenizer")
    model, _, _ = load_checkpoint(checkpoint)
    tokenizer = Tokenizer.load(tokenizer_path)
    prompt = torch.tensor(tokenizer.encode(args.prompt), dtype=torch.long)
    if prompt.numel() == 0:
        raise TrainConfigError("--prompt must not be empty: sampling continues a prompt")
    tokens = sample(model, prompt, args.tokens, temperature=args.temperature, seed=args.seed)
    print(tokenizer.decode(tokens.tolist()))
    return 0
