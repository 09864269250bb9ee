"""Training checkpoints: the model of the current stage, the optimizer and the run position.

Layout: ``RUN_DIR/checkpoints/step_0000400/`` holds ``model/`` (a growformer model folder:
config.json + model.safetensors) and ``trainer.pt`` (optimizer state, step, tokens, FLOPs,
training time, stage index, re-warmup anchor, torch RNG state), written atomically. Batches
are a function of the step, so the step is the data position. ``trainer.pt`` loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from growformer.config import is_finite_number
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

    @classmethod
    def from_dict(cls, data: Any) -> RunPosition:
        """The position ``to_dict`` wrote; ``ValueError`` names a missing, unknown or
        ill-typed field (counts are non-negative ints, FLOPs and time finite and >= 0)."""
        if not isinstance(data, dict):
            raise ValueError(f"position must be a dict; got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        if set(data) != fields:
            missing, unknown = sorted(fields - set(data)), sorted(set(data) - fields, key=str)
            raise ValueError(f"position fields: missing {missing}, unknown {unknown}")
        for name in ("step", "tokens", "stage", "rewarm_steps", "rewarm_from"):
            value = data[name]
            if name == "rewarm_from" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"position {name} must be an integer >= 0; got {value!r}")
        for name in ("flops", "train_time"):
            value = data[name]
            if not is_finite_number(value) or value < 0:
                raise ValueError(f"position {name} must be a finite number >= 0; got {value!r}")
        return cls(**data)


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
    """The run position stored in checkpoint ``path``, the trainer state checked as
    ``load_checkpoint`` checks it but for the optimizer's tensor data, which is mapped from the
    file, not read (nor is the model). A file torch cannot map (not a zip archive, a
    filesystem without mmap) is read whole, so it gets ``load_checkpoint``'s verdict."""
    try:
        state = _trainer_state(Path(path), mmap=True)
    except CheckpointError:
        state = _trainer_state(Path(path))
    return RunPosition.from_dict(state["position"])


def _trainer_state(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """The validated contents of ``path``'s trainer file; with ``mmap`` its tensors are mapped
    from the file, not read (for a look at the rest)."""
    file = path / TRAINER_FILE
    try:
        state = torch.load(file, weights_only=True, map_location="cpu", mmap=mmap)
        if not isinstance(state, dict):
            raise TypeError(f"holds a {type(state).__name__}, not a dict")
        missing = {"position", "optimizer", "torch_rng"} - set(state)
        if missing:
            raise KeyError(f"missing {sorted(missing)}")
        RunPosition.from_dict(state["position"])
        torch.Generator().set_state(state["torch_rng"])  # raises unless an RNG state
        _check_optimizer_layout(state["optimizer"])
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


def _check_optimizer_layout(state: Any) -> None:
    """``TypeError`` unless ``state`` has the layout of ``Optimizer.state_dict()``: ``state``
    (a dict of per-parameter dicts) and ``param_groups`` (dicts with a ``params`` list)."""
    if not isinstance(state, dict) or set(state) != {"state", "param_groups"}:
        raise TypeError("optimizer must be a dict of 'state' and 'param_groups'")
    groups, per_param = state["param_groups"], state["state"]
    if not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups
    ):
        raise TypeError("optimizer param_groups must be a list of dicts with a 'params' list")
    if not isinstance(per_param, dict) or not all(isinstance(v, dict) for v in per_param.values()):
        raise TypeError("optimizer state must map each parameter to a dict")


def check_optimizer_fits(
    optimizer: torch.optim.Optimizer, state: dict[str, Any], where: str, model: nn.Module
) -> None:
    """``CheckpointError`` (naming ``where`` and the parameter of ``model``) unless the state
    dict ``state`` fits ``optimizer``: as many groups of as many parameters, and every stored
    tensor other than ``step`` of its parameter's shape (torch's fused AdamW does not check,
    and crashes)."""
    saved = [len(g["params"]) for g in state["param_groups"]]
    own = [len(g["params"]) for g in optimizer.param_groups]
    if saved != own:
        raise CheckpointError(
            f"{where}: the optimizer state has parameter groups of {saved} parameters; "
            f"the model's are {own}"
        )
    params = {
        key: param
        for saved_group, group in zip(state["param_groups"], optimizer.param_groups, strict=True)
        for key, param in zip(saved_group["params"], group["params"], strict=True)
    }
    names = {id(param): name for name, param in model.named_parameters()}
    for key, entries in state["state"].items():
        if key not in params:
            raise CheckpointError(f"{where}: the optimizer state names no parameter {key!r}")
        shape = tuple(params[key].shape)
        for name, value in entries.items():
            if name != "step" and isinstance(value, torch.Tensor) and tuple(value.shape) != shape:
                raise CheckpointError(
                    f"{where}: optimizer {name} of {names.get(id(params[key]), key)} has "
                    f"shape {tuple(value.shape)}; the parameter's is {shape}"
                )


def load_checkpoint(path: str | os.PathLike) -> tuple[Transformer, dict[str, Any], RunPosition]:
    """The model, the optimizer state dict and the position stored in checkpoint ``path``
    (``CheckpointError`` when one of them is damaged; see ``check_optimizer_fits`` for the
    optimizer state against the model's optimizer)."""
    path = Path(path)
    model = load_model(path / MODEL_DIR)
    state = _trainer_state(path)
    torch.set_rng_state(state["torch_rng"])
    return model, state["optimizer"], RunPosition.from_dict(state["position"])
