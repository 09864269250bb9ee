"""Progressive schedules against training from scratch, on the same token budget and batches.

Every schedule ends at the preset's target architecture after the same number of steps of the
same number of tokens (a stage of shorter sequences takes more of them), with the same seed and
so the same data order. For each run the table gives the training time and FLOPs it needs to
reach the scratch run's final validation loss, and the speed-ups: scratch's time (FLOPs) over
that. Runs go one after another in this process; ``--repeats 2`` runs the whole set twice and
reports each repeat, since same-seed runs differ in wall time by a few percent.

    python bench/progressive.py [--preset small] [--steps N]
                                [--schedules scratch,compound,stack,midas,apollo,lag-stack]
                                [--data stdlib:prose] [--out runs/bench]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from growformer.train.commands import load_run_data, run_training
from growformer.train.plot import plot_runs
from growformer.train.report import speedup_table, summarize
from growformer.train.run_config import run_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--schedules", default="scratch,compound,stack,midas,apollo,lag-stack")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    names = args.schedules.split(",")
    if names[0] != "scratch":
        raise SystemExit("--schedules must start with scratch (the baseline)")
    train = {"steps": args.steps} if args.steps else {}
    specs = {
        name: run_spec(args.preset, train=train, schedule=name, data=args.data) for name in names
    }
    first = specs["scratch"]
    dataset = load_run_data(first)
    tokens = first.train.steps * first.train.tokens_per_step
    print(f"data: {dataset.describe()}")
    print(
        f"preset {args.preset}: {first.train.steps} steps x {first.train.tokens_per_step} tokens "
        f"= {tokens:,} tokens ({dataset.train.epochs(tokens):.2f} epochs of the train split)"
    )
    for repeat in range(args.repeats):
        out = Path(args.out) / f"repeat{repeat}"
        for name, spec in specs.items():
            run_training(spec, out / name, dataset=dataset, progress=False)
        summaries = [summarize(out / name) for name in names]
        print(f"\nrepeat {repeat + 1}:")
        print(speedup_table(summaries[0], summaries[1:]))
        print(f"plot: {plot_runs([out / n for n in names], out / 'loss.png')}")


if __name__ == "__main__":
    main()
