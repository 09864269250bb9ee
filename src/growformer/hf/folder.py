"""Hugging Face model folders: ``config.json`` plus ``model.safetensors`` or shards listed in
``model.safetensors.index.json``.

Reading opens each file with safetensors ``safe_open`` and takes its tensors one by one; they
are memory-mapped views of the file, so reading costs no memory of its own and growing a folder
needs about the size of the output plus the largest tensor in flight. Nothing here imports
transformers.

Writing keeps the source's dtype and layout: a sharded source gives a sharded output (shards
no larger than the source's largest, named and indexed as transformers does), tokenizer and
generation files are copied, and the folder is written atomically: on any error nothing
appears at the destination.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from growformer.config import ModelConfig
from growformer.expand import GrowthOptions, resolve_target
from growformer.hf.family import Canonical
from growformer.hf.registry import family_for
from growformer.model_io import (
    CONFIG_FILE,
    MODEL_TYPE,
    WEIGHTS_FILE,
    CheckpointError,
    atomic_directory,
    check_destination,
    read_config_json,
)

INDEX_FILE = "model.safetensors.index.json"
# Files copied from the source folder: tokenizer and generation settings.
COPIED = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "*.model",
    "generation_config.json",
    "chat_template*",
)


def is_hf_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a ``config.json`` whose ``model_type`` is not growformer's."""
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("model_type") != MODEL_TYPE


def read_folder(path: str | os.PathLike) -> Canonical:
    """A Hugging Face folder in canonical form (tensors are views of the mapped files).

    Raises ``FormatError`` for an unsupported model_type or setting and ``CheckpointError`` for
    a missing config, missing or unreadable weight files, and weights that do not match.
    """
    hf_config = read_config_json(path)
    family = family_for(hf_config)
    return family.from_hf(hf_config, read_tensors(path))


def read_tensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """Every tensor of a folder's safetensors file(s), by name, read one by one."""
    folder = Path(path)
    files, weight_map = _weight_files(folder)
    tensors: dict[str, Tensor] = {}
    for file in files:
        names: set[str] = set()
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    tensors[name] = f.get_tensor(name)
                    names.add(name)
        except (SafetensorError, OSError, RuntimeError) as err:
            raise CheckpointError(f"{file} is not a readable safetensors file: {err}") from err
        if weight_map is not None:
            listed = {n for n, shard in weight_map.items() if shard == file.name}
            if listed != names:
                raise CheckpointError(
                    f"{file} does not hold what {INDEX_FILE} lists: missing "
                    f"{sorted(listed - names)}, unlisted {sorted(names - listed)}"
                )
    return tensors


def _weight_files(folder: Path) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files of a folder and, when sharded, the index's weight map. A single
    ``model.safetensors`` wins over an index beside it, as in transformers."""
    single = folder / WEIGHTS_FILE
    if single.is_file():
        return [single], None
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, RecursionError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index} is not a valid index (no weight_map): {err}") from err
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise CheckpointError(
                f"{index}: weight_map must map tensor names to shard file names, got "
                f"{type(weight_map).__name__}"
            )
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shards that are missing: {missing}")
        return files, weight_map
    raise CheckpointError(
        f"{folder} has neither {WEIGHTS_FILE} nor {INDEX_FILE} (growformer reads safetensors "
        "weights only)"
    )


@dataclass(frozen=True)
class Layout:
    """How a folder stores its weights: ``shard_limit`` tensor bytes per shard (None: one file)
    and the safetensors metadata."""

    shard_limit: int | None = None
    metadata: Mapping[str, str] | None = None

    @classmethod
    def of(cls, path: str | os.PathLike) -> Layout:
        """The layout of an existing folder; a sharded one's limit is the tensor bytes of its
        largest shard."""
        files, weight_map = _weight_files(Path(path))
        sizes = []
        for file in files:
            try:
                with safe_open(str(file), framework="pt") as f:
                    metadata = f.metadata()
                    sizes.append(sum(_nbytes(f.get_tensor(n)) for n in f.keys()))  # noqa: SIM118
            except (SafetensorError, OSError) as err:
                raise CheckpointError(f"{file} is not a readable safetensors file: {err}") from err
        return cls(max(sizes) if weight_map is not None else None, metadata)


def _nbytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def shard_plan(tensors: Mapping[str, Tensor], limit: int | None) -> list[list[str]]:
    """Names per shard, in order, each shard at most ``limit`` bytes unless one tensor is larger
    (it then gets a shard of its own); one shard when ``limit`` is None."""
    if limit is None:
        return [list(tensors)]
    shards: list[list[str]] = [[]]
    size = 0
    for name, tensor in tensors.items():
        nbytes = _nbytes(tensor)
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_folder(
    canonical: Canonical,
    path: str | os.PathLike,
    *,
    like: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``canonical`` as a folder of its family, atomically.

    With ``like`` (the source folder) the output is sharded like it (see ``Layout``) and its
    tokenizer and generation files are copied. Raises ``FormatError`` before writing anything
    when the family cannot store the model (e.g. a head size BERT cannot describe).
    """
    family = canonical.family
    hf_config = family.config_to_hf(canonical.config, canonical.source.hf_config)
    check_destination(path, overwrite)
    layout = Layout.of(like) if like is not None else Layout()
    tensors = family.to_hf(canonical)
    shards = shard_plan(tensors, layout.shard_limit)
    metadata = dict(layout.metadata or {"format": "pt"})
    with atomic_directory(path, overwrite) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        if layout.shard_limit is None:
            _save(tensors, shards[0], tmp / WEIGHTS_FILE, metadata)
        else:
            weight_map = {}
            total = sum(_nbytes(t) for t in tensors.values())
            for i, names in enumerate(shards):
                file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                weight_map.update(dict.fromkeys(names, file))
                _save(tensors, names, tmp / file, metadata)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        if like is not None:
            for file in Path(like).iterdir():
                if file.is_file() and any(fnmatch.fnmatch(file.name, p) for p in COPIED):
                    shutil.copy2(file, tmp / file.name)
            source_len = family.config_from_hf(canonical.source.hf_config).max_seq_len
            _fit_tokenizer_length(tmp / TOKENIZER_CONFIG, source_len, canonical.config.max_seq_len)
    return Path(path)


TOKENIZER_CONFIG = "tokenizer_config.json"


def _fit_tokenizer_length(path: Path, source_len: int, max_seq_len: int) -> None:
    """Lower a copied tokenizer's ``model_max_length`` to the model's ``max_seq_len`` when
    shrinking the positions took the model below it while the source (of ``source_len``
    positions) could take it, so that ``truncation=True`` still gives inputs the model accepts.
    Any other tokenizer config stays as copied. ``CheckpointError`` for one that is not JSON."""
    if not path.is_file():
        return
    try:
        settings = json.loads(path.read_text())
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"the source's {path.name} is not valid JSON: {err}") from err
    length = settings.get("model_max_length") if isinstance(settings, dict) else None
    if isinstance(length, int | float) and max_seq_len < length <= source_len:
        settings["model_max_length"] = max_seq_len
        path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _save(tensors: dict[str, Tensor], names: list[str], file: Path, metadata: dict) -> None:
    """Write one shard and release its tensors (so memory falls as shards are written)."""
    save_file({n: tensors.pop(n).contiguous() for n in names}, str(file), metadata=metadata)


def grow_storable(
    source: Canonical,
    target: ModelConfig | Mapping[str, int],
    options: GrowthOptions | None = None,
) -> Canonical:
    """``source.grow(target, options)``, after checking, before any weight is touched, that the
    family can store the result (``FormatError`` naming the field otherwise)."""
    source.family.check_storable(resolve_target(source.config, target))
    return source.grow(target, options)


def grow_folder(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    target: ModelConfig | Mapping[str, int],
    options: GrowthOptions | None = None,
    *,
    overwrite: bool = False,
) -> tuple[Canonical, Canonical]:
    """Grow the Hugging Face folder ``src`` into ``dst`` (same family, dtype and layout).

    Returns the source and the grown model in canonical form. Every check (destination, config,
    weights, target, what the family can store) runs before anything is written.

    Example::

        grow_folder("gpt2-small", "gpt2-wide", {"ffn": 4096, "n_layers": 16})
    """
    check_destination(dst, overwrite, source=src)
    source = read_folder(src)
    grown = grow_storable(source, target, options)
    write_folder(grown, dst, like=src, overwrite=overwrite)
    return source, grown
