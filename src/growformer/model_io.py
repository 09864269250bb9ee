"""Model folders: ``config.json`` plus ``model.safetensors``, written atomically.

``config.json`` holds the ``ModelConfig`` fields plus ``"model_type": "growformer"``. A folder
is written into a temporary sibling and renamed into place, so a reader never sees half a
model and a failure leaves the destination untouched. Weights load only through safetensors.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from growformer.atomic import creation_problem, current_umask, nesting
from growformer.config import ConfigError, ModelConfig
from growformer.model import Transformer, check_weight_dtypes, model_from_state

MODEL_TYPE = "growformer"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A model folder that is missing, unreadable or inconsistent; the message names the file."""


def check_destination(
    path: str | os.PathLike, overwrite: bool = False, source: str | os.PathLike | None = None
) -> Path:
    """Refuse an existing non-empty destination unless ``overwrite``, and one inside the folder
    ``source`` or holding it (replacing it would delete the source); call before any work. The
    source itself may be the destination: it is read before it is replaced."""
    path = Path(path)
    where = None if source is None else nesting(path, Path(source))
    if where in ("inside", "holding"):
        phrase = "inside the source" if where == "inside" else "a folder holding the source"
        raise CheckpointError(f"destination {path} is {phrase} {source}; choose another")
    problem = creation_problem(path)
    if problem:
        raise CheckpointError(f"destination {path}: {problem}")
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"destination {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise CheckpointError(f"destination {path} exists and is not empty (pass --overwrite)")
    return path


@contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` by rename.

    The folder and every file in it get the permissions the umask gives a new folder or file
    (``safetensors`` writes its files 0600 whatever the umask). When replacing an existing
    ``path`` fails midway, the old one is put back. A path the system refuses raises
    ``OSError`` before anything is written.
    """
    path = check_destination(path, overwrite).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    mask = current_umask()
    try:
        tmp.chmod(0o777 & ~mask)
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file() and not file.is_symlink():
                file.chmod(0o666 & ~mask)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            try:
                os.replace(path, old / path.name)
                try:
                    os.replace(tmp, path)
                except OSError:
                    os.replace(old / path.name, path)
                    raise
            finally:
                shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def save_model(model: Transformer, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``model`` as a growformer folder at ``path`` (atomically)."""
    state = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    with atomic_directory(path, overwrite) as tmp:
        config = {"model_type": MODEL_TYPE, **model.config.to_dict()}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    return Path(path)


def read_config_json(path: str | os.PathLike) -> dict:
    """The parsed ``config.json`` of a model folder."""
    folder = Path(path)
    if not folder.is_dir():
        why = "a file, not a folder" if folder.exists() else "no such folder"
        raise CheckpointError(f"{folder} is not a model folder ({why})")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path} is missing: a model folder needs {CONFIG_FILE}")
    try:
        data = json.loads(config_path.read_text())
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{config_path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{config_path} must hold a JSON object")
    return data


def load_config(path: str | os.PathLike) -> ModelConfig:
    """The ``ModelConfig`` of a growformer folder."""
    data = read_config_json(path)
    model_type = data.pop("model_type", None)
    if model_type != MODEL_TYPE:
        raise CheckpointError(
            f"{Path(path) / CONFIG_FILE}: model_type {model_type!r} is not {MODEL_TYPE!r}"
        )
    try:
        return ModelConfig.from_dict(data, complete=True)
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{Path(path) / CONFIG_FILE}: {err}") from err


def load_model(
    path: str | os.PathLike, *, dtype: torch.dtype | None = None, device: str = "cpu"
) -> Transformer:
    """Load a growformer folder; every weight must be present with the config's shape."""
    config = load_config(path)
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    state = {}
    try:
        with safe_open(str(weights), framework="pt", device=device) as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                state[name] = f.get_tensor(name)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {err}") from err
    try:
        if dtype is not None:
            check_weight_dtypes(state)
            for name, tensor in state.items():
                state[name] = tensor.to(dtype)
        return model_from_state(config, state)
    except (KeyError, ValueError) as err:
        reason = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise CheckpointError(f"{weights} does not match {CONFIG_FILE}: {reason}") from err
