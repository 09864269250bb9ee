"""The Lightning growth callback: a growformer Transformer and a transformers Llama grown exactly
inside a LightningModule on one CPU process, checkpoints resumed, misuse refused before any
step."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from growformer import ModelConfig, Transformer
from growformer.integrations.lightning import GrowthCallback, GrowthCallbackError
from growformer.train.schedule import Schedule
from growth_callback_helpers import GROW_AT, TokenRows, eval_loss, schedule
from hf_tiny import llama
from train_data import MarkovTokens

START = ModelConfig(vocab_size=64, max_seq_len=16, n_layers=2, hidden=32, n_heads=4, ffn=48)
GROWN = {"n_layers": 3, "hidden": 48, "n_heads": 6, "n_kv_heads": 6, "ffn": 64}
STEPS_PER_EPOCH = 3


def transformer_schedule(**event: Any) -> Schedule:
    start = {"n_layers": 2, "hidden": 32, "n_heads": 4, "n_kv_heads": 4, "ffn": 48}
    return schedule(start, GROWN, **event)


class LitTransformer(pl.LightningModule):
    """A growformer Transformer trained on (inputs, targets) batches with AdamW and a LambdaLR
    warmup stepped every step; ``extra`` adds a parameter outside the model to the optimizer."""

    def __init__(self, model: nn.Module, extra: bool = False) -> None:
        super().__init__()
        self.model = model.train()
        self.extra = nn.Parameter(torch.zeros(2)) if extra else None
        self.losses: list[float] = []

    def loss(self, batch: Any) -> torch.Tensor:
        inputs, targets = batch
        return F.cross_entropy(self.model(inputs).flatten(0, 1), targets.flatten())

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=3e-3)
        warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 2))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}


class LitCausalLM(LitTransformer):
    """A transformers causal LM trained on its own ``labels`` loss."""

    def loss(self, batch: Any) -> torch.Tensor:
        return self.model(**batch).loss


class Probe(pl.Callback):
    """Records, at step ``GROW_AT``, the loss of the step's batch and the learning rate."""

    def __init__(self) -> None:
        self.loss: float | None = None
        self.lr: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lr.append(trainer.optimizers[0].param_groups[0]["lr"])
        if trainer.global_step == GROW_AT:
            model = pl_module.model
            if isinstance(model, Transformer):
                training = model.training
                model.eval()
                with torch.no_grad():
                    self.loss = float(pl_module.loss(batch))
                model.train(training)
            else:
                self.loss = eval_loss(model, batch)


def token_batches() -> DataLoader:
    """``STEPS_PER_EPOCH`` fixed batches of 8 (inputs, targets) rows, in order."""
    data = MarkovTokens(64, length=5000)
    inputs, targets = data.batch_at(0, 8 * STEPS_PER_EPOCH, 16)
    return DataLoader(TensorDataset(inputs, targets), batch_size=8)


def causal_batches() -> DataLoader:
    return DataLoader(
        torch.utils.data.Subset(TokenRows(), range(8 * STEPS_PER_EPOCH)), batch_size=8
    )


def trainer(*callbacks: pl.Callback, steps: int = 9, **changes: Any) -> pl.Trainer:
    settings: dict[str, Any] = {
        "max_steps": steps,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **changes,
    }
    return pl.Trainer(callbacks=list(callbacks), **settings)


def grow(
    module: LitTransformer, growth: Schedule, data: DataLoader
) -> tuple[Probe, Probe, GrowthCallback]:
    before, after, callback = Probe(), Probe(), GrowthCallback(growth)
    trainer(before, callback, after).fit(module, data)
    return before, after, callback


def test_a_growformer_transformer_grows_exactly_and_trains_on():
    torch.manual_seed(0)
    module = LitTransformer(Transformer(START))
    before, after, callback = grow(module, transformer_schedule(), token_batches())
    assert after.loss == pytest.approx(before.loss, abs=1e-5)
    c = module.model.config
    assert (c.n_layers, c.hidden, c.n_heads, c.ffn) == (3, 48, 6, 64)
    assert len(module.losses) == 9 and all(map(math.isfinite, module.losses))
    assert module.losses[-1] < module.losses[GROW_AT] < module.losses[0]
    assert callback.events[0]["step"] == GROW_AT and callback.config == c
    optimizer = module.trainer.optimizers[0]
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(p) for p in module.parameters()
    }


def test_a_transformers_llama_grows_exactly_inside_lightning():
    module = LitCausalLM(llama())
    before, after, _ = grow(module, schedule(), causal_batches())
    assert after.loss == pytest.approx(before.loss, abs=1e-5)
    assert module.model.config.num_hidden_layers == 3 and module.model.config.hidden_size == 48
    assert module.losses[-1] < module.losses[0]


def test_rewarm_follows_the_lambda_scheduler():
    torch.manual_seed(0)
    plain, _, _ = grow(LitTransformer(Transformer(START)), transformer_schedule(), token_batches())
    module = LitTransformer(Transformer(START))
    _, warm, _ = grow(module, transformer_schedule(rewarm_steps=2), token_batches())
    ratio = [w / p for w, p in zip(warm.lr, plain.lr, strict=True)]
    assert ratio == pytest.approx([1, 1, 1, 1, 0.5, 1, 1, 1, 1])


@pytest.mark.parametrize("saved_at", [3, 6], ids=["before-growth", "after-growth"])
def test_resume_from_a_checkpoint_continues_at_the_grown_size(tmp_path: Path, saved_at: int):
    torch.manual_seed(0)
    start_weights = Transformer(START).state_dict()
    # One batch, so the data of a step does not depend on how Lightning restarts an epoch.
    inputs, targets = next(iter(token_batches()))
    one_batch = DataLoader(TensorDataset(inputs, targets), batch_size=8)

    def run(out: Path, ckpt_path: Path | None = None) -> LitTransformer:
        model = Transformer(START)
        model.load_state_dict(start_weights)
        module = LitTransformer(model)
        saving = pl.callbacks.ModelCheckpoint(out, every_n_train_steps=saved_at, save_top_k=-1)
        fit = trainer(GrowthCallback(transformer_schedule()), saving, enable_checkpointing=True)
        fit.fit(module, one_batch, ckpt_path=ckpt_path)
        return module

    whole = run(tmp_path / "whole")
    (checkpoint,) = (tmp_path / "whole").glob(f"*-step={saved_at}.ckpt")
    resumed = run(tmp_path / "resumed", checkpoint)
    assert resumed.model.config == whole.model.config
    assert resumed.losses == pytest.approx(whole.losses[saved_at:], abs=1e-6)
    for (name, a), b in zip(
        whole.model.named_parameters(), resumed.model.parameters(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name


# -- misuse: refused when training begins, before any step ------------------------------------


def refused(module: LitTransformer, growth: Schedule, match: str, data=None) -> None:
    weights = {n: p.detach().clone() for n, p in module.named_parameters()}
    fit = trainer(GrowthCallback(growth))
    with pytest.raises(GrowthCallbackError, match=match):
        fit.fit(module, data or token_batches())
    assert fit.global_step == 0 and not module.losses
    assert all(torch.equal(p, weights[n]) for n, p in module.named_parameters())


def test_an_unsupported_model_is_refused():
    refused(LitTransformer(nn.Linear(4, 4)), transformer_schedule(), "cannot grow a Linear")


def test_a_schedule_for_another_start_size_is_refused():
    module = LitTransformer(Transformer(START.replace(ffn=32)))
    refused(module, transformer_schedule(), r"start size: ffn=32 \(expected 48\)")


def test_shorter_sequences_for_a_growformer_transformer_are_refused():
    start = {"n_layers": 2, "hidden": 32, "n_heads": 4, "n_kv_heads": 4, "ffn": 48}
    short = Schedule("short", start, 8, schedule(start, GROWN, seq_len=16).events)
    refused(LitTransformer(Transformer(START)), short, "shorter sequences.*transformers model")


def test_an_optimizer_with_a_parameter_outside_the_model_is_refused():
    module = LitTransformer(Transformer(START), extra=True)
    refused(module, transformer_schedule(), "param group 0 holds 1 tensor.*not parameters")


def test_two_optimizers_are_refused():
    class TwoOptimizers(LitTransformer):
        def __init__(self, model: nn.Module) -> None:
            super().__init__(model)
            self.automatic_optimization = False

        def configure_optimizers(self) -> Any:
            half = len(list(self.model.parameters())) // 2
            params = list(self.model.parameters())
            return torch.optim.AdamW(params[:half]), torch.optim.AdamW(params[half:])

    refused(TwoOptimizers(Transformer(START)), transformer_schedule(), "has 2 optimizers")
