"""Shared pieces of the growth-callback tests: token rows, a transformers Trainer that records
the loss of a growth step's batch before and after the growth, and the schedules grown by."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainingArguments

from growformer.expand import GrowthOptions
from growformer.train.schedule import GrowthEvent, Schedule
from hf_tiny import SEQ, VOCAB
from train_data import MarkovTokens

GROW_AT = 4
# Every width field and the depth of hf_tiny.llama(): hidden 32, 4 heads in 2 kv groups of
# head dim 8, FFN 48, 2 layers.
LLAMA_START = {"n_layers": 2, "hidden": 32, "n_heads": 4, "n_kv_heads": 2, "ffn": 48}
LLAMA_GROWN = {"n_layers": 3, "hidden": 48, "n_heads": 6, "n_kv_heads": 3, "ffn": 64}


def schedule(
    start: dict[str, int] = LLAMA_START,
    grown: dict[str, int] = LLAMA_GROWN,
    step: int = GROW_AT,
    **event: Any,
) -> Schedule:
    """One exact growth from ``start`` to ``grown`` before step ``step``; new layers are
    copies of their neighbours inserted in the middle (with W_O and down zeroed)."""
    options = GrowthOptions(layer_init="copy", where="middle", seed=3)
    return Schedule(
        "test", start, None, (GrowthEvent(step=step, sizes=grown, options=options, **event),)
    )


class TokenRows(torch.utils.data.Dataset):
    """``count`` rows of ``length`` tokens of a learnable Markov stream, as causal-LM examples
    (``labels`` = ``input_ids``; the model shifts them)."""

    def __init__(self, count: int = 256, length: int = SEQ, seed: int = 0) -> None:
        tokens = MarkovTokens(VOCAB, length=count * length + 1, seed=seed).tokens
        self.rows = tokens[: count * length].view(count, length)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"input_ids": self.rows[index], "labels": self.rows[index]}


def arguments(out: Path, **changes: Any) -> TrainingArguments:
    """CPU, no reporting, no saving, a loss logged every step."""
    settings: dict[str, Any] = {
        "output_dir": str(out),
        "max_steps": 12,
        "per_device_train_batch_size": 8,
        "learning_rate": 3e-3,
        "warmup_steps": 2,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
        **changes,
    }
    return TrainingArguments(**settings)


@torch.no_grad()
def eval_loss(model: nn.Module, batch: dict[str, Tensor]) -> float:
    """The loss of ``batch`` in eval mode (the mode is restored)."""
    training = model.training
    model.eval()
    loss = float(model(**batch).loss)
    model.train(training)
    return loss


class ProbeTrainer(Trainer):
    """A Trainer that records, for each step in ``probe_steps``, the loss of the step's first
    batch before the step's callbacks run (``before``: the batch is fetched first) and when
    its training step begins (``after``)."""

    probe_steps: frozenset[int] = frozenset({GROW_AT})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.before: dict[int, float] = {}
        self.after: dict[int, float] = {}

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.state.global_step in self.probe_steps and batches:
            self.before[self.state.global_step] = eval_loss(self.model, batches[0])
        return batches, items

    def training_step(self, model, inputs, num_items_in_batch=None):
        step = self.state.global_step
        if step in self.probe_steps and step not in self.after:
            self.after[step] = eval_loss(self.model, inputs)
        return super().training_step(model, inputs, num_items_in_batch)


def logged_losses(trainer: Trainer) -> list[float]:
    """The training loss of every step, from the Trainer's log history."""
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
