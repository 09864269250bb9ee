"""Training checkpoints: the model of the current stage, the optimizer and the run position.

Layout: ``RUN_DIR/checkpoints/step_0000400/`` holds ``model/`` (a growformer model folder:
config.json + model.safetensors) and ``trainer.pt`` (optimizer state, step, tokens, FLOPs,
training time, stage index, re-warmup anchor, torch RNG state), written atomically. Batches
are a function of the step, so the step is the data position. ``trainer.pt`` loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from growformer.model import Transformer
from growformer.model_io import CheckpointError, atomic_directory, load_model, save_model

CHECKPOINTS = "checkpoints"
MODEL_DIR = "model"  # a checkpoint's model folder
TRAINER_FILE = "trainer.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class RunPosition:
    """Where a run is: the next step to train and the totals so far."""

    step: int = 0
    tokens: int = 0
    flops: float = 0.0
    train_time: float = 0.0
    stage: int = 0
    rewarm_from: int | None = None
    rewarm_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:07d}"


def save_checkpoint(
    run_dir: str | os.PathLike,
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    position: RunPosition,
) -> Path:
    """Write the checkpoint of ``position.step`` (the next step to run) atomically."""
    path = checkpoint_dir(run_dir, position.step)
    with atomic_directory(path, overwrite=True) as tmp:
        save_model(model, tmp / MODEL_DIR)
        state = {
            "position": position.to_dict(),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        torch.save(state, tmp / TRAINER_FILE)
    return path


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step under ``run_dir`` (or ``run_dir`` itself when it is
    a checkpoint folder); None when there is none."""
    run_dir = Path(run_dir)
    if (run_dir / TRAINER_FILE).is_file():
        return run_dir
    folder = run_dir / CHECKPOINTS
    steps = [
        (int(m.group(1)), p)
        for p in (folder.iterdir() if folder.is_dir() else ())
        if (m := _STEP_DIR.match(p.name)) and (p / TRAINER_FILE).is_file()
    ]
    return max(steps)[1] if steps else None


def read_position(path: str | os.PathLike) -> RunPosition:
    """The run position stored in checkpoint ``path`` (without loading the model)."""
    return RunPosition(**_trainer_state(Path(path))["position"])


def _trainer_state(path: Path) -> dict[str, Any]:
    file = path / TRAINER_FILE
    try:
        state = torch.load(file, weights_only=True, map_location="cpu")
        missing = {"position", "optimizer", "torch_rng"} - set(state)
        if missing:
            raise KeyError(f"missing {sorted(missing)}")
        RunPosition(**state["position"])
        return state
    except (
        OSError,
        RuntimeError,
        KeyError,
        TypeError,
        ValueError,
        EOFError,
        pickle.UnpicklingError,
    ) as error:
        raise CheckpointError(f"{file} is not a readable trainer state: {error}") from error


def load_checkpoint(path: str | os.PathLike) -> tuple[Transformer, dict[str, Any], RunPosition]:
    """The model, the optimizer state dict and the position stored in checkpoint ``path``."""
    path = Path(path)
    model = load_model(path / MODEL_DIR)
    state = _trainer_state(path)
    torch.set_rng_state(state["torch_rng"])
    return model, state["optimizer"], RunPosition(**state["position"])
