"""The training loop: AdamW, warmup + cosine, growth events, evaluation, checkpoints, DDP.

One process, or several under ``torchrun`` (DistributedDataParallel, any backend). Every rank
draws the same global batch of a step and trains on its own slice of the rows, so a step's
data depends on the step alone: a resumed run, or one on another number of processes, sees the
same batches. A growth event unwraps DDP, grows the model and carries the optimizer state
(``growformer.expand.resize_``), then wraps it again; the growth is seeded, so ranks stay
bit-identical.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from growformer.atomic import atomic_write
from growformer.config import ModelConfig
from growformer.model import Transformer, check_fits_in_memory
from growformer.model_io import load_config
from growformer.train.apollo import sample_depth, sharing_order
from growformer.train.checkpoint import (
    MODEL_DIR,
    TRAINER_FILE,
    RunPosition,
    check_optimizer_fits,
    latest_checkpoint,
    load_checkpoint,
    read_position,
    save_checkpoint,
)
from growformer.train.config import TrainConfig, TrainConfigError
from growformer.train.flops import train_flops_per_token
from growformer.train.growth import apply_event_
from growformer.train.lag import Trial, choose, trial_records
from growformer.train.lr import lr_at
from growformer.train.metrics import MetricsLog
from growformer.train.run_config import RUN_FILE
from growformer.train.schedule import GrowthEvent, Schedule, Stage, schedule_to_dict, stage_at

# Seeds the per-step depth draws apart from any other use of (seed, step).
DEPTH_STREAM = 0x4150


class TokenBatches(Protocol):
    """What the trainer needs from data (``growformer.data.TokenSplit`` is one): the batch of a
    step as a function of the step, and a fixed evaluation set."""

    def batch_at(self, step: int, batch_size: int, seq_len: int) -> tuple[Tensor, Tensor]:
        """Inputs and next-token targets, each ``(batch_size, seq_len)`` int64."""
        ...

    def eval_batches(
        self, batch_size: int, seq_len: int, max_windows: int | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """The same (inputs, targets) batches every time, ``max_windows`` rows in all."""
        ...


@dataclass
class RunResult:
    """What a finished run reports: its last validation loss and totals."""

    run_dir: Path | None
    final_val_loss: float
    steps: int
    tokens: int
    flops: float
    train_time: float
    config: ModelConfig


class Trainer:
    """Train ``target`` under ``schedule`` on ``train_data``, evaluating on ``val_data``.

    ``run_dir`` receives ``run.json`` (target, training config and schedule stages),
    ``metrics.csv``, ``events.jsonl`` and ``checkpoints/``; with ``run_dir=None`` nothing is
    written. ``resume=True`` continues from the latest checkpoint in ``run_dir``, ``resume=PATH``
    from that checkpoint folder: on CPU the losses are then the same, bit for bit, as an
    uninterrupted run's. The schedule is validated (``Schedule.plan``) in the constructor,
    before anything is written.
    """

    def __init__(
        self,
        target: ModelConfig,
        train: TrainConfig,
        schedule: Schedule,
        train_data: TokenBatches,
        val_data: TokenBatches,
        run_dir: str | os.PathLike | None,
        *,
        resume: bool | str | os.PathLike = False,
        device: str | torch.device | None = None,
        progress: bool = True,
    ) -> None:
        self.target, self.train, self.schedule = target, train, schedule
        self.stages: list[Stage] = schedule.plan(target, train)
        if train.compile and not torch.cuda.is_available():
            raise TrainConfigError(
                "compile=true needs CUDA (torch.compile on CPU is not supported here)"
            )
        self.train_data, self.val_data = train_data, val_data
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.rank, self.world = _distributed_rank_world()
        self.writes = self.rank == 0 and self.run_dir is not None
        for stage in self.stages:
            rows = self.train.rows_at(stage.seq_len)
            if (
                rows % (self.world * train.grad_accum)
                or rows * stage.seq_len != train.tokens_per_step
            ):
                raise TrainConfigError(
                    f"stage {stage.index}: seq_len {stage.seq_len} needs {rows} rows for "
                    f"{train.tokens_per_step} tokens per step, which must be whole and a "
                    f"multiple of processes * grad_accum = {self.world} * {train.grad_accum}"
                )
        self.device = torch.device(device or _default_device(self.rank))
        largest = max((stage.config for stage in self.stages), key=ModelConfig.num_parameters)
        check_fits_in_memory(largest, torch.float32, self.device, "the run's largest model")
        self.progress = progress and self.rank == 0
        self.checkpoint: Path | None = None
        if resume is True:
            if self.run_dir is None:
                raise TrainConfigError("resume=True needs a run_dir to find the checkpoint in")
            self.checkpoint = latest_checkpoint(self.run_dir)
            if self.checkpoint is None:
                raise TrainConfigError(
                    f"--resume: no checkpoint under {self.run_dir / 'checkpoints'}"
                )
        elif resume:
            self.checkpoint = latest_checkpoint(resume)
            if self.checkpoint is None:
                raise TrainConfigError(f"{resume}: not a checkpoint or a run with checkpoints")
        if self.checkpoint is not None:
            self._check_checkpoint_fits(self.checkpoint)

    def _check_checkpoint_fits(self, checkpoint: Path) -> None:
        """The checkpoint must be a point of this run: its step within ``train.steps`` and its
        model the sizes of the schedule's stage it records."""
        position = read_position(checkpoint)
        if position.step > self.train.steps:
            raise TrainConfigError(
                f"{checkpoint} is at step {position.step}, past this run's {self.train.steps} steps"
            )
        config = load_config(checkpoint / MODEL_DIR)
        if position.stage < len(self.stages):
            differing = config.size_differences(self.stages[position.stage].config, "stage")
        else:
            differing = f"schedule {self.schedule.name!r} has {len(self.stages)} stages"
        if differing:
            raise TrainConfigError(
                f"{checkpoint}: its model is not stage {position.stage} of schedule "
                f"{self.schedule.name!r} ({differing}); resume with the schedule the run was "
                "trained with"
            )

    # -- setup -------------------------------------------------------------------------------

    def start(self) -> None:
        """Build (or, resuming, load) the model and optimizer and open the run's logs; ``run``
        calls it, a caller that drives ``step`` itself calls it first."""
        checkpoint = self.checkpoint
        if checkpoint is None:
            torch.manual_seed(self.train.seed)
            self.model = Transformer(self.stages[0].config)
            self.position = RunPosition()
        else:
            self.model, optimizer_state, self.position = load_checkpoint(checkpoint)
        self.model.to(self.device)
        self.optimizer = _adamw(self.model, self.train)
        if checkpoint is not None:
            where = str(checkpoint / TRAINER_FILE)
            check_optimizer_fits(self.optimizer, optimizer_state, where, self.model)
            self.optimizer.load_state_dict(optimizer_state)
        if self.writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # The logs first: a resume reads (and checks) them before run.json is rewritten.
            self.log = MetricsLog(self.run_dir, self.position.step if checkpoint else None)
            _write_run_json(self)
        self._wrap()

    def _wrap(self) -> None:
        module: nn.Module = self.model
        if self.world > 1:
            module = nn.parallel.DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if self.train.compile:
            module = torch.compile(module)
        self.wrapped = module

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Train to ``train.steps``; returns the final validation loss and totals."""
        self.start()
        train = self.train
        bar = tqdm(
            total=train.steps,
            initial=self.position.step,
            disable=not self.progress,
            dynamic_ncols=True,
        )
        finished = self.position.step >= train.steps
        self.val_loss = self.evaluate() if finished else math.nan
        try:
            while self.position.step < train.steps:
                loss = self.step()
                stage = self._stage_at(self.position.step - 1)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{loss:.3f}",
                    stage=stage.index,
                    tok_s=f"{train.tokens_per_step / self.step_seconds:,.0f}",
                )
                done = self.position.step
                if (
                    train.checkpoint_every and done % train.checkpoint_every == 0
                ) or done == train.steps:
                    self.save()
        finally:
            bar.close()
            if hasattr(self, "log"):
                self.log.close()
        return RunResult(
            self.run_dir,
            self.val_loss,
            self.position.step,
            self.position.tokens,
            self.position.flops,
            self.position.train_time,
            self.model.config,
        )

    def step(self) -> float:
        """One step of a started run: grow first if a stage begins here, train, count tokens,
        FLOPs and time, evaluate and log at their cadence. Returns the step's training loss."""
        train, step = self.train, self.position.step
        stage = self._stage_at(step)
        if stage.index > self.position.stage:
            self._grow(stage, step)
        started = time.perf_counter()
        loss = self._train_step(step, stage.seq_len)
        self.step_seconds = time.perf_counter() - started
        tokens = train.tokens_per_step
        self.position.tokens += tokens
        effective = self.model.config.replace(n_layers=self.effective_layers)
        self.position.flops += tokens * train_flops_per_token(effective, stage.seq_len)
        self.position.train_time += self.step_seconds
        self.position.step += 1
        done = self.position.step
        is_eval = done % train.eval_every == 0 or done == train.steps
        if is_eval:
            self.val_loss = self.evaluate()
        if self.writes and (is_eval or done % max(1, train.log_every) == 0):
            self._log_row(loss, self.val_loss if is_eval else None, stage)
        return loss

    def _stage_at(self, step: int) -> Stage:
        return stage_at(self.stages, step)

    def _train_step(self, step: int, seq_len: int) -> float:
        train = self.train
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, train, self.position.rewarm_from, self.position.rewarm_steps)
        inputs, targets = self._rank_rows(step, seq_len)
        order = self.layer_order(step)
        self.effective_layers = self.model.config.n_layers if order is None else len(order)
        micro = inputs.shape[0] // train.grad_accum
        total = torch.zeros((), device=self.device)
        self.wrapped.train()
        for i in range(train.grad_accum):
            last = i == train.grad_accum - 1
            sync = contextlib.nullcontext() if last or self.world == 1 else self.wrapped.no_sync()
            with sync:
                rows = slice(i * micro, (i + 1) * micro)
                loss = self._loss(self.wrapped, inputs[rows], targets[rows], order)
                (loss / train.grad_accum).backward()
            total += loss.detach() / train.grad_accum
        if train.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), train.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.world > 1:
            dist.all_reduce(total)
            total /= self.world
        return float(total)

    def _rank_rows(self, step: int, seq_len: int) -> tuple[Tensor, Tensor]:
        inputs, targets = self.train_data.batch_at(step, self.train.rows_at(seq_len), seq_len)
        rows = inputs.shape[0] // self.world
        mine = slice(self.rank * rows, (self.rank + 1) * rows)
        return inputs[mine].to(self.device), targets[mine].to(self.device)

    def layer_order(self, step: int) -> list[int] | None:
        """The blocks the training forward pass of ``step`` runs: None (all, once) unless the
        schedule samples depth (Apollo's LVPS, drawn from ``(seed, step)`` so a resumed run
        draws the same) while the model is shallower than the target."""
        n_distinct, n_max = self.model.config.n_layers, self.target.n_layers
        if self.schedule.depth_sampling is None or n_distinct == n_max:
            return None
        rng = np.random.Generator(np.random.PCG64([self.train.seed, step, DEPTH_STREAM]))
        return sharing_order(n_distinct, sample_depth(n_distinct, n_max, rng))

    def _loss(
        self,
        model: nn.Module,
        inputs: Tensor,
        targets: Tensor,
        layer_order: list[int] | None = None,
    ) -> Tensor:
        with self._autocast():
            logits = model(inputs) if layer_order is None else model(inputs, layer_order)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.train.dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def batch_loss(self, step: int, seq_len: int, length: int | None = None) -> float:
        """The loss of the current model on the whole batch of ``step`` at ``seq_len`` (no
        update), on each row's first ``length`` tokens when given."""
        inputs, targets = self.train_data.batch_at(step, self.train.rows_at(seq_len), seq_len)
        inputs, targets = inputs[:, :length], targets[:, :length]
        self.model.eval()
        loss = self._loss(self.model, inputs.to(self.device), targets.to(self.device))
        return float(loss)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean token loss over the fixed validation windows (``eval_batches`` micro-batches)
        of the final sequence length, on their first ``max_seq_len`` tokens while the model's
        context is shorter (a schedule that grows it)."""
        self.model.eval()
        micro = self.train.micro_batch_size
        total, count = 0.0, 0
        length = min(self.train.seq_len, self.model.config.max_seq_len)
        batches = self.val_data.eval_batches(
            micro, self.train.seq_len, self.train.eval_batches * micro
        )
        for inputs, targets in batches:
            inputs, targets = inputs[:, :length], targets[:, :length]
            loss = self._loss(self.model, inputs.to(self.device), targets.to(self.device))
            total += float(loss) * targets.numel()
            count += targets.numel()
        return total / count

    def try_growth(self, event: GrowthEvent, steps: int, name: str = "") -> Trial:
        """Grow a copy of the model and optimizer by ``event`` (a concrete one, not ``lag``),
        train it ``steps`` steps from the current step on the batches the run would train on,
        and measure the validation loss right after the growth and after those steps.

        The trainer's model, optimizer and step are left as they were; the wall time and
        training FLOPs of the trial are added to the run's totals (they are part of the cost of
        choosing). Memory: one copy at a time.
        """
        saved = self.model, self.optimizer, self.wrapped, self.position
        step = self.position.step
        seq_len = event.seq_len or self._stage_at(step).seq_len
        started = time.perf_counter()
        flops = 0.0
        try:
            self.model = copy.deepcopy(saved[0])
            self.optimizer = _adamw(self.model, self.train)
            self.optimizer.load_state_dict(copy.deepcopy(saved[1].state_dict()))
            apply_event_(self.model, self.optimizer, event)
            self.model.to(self.device)
            self._wrap()
            if event.rewarm_steps:
                self.position = dataclasses.replace(
                    saved[3], rewarm_from=step, rewarm_steps=event.rewarm_steps
                )
            loss_at_growth = self.evaluate()
            losses = []
            for i in range(steps):
                losses.append(self._train_step(step + i, seq_len))
                effective = self.model.config.replace(n_layers=self.effective_layers)
                flops += self.train.tokens_per_step * train_flops_per_token(effective, seq_len)
            loss_after = self.evaluate()
            config = self.model.config
        finally:
            self.model, self.optimizer, self.wrapped, self.position = saved
        self.position.train_time += time.perf_counter() - started
        self.position.flops += flops
        return Trial(name, event, config, loss_at_growth, loss_after, tuple(losses))

    def try_candidates(self, event: GrowthEvent, steps: int | None = None) -> list[Trial]:
        """``try_growth`` for each of a ``lag`` event's candidates, in order, each trained
        ``steps`` steps (default ``event.lag_steps``)."""
        steps = event.lag_steps if steps is None else steps
        return [self.try_growth(event.candidate(c), steps, c) for c in event.candidates]

    def _grow(self, stage: Stage, step: int) -> None:
        event = stage.event
        assert event is not None
        lag: dict[str, Any] = {}
        if event.method == "lag":
            trials = self.try_candidates(event)
            chosen = choose(trials)
            event = chosen.event
            lag = {"lag": {"chosen": chosen.name, "trials": trial_records(trials)}}
        before_config = self.model.config
        # Both on the tokens the model before can take, so that they compare.
        length = min(stage.seq_len, before_config.max_seq_len)
        loss_before = self.batch_loss(step, stage.seq_len, length)
        apply_event_(self.model, self.optimizer, event)
        self.model.to(self.device)
        self._wrap()
        loss_after = self.batch_loss(step, stage.seq_len, length)
        self.position.stage = stage.index
        if event.rewarm_steps:
            self.position.rewarm_from, self.position.rewarm_steps = step, event.rewarm_steps
        if self.writes:
            self.log.event(
                {
                    "step": step,
                    "tokens": self.position.tokens,
                    "stage": stage.index,
                    "method": event.method,
                    "state_policy": event.state_policy,
                    "config_before": before_config.to_dict(),
                    "config_after": self.model.config.to_dict(),
                    "seq_len": stage.seq_len,
                    "loss_before": loss_before,
                    "loss_after": loss_after,
                    **lag,
                }
            )

    def _log_row(self, loss: float, val_loss: float | None, stage: Stage) -> None:
        p = self.position
        self.log.row(
            step=p.step,
            tokens=p.tokens,
            flops=f"{p.flops:.6g}",
            time=f"{p.train_time:.4f}",
            loss=f"{loss:.6f}",
            val_loss="" if val_loss is None else f"{val_loss:.6f}",
            lr=f"{self.optimizer.param_groups[0]['lr']:.6g}",
            params=self.model.num_parameters(),
            stage=stage.index,
            seq_len=stage.seq_len,
        )

    def save(self) -> Path | None:
        """Write a checkpoint of the current position (rank 0, when the run has a folder)."""
        if not self.writes:
            return None
        return save_checkpoint(self.run_dir, self.model, self.optimizer, self.position)


def _adamw(model: nn.Module, train: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (embeddings included) and none on gains and biases;
    torch's fused kernel where it has one (CPU and CUDA), else its default implementation."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    return torch.optim.AdamW(
        groups, lr=train.lr, betas=(train.beta1, train.beta2), fused=fused or None
    )


def _distributed_rank_world() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def _default_device(rank: int) -> str:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu"


def _write_run_json(trainer: Trainer) -> None:
    data = {
        "target": trainer.target.to_dict(),
        "train": trainer.train.to_dict(),
        "schedule": schedule_to_dict(trainer.schedule),
        "stages": [
            {
                "index": s.index,
                "start_step": s.start_step,
                "seq_len": s.seq_len,
                "config": s.config.to_dict(),
            }
            for s in trainer.stages
        ],
    }
    atomic_write(trainer.run_dir / RUN_FILE, (json.dumps(data, indent=2) + "\n").encode())
