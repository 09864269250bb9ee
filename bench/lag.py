"""Record honesty for LAG: does the loss k steps after a growth pick the growth that ends best?

For each setting (seed, growth point) a half-depth model trains up to the growth step; then
every candidate growth to the preset's depth is tried for k steps (LAG's choice: lowest
validation loss after k steps) and also trained to the end of the budget (the truth: lowest
final validation loss). The loss right after growth (k = 0) is the choice LAG argues against.
Prints each setting's table and how often each choice matches the candidate that ends best.

    python bench/lag.py [--preset small] [--steps 400] [--seeds 0,1] [--at 0.25,0.5]
                        [--candidates stack,midas,interpolate,identity] [--k 8]
"""

from __future__ import annotations

import argparse
import time

from growformer.train.commands import load_run_data
from growformer.train.lag import Trial
from growformer.train.run_config import run_spec
from growformer.train.schedule import GrowthEvent, Schedule
from growformer.train.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--at", default="0.25,0.5")
    parser.add_argument("--candidates", default="stack,midas,interpolate,identity")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    candidates = tuple(args.candidates.split(","))
    spec = run_spec(args.preset, train={"steps": args.steps}, data=args.data)
    dataset = load_run_data(spec)
    print(f"data: {dataset.describe()}")
    print(f"preset {args.preset}, {args.steps} steps, k = {args.k}, candidates {candidates}")
    matches = {"k": 0, "0": 0}
    settings = [(int(s), float(a)) for s in args.seeds.split(",") for a in args.at.split(",")]
    for seed, at in settings:
        train = spec.train.replace(seed=seed)
        target = spec.target.replace(vocab_size=dataset.vocab_size)
        step = round(at * train.steps)
        event = GrowthEvent(
            step=step,
            sizes={"n_layers": target.n_layers},
            method="lag",
            candidates=candidates,
            lag_steps=args.k,
        )
        schedule = Schedule("lag", {"n_layers": target.n_layers // 2}, None, (event,))
        trainer = Trainer(target, train, schedule, dataset.train, dataset.val, None, progress=False)
        trainer.start()
        for _ in range(step):
            trainer.step()
        started = time.perf_counter()
        early = [trainer.try_growth(event.candidate(c), args.k, c) for c in candidates]
        final = [trainer.try_growth(event.candidate(c), train.steps - step, c) for c in candidates]
        best = _best(final, "loss_after")
        by_k, by_0 = _best(early, "loss_after"), _best(early, "loss_at_growth")
        matches["k"] += by_k == best
        matches["0"] += by_0 == best
        print(f"\nseed {seed}, growth at step {step} ({time.perf_counter() - started:.0f} s)")
        print(f"| candidate | at growth | after {args.k} steps | final |")
        print("|---|---:|---:|---:|")
        for e, f in zip(early, final, strict=True):
            print(
                f"| {e.name} | {e.loss_at_growth:.4f} | {e.loss_after:.4f} | {f.loss_after:.4f} |"
            )
        print(f"ends best: {best}; LAG (k={args.k}) picks {by_k}; loss at growth picks {by_0}")
    n = len(settings)
    print(
        f"\nchoice matches the candidate that ends best: after {args.k} steps {matches['k']}/{n}, "
        f"at growth {matches['0']}/{n}"
    )


def _best(trials: list[Trial], field: str) -> str:
    return min(trials, key=lambda t: getattr(t, field)).name


if __name__ == "__main__":
    main()
