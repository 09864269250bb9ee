"""Run under ``torchrun --nproc_per_node 2`` by ``test_integration_transformers``: a transformers
Trainer on two CPU processes (gloo) grows a tiny Llama at step 4; each rank saves its final
weights, its losses and the loss of its growth-step batch before and after the growth."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from growformer.integrations.transformers import GrowthCallback
from growth_callback_helpers import (
    GROW_AT,
    ProbeTrainer,
    TokenRows,
    arguments,
    logged_losses,
    schedule,
)
from hf_tiny import llama


def main(out: Path) -> None:
    torch.set_num_threads(1)
    model = llama()
    args = arguments(
        out / "run",
        max_steps=8,
        per_device_train_batch_size=4,
        ddp_backend="gloo",
        ddp_find_unused_parameters=False,
    )
    trainer = ProbeTrainer(model=model, args=args, train_dataset=TokenRows())
    GrowthCallback(schedule()).attach(trainer)
    trainer.train()
    record = {
        "state": {n: t.detach().clone() for n, t in model.state_dict().items()},
        "before": trainer.before[GROW_AT],
        "after": trainer.after[GROW_AT],
        "losses": logged_losses(trainer),
    }
    torch.save(record, out / f"rank{os.environ['RANK']}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
