"""``shrink_folder``: subclone a model folder into a smaller one, with its report beside it.

The source's weights are read lazily (memory-mapped safetensors: a growformer folder through
``lazy_weights``, a Hugging Face one through ``growformer.hf.read_folder``), one block at a time
while calibrating and one tensor at a time while building the child, so peak memory stays near
the child's size plus one source layer and the calibration activations. Every check (destination,
source, target, keep-layers) runs before calibration; the child, its report
(``subclone_report.json``) and the source's tokenizer file are written atomically together.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from growformer.config import ModelConfig
from growformer.data import DEFAULT_DATA, DEFAULT_TEXT_FIELD
from growformer.hf import Canonical, FormatError, is_hf_folder, read_folder, write_folder
from growformer.model import Transformer, model_from_state
from growformer.model_io import (
    WEIGHTS_FILE,
    CheckpointError,
    atomic_directory,
    check_destination,
    load_config,
    save_model,
)
from growformer.shrink.blocks import check_keep_layers
from growformer.shrink.calibration import (
    CALIB_SEQ_LEN,
    DEFAULT_CALIB_TOKENS,
    TOKENIZER_FILE,
    calibration_batches,
    folder_encoder,
    folder_tokenizer,
)
from growformer.shrink.hf import subclone_canonical
from growformer.shrink.importance import measure_importance
from growformer.shrink.report import REPORT_FILE
from growformer.shrink.subclone import Subclone, subclone
from growformer.shrink.target import resolve_shrink_target


def shrink_folder(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    target: Mapping[str, int],
    *,
    data: str | os.PathLike | None = None,
    text_field: str = DEFAULT_TEXT_FIELD,
    calib_tokens: int = DEFAULT_CALIB_TOKENS,
    keep_layers: Sequence[int] | None = None,
    rescale: bool = True,
    overwrite: bool = False,
) -> Subclone:
    """Shrink the model folder ``src`` (growformer, or Hugging Face GPT-2, Llama, Qwen2,
    Mistral or BERT) to ``target`` sizes and write it to ``dst`` in the same format.

    Calibrates on ``calib_tokens`` tokens of ``data`` (default: the default corpus; of JSON
    lines, the string in ``text_field``; see ``growformer.shrink.calibration`` for the
    tokenizer used). Raises, before anything is
    written: ``CheckpointError`` (missing or unreadable source, existing ``dst`` without
    ``overwrite``; its ``FormatError`` when the family cannot store the target),
    ``ShrinkError`` (a target larger than the source, bad ``keep_layers``), ``DataError``
    (unusable calibration data).

    Example::

        shrink_folder("all-MiniLM-L6-v2", "mini-3x192",
                      {"n_layers": 3, "hidden": 192, "n_heads": 6, "ffn": 768})
    """
    check_destination(dst, overwrite, source=src)
    hugging_face = is_hf_folder(src)
    canonical = read_folder(src) if hugging_face else None
    config = canonical.config if canonical is not None else load_config(src)
    target_config = resolve_shrink_target(config, target)
    if keep_layers is not None:
        check_keep_layers(keep_layers, target_config.n_layers, config.n_layers)
    if canonical is not None:
        _check_storable(canonical, target_config)
    batches = calibration_batches(
        data,
        config.vocab_size,
        partial(folder_encoder, src, hugging_face),
        tokens=calib_tokens,
        seq_len=min(CALIB_SEQ_LEN, config.max_seq_len),
        text_field=text_field,
    )
    options = {"keep_layers": keep_layers, "rescale": rescale}
    with _weights(src, config, canonical) as state:
        importance = measure_importance(config, state, batches)
        if canonical is None:
            child = subclone(config, state, target, importance, **options)
        else:
            child_canonical, child = subclone_canonical(canonical, target, importance, **options)
    child = with_calibration_data(child, data)
    with atomic_directory(dst, overwrite) as tmp:
        if canonical is None:
            save_model(model_from_state(child.config, child.state), tmp, overwrite=True)
            tokenizer = folder_tokenizer(src)
            if tokenizer is not None:
                shutil.copy2(tokenizer, tmp / TOKENIZER_FILE)
        else:
            write_folder(child_canonical, tmp, like=src, overwrite=True)
        (tmp / REPORT_FILE).write_text(child.report.to_json())
    return child


def _check_storable(source: Canonical, target: ModelConfig) -> None:
    """The family's check, with what it means for a shrink (heads keep their size)."""
    try:
        source.family.check_storable(target)
    except FormatError as err:
        raise FormatError(
            f"the target cannot be saved as {source.family.model_type}: {err}. Subcloning keeps "
            f"the head dims (qk {target.qk_head_dim}, v {target.v_head_dim}), so choose the "
            "hidden size and heads to fit"
        ) from err


@contextmanager
def _weights(
    src: str | os.PathLike, config: ModelConfig, canonical: Canonical | None
) -> Iterator[Mapping[str, Tensor]]:
    if canonical is not None:
        yield canonical.state
    else:
        with lazy_weights(src, config) as state:
            yield state


def with_calibration_data(child: Subclone, data: str | os.PathLike | None) -> Subclone:
    """``child`` with the calibration data's name in its report."""
    name = DEFAULT_DATA if data is None else os.fspath(data)
    return dataclasses.replace(
        child, report=dataclasses.replace(child.report, calibration_data=name)
    )


class _LazyWeights(Mapping[str, Tensor]):
    """The tensors of an open safetensors file, each read when asked for."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.names = list(handle.keys())

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.names:
            raise KeyError(name)
        return self.handle.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


@contextmanager
def lazy_weights(folder: str | os.PathLike, config: ModelConfig) -> Iterator[Mapping[str, Tensor]]:
    """The weights of a growformer folder, read on demand; names and shapes are checked
    against ``config`` first (``CheckpointError``)."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    with torch.device("meta"):
        expected = {n: tuple(p.shape) for n, p in Transformer(config).named_parameters()}
    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {n: tuple(handle.get_slice(n).get_shape()) for n in handle.keys()}  # noqa: SIM118
            missing = sorted(set(expected) - set(shapes))
            unexpected = sorted(set(shapes) - set(expected))
            wrong = sorted(n for n in expected if n in shapes and shapes[n] != expected[n])
            if missing or unexpected or wrong:
                raise CheckpointError(
                    f"{path} does not match config.json: missing {missing}, unexpected "
                    f"{unexpected}, wrong shape {wrong}"
                )
            yield _LazyWeights(handle)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
