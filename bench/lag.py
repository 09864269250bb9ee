"""Record honesty for LAG: does the loss k steps after a growth pick the growth that ends best?

For each setting (seed, growth point) a half-depth model trains up to the growth step; then
every candidate growth to the preset's depth is tried for k steps, for each k given (LAG's
choice: lowest validation loss after k steps), and also trained to the end of the budget (the
truth: lowest final validation loss). The loss right after growth (k = 0) is the choice LAG
argues against. Prints each setting's table and how often each choice matches the candidate
that ends best.

    python bench/lag.py [--preset small] [--steps 400] [--seeds 0,1] [--at 0.25,0.5]
                        [--candidates stack,midas,interpolate,identity] [--k 8,32]
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
    parser.add_argument("--k", default="8,32", help="comma-separated lag lengths")
    parser.add_argument("--data", default=None)
    args = parser.parse_args()
    candidates = tuple(args.candidates.split(","))
    ks = [int(k) for k in args.k.split(",")]
    spec = run_spec(args.preset, train={"steps": args.steps}, data=args.data)
    dataset = load_run_data(spec)
    print(f"data: {dataset.describe()}")
    print(f"preset {args.preset}, {args.steps} steps, k = {ks}, candidates {candidates}")
    matches = dict.fromkeys([0, *ks], 0)
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
            lag_steps=ks[0],
        )
        schedule = Schedule("lag", {"n_layers": target.n_layers // 2}, None, (event,))
        trainer = Trainer(target, train, schedule, dataset.train, dataset.val, None, progress=False)
        trainer.start()
        for _ in range(step):
            trainer.step()
        started = time.perf_counter()
        early = {k: trainer.try_candidates(event, k) for k in ks}
        final = trainer.try_candidates(event, train.steps - step)
        best = _best(final, "loss_after")
        picks = {0: _best(early[ks[0]], "loss_at_growth")}
        picks.update({k: _best(early[k], "loss_after") for k in ks})
        for k, pick in picks.items():
            matches[k] += pick == best
        print(f"\nseed {seed}, growth at step {step} ({time.perf_counter() - started:.0f} s)")
        print("| candidate | at growth | " + " | ".join(f"after {k}" for k in ks) + " | final |")
        print("|---|---:|" + "---:|" * len(ks) + "---:|")
        for i, f in enumerate(final):
            at_growth = early[ks[0]][i].loss_at_growth
            after = " | ".join(f"{early[k][i].loss_after:.4f}" for k in ks)
            print(f"| {f.name} | {at_growth:.4f} | {after} | {f.loss_after:.4f} |")
        print(f"ends best: {best}; picks: " + ", ".join(f"k={k}: {p}" for k, p in picks.items()))
    n = len(settings)
    print("\nchoice matches the candidate that ends best:")
    for k, count in matches.items():
        print(f"  {'at growth (k=0)' if k == 0 else f'after k={k} steps'}: {count}/{n}")


def _best(trials: list[Trial], field: str) -> str:
    return min(trials, key=lambda t: getattr(t, field)).name


if __name__ == "__main__":
    main()
