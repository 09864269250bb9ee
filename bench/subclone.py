"""Weight subcloning against random init: how much sooner a subcloned child reaches a loss.

A parent is trained from scratch on the default corpus with the trainer; a child is subcloned
from it (importance measured on calibration windows of the train split) and a child of the same
shape is initialized at random; the two children then train side by side on the same batches
with the same optimizer and learning-rate schedule, evaluated on the same validation windows.
The table gives, for a few target losses, the steps and training wall time each child needs to
reach it and the speed-up (random's over subcloned's): the subcloned child's loss at its first
evaluation, the random child's final loss (how much sooner subcloning gets there: the paper's
"4x faster"), and the subcloned child's final loss (whether random gets there at all).

    python bench/subclone.py [--parent-steps 600] [--child-steps 600] [--data stdlib:prose]
                             [--no-rescale] [--seed 0] [--threads 1]

Measured (default run: parent 6 layers, hidden 128, 600 steps of 8 x 128 tokens, val loss 4.34;
child 3 layers, hidden 64, 2 heads, FFN 256, kept layers 0, 1, 5; 600 side-by-side steps): the
subcloned child starts at 5.27 (a random init near ln 2048 = 7.62) and reaches the random child's
final loss 4.8x sooner in steps (5.5x in time) with seed 0, 3.0x (3.1x) with seed 1; without
rescaling 4.0x (start 5.49). Random never reaches the subcloned child's final loss in 600 steps.

Default run: about 5 to 8 minutes on a shared 2-core CPU. It runs torch on one thread: measured on
such a machine, a child's step took 0.15 s on one thread and 3.6 s on two while another
process held a core (OpenMP threads spin-waiting on each other).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from growformer import ModelConfig, Transformer, model_from_state
from growformer.data import load_dataset
from growformer.shrink import measure_importance, subclone
from growformer.train.config import TrainConfig
from growformer.train.lr import lr_at
from growformer.train.schedule import named_schedule
from growformer.train.trainer import Trainer

VOCAB = 2048
SEQ = 128
BATCH = 8
PARENT = ModelConfig(vocab_size=VOCAB, max_seq_len=SEQ, n_layers=6, hidden=128, n_heads=4, ffn=512)
CHILD = {"n_layers": 3, "hidden": 64, "n_heads": 2, "ffn": 256}
CALIB_WINDOWS = 64
EVAL_WINDOWS = 64


@dataclass
class Curve:
    """A child's validation losses at evaluation steps and its cumulative training time."""

    name: str
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def first_reaching(self, loss: float) -> tuple[int, float] | None:
        """(step, seconds) of the first evaluation at or below ``loss``; None if never."""
        for step, value, seconds in zip(self.steps, self.losses, self.times, strict=True):
            if value <= loss:
                return step, seconds
        return None


def adamw(model: nn.Module, train: TrainConfig) -> torch.optim.AdamW:
    """The trainer's optimizer: weight decay on matrices only."""
    groups = [
        {
            "params": [p for p in model.parameters() if p.ndim >= 2],
            "weight_decay": train.weight_decay,
        },
        {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2))


@torch.no_grad()
def val_loss(model: Transformer, data) -> float:
    model.eval()
    total, count = 0.0, 0
    for inputs, targets in data.val.eval_batches(16, SEQ, EVAL_WINDOWS):
        logits = model(inputs)
        total += float(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum"))
        count += targets.numel()
    model.train()
    return total / count


def train_side_by_side(
    children: dict[str, Transformer], data, train: TrainConfig, eval_every: int
) -> dict[str, Curve]:
    """Train every child on the same batches; evaluate all at step 0 and every ``eval_every``."""
    optimizers = {name: adamw(model, train) for name, model in children.items()}
    curves = {name: Curve(name) for name in children}
    elapsed = dict.fromkeys(children, 0.0)
    for name, model in children.items():
        curves[name].steps.append(0)
        curves[name].losses.append(val_loss(model, data))
        curves[name].times.append(0.0)
    print("step     0  " + "  ".join(f"{n} {curves[n].losses[0]:.3f}" for n in children))
    for step in range(train.steps):
        inputs, targets = data.train.batch_at(step, train.batch_size, train.seq_len)
        for name, model in children.items():
            optimizer = optimizers[name]
            started = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, train)
            loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed[name] += time.perf_counter() - started
        done = step + 1
        if done % eval_every == 0 or done == train.steps:
            for name, model in children.items():
                curves[name].steps.append(done)
                curves[name].losses.append(val_loss(model, data))
                curves[name].times.append(elapsed[name])
            losses = "  ".join(f"{n} {curves[n].losses[-1]:.3f}" for n in children)
            print(f"step {done:>5}  {losses}", flush=True)
    return curves


def table(subcloned: Curve, random: Curve) -> str:
    targets = {
        "subcloned at step 0": subcloned.losses[0],
        f"subcloned at step {subcloned.steps[1]}": subcloned.losses[1],
        "random, final": random.losses[-1],
        "subcloned, final": subcloned.losses[-1],
    }
    rows = [
        "| target loss | random: steps (time) | subcloned: steps (time) | speed-up steps (time) |",
        "|---|---|---|---|",
    ]
    for label, loss in targets.items():
        r, s = random.first_reaching(loss), subcloned.first_reaching(loss)
        cell_r = f"{r[0]} ({r[1]:.1f} s)" if r else f"> {random.steps[-1]} (not reached)"
        cell_s = f"{s[0]} ({s[1]:.1f} s)" if s else f"> {subcloned.steps[-1]} (not reached)"
        if r and s and s[0] > 0:
            speed = f"{r[0] / s[0]:.1f}x ({r[1] / s[1]:.1f}x)"
        elif s and s[0] == 0:
            speed = "from the start"
        else:
            speed = f"> {random.steps[-1] / s[0]:.1f}x" if s and s[0] else "-"
        rows.append(f"| {label}: {loss:.3f} | {cell_r} | {cell_s} | {speed} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parent-steps", type=int, default=600)
    parser.add_argument("--child-steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--data", default=None)
    parser.add_argument("--no-rescale", dest="rescale", action="store_false")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_dataset(args.data, vocab_size=VOCAB, seq_len=SEQ, seed=args.seed)
    print(data.describe())
    parent_train = TrainConfig(
        steps=args.parent_steps,
        batch_size=BATCH,
        seq_len=SEQ,
        warmup_steps=50,
        eval_every=args.parent_steps,
        eval_batches=4,
        seed=args.seed,
    )
    config = PARENT.replace(vocab_size=data.vocab_size)
    started = time.perf_counter()
    trainer = Trainer(
        config,
        parent_train,
        named_schedule("scratch", config, parent_train),
        data.train,
        data.val,
        None,
        progress=False,
    )
    trainer.run()
    parent = trainer.model.cpu().eval()
    print(
        f"parent: {parent.num_parameters():,} parameters, {args.parent_steps} steps in "
        f"{time.perf_counter() - started:.0f} s, val loss {val_loss(parent, data):.3f}"
    )

    started = time.perf_counter()
    batches = [x for x, _ in data.train.eval_batches(16, SEQ, CALIB_WINDOWS)]
    state = parent.state_dict()
    importance = measure_importance(parent.config, state, batches)
    child = subclone(parent.config, state, CHILD, importance, rescale=args.rescale)
    print(f"subcloning: {time.perf_counter() - started:.1f} s")
    print(child.report.format())
    subcloned = model_from_state(child.config, {n: t.clone() for n, t in child.state.items()})
    torch.manual_seed(args.seed)
    random = Transformer(child.config)
    print(f"child: {random.num_parameters():,} parameters")

    child_train = parent_train.replace(steps=args.child_steps, warmup_steps=30)
    curves = train_side_by_side(
        {"subcloned": subcloned, "random": random}, data, child_train, args.eval_every
    )
    print()
    print(table(curves["subcloned"], curves["random"]))
    target = curves["random"].losses[-1]
    reached = curves["subcloned"].first_reaching(target)
    if reached is None:
        print("\nsubcloned child never reaches the random child's final loss")
    elif reached[0] == 0:
        print("\nsubcloned child starts below the random child's final loss")
    else:
        ratio = args.child_steps / reached[0]
        print(
            f"\nsubcloned child reaches the random child's final loss {ratio:.1f}x sooner (steps)"
        )


if __name__ == "__main__":
    main()
