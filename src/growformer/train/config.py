"""TrainConfig and the model/training presets (tiny, small, base)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from growformer.config import MAX_SEED, ModelConfig, is_finite

DTYPES = ("float32", "bfloat16")


class TrainConfigError(ValueError):
    """A training or schedule setting is invalid; the message names the field and what is
    allowed. Raised before any step runs or any file is written."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train: optimizer, learning-rate schedule, batches, evaluation and checkpoints.

    ``batch_size`` sequences of ``seq_len`` tokens per optimizer step, split into ``grad_accum``
    micro-batches. A schedule stage of shorter sequences takes proportionally more of them, so
    every step trains on ``tokens_per_step`` tokens.
    Learning rate: linear warmup over ``warmup_steps`` to ``lr``, then cosine decay to
    ``lr * min_lr_ratio`` at ``steps``. ``dtype="bfloat16"`` runs the forward pass under
    autocast (weights and optimizer stay float32); ``compile`` wraps the model in
    ``torch.compile`` (CUDA only). Evaluation every ``eval_every`` steps on ``eval_batches``
    fixed validation batches of the final ``seq_len``; a checkpoint every ``checkpoint_every``
    steps (0: only at the end).
    """

    steps: int = 1000
    batch_size: int = 32
    seq_len: int = 128
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 0
    log_every: int = 10
    seed: int = 0
    dtype: str = "float32"
    compile: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_every", "eval_batches"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_steps", "checkpoint_every", "log_every"):
            check_int(name, getattr(self, name), minimum=0)
        check_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        if self.batch_size % self.grad_accum:
            raise TrainConfigError(
                f"batch_size={self.batch_size} must be a multiple of grad_accum={self.grad_accum}"
            )
        for name in ("lr", "weight_decay", "grad_clip", "min_lr_ratio", "beta1", "beta2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TrainConfigError(f"{name} must be a number, got {value!r}")
            if not is_finite(value) or value < 0:
                raise TrainConfigError(f"{name} must be a finite number ≥ 0, got {value!r}")
        if self.lr == 0:
            raise TrainConfigError("lr must be > 0")
        if self.min_lr_ratio > 1:
            raise TrainConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        for name in ("beta1", "beta2"):
            if getattr(self, name) >= 1:
                raise TrainConfigError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.dtype not in DTYPES:
            raise TrainConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if not isinstance(self.compile, bool):
            raise TrainConfigError(f"compile must be true or false, got {self.compile!r}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def rows_at(self, seq_len: int) -> int:
        """Sequences per step at ``seq_len``: a stage of shorter sequences takes more of them,
        so every step trains on ``tokens_per_step`` tokens."""
        return self.tokens_per_step // seq_len

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.grad_accum

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    """``TrainConfigError`` unless ``value`` is an int (not a bool) ≥ ``minimum`` (and ≤
    ``maximum`` when given)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TrainConfigError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise TrainConfigError(f"{name} must be an integer ≤ {maximum}, got {value!r}")


@dataclass(frozen=True)
class Preset:
    """A target model (vocabulary size set from the tokenizer) and how to train it."""

    model: ModelConfig
    train: TrainConfig
    vocab_size: int


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        ModelConfig(n_layers=2, hidden=64, n_heads=4, ffn=256, max_seq_len=64),
        TrainConfig(
            steps=40, batch_size=8, seq_len=64, warmup_steps=4, eval_every=20, eval_batches=2
        ),
        vocab_size=512,
    ),
    "small": Preset(
        ModelConfig(n_layers=4, hidden=128, n_heads=4, ffn=512, max_seq_len=128),
        TrainConfig(
            steps=800,
            batch_size=16,
            seq_len=128,
            warmup_steps=40,
            eval_every=50,
            eval_batches=8,
        ),
        vocab_size=1024,
    ),
    "base": Preset(
        ModelConfig(n_layers=12, hidden=768, n_heads=12, ffn=3072, max_seq_len=512),
        TrainConfig(
            steps=5000,
            batch_size=64,
            seq_len=512,
            lr=6e-4,
            warmup_steps=200,
            eval_every=250,
            eval_batches=16,
            dtype="bfloat16",
        ),
        vocab_size=8192,
    ),
}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise TrainConfigError(f"preset must be one of {', '.join(PRESETS)}; got {name!r}")
    return PRESETS[name]
