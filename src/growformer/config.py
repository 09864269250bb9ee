"""ModelConfig: one frozen dataclass that describes every transformer growformer handles."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, fields
from typing import Any

NORMS = ("rms", "layer")
POSITIONS = ("rope", "learned")
MLPS = ("swiglu", "gelu", "gelu_tanh", "relu")
NORM_PLACEMENTS = ("pre", "post")
MAX_SIZE = 2**31 - 1  # a size field's largest value (a dimension torch indexes with int32)
MAX_SEED = 2**64 - 1  # torch.manual_seed's largest seed

# The sizes that growth may increase; every other field describes the architecture's kind.
SIZE_FIELDS = (
    "n_layers",
    "hidden",
    "n_heads",
    "n_kv_heads",
    "qk_head_dim",
    "v_head_dim",
    "ffn",
    "max_seq_len",
)


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the field and what is allowed."""


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of a canonical transformer.

    Block (pre-norm): ``x += Attn(N1(x)); x += MLP(N2(x))``; logits ``= Nf(x) @ W_U``.
    Block (post-norm, BERT style): the embeddings pass through a norm, then
    ``x = N1(x + Attn(x)); x = N2(x + MLP(x))``.

    ``n_kv_heads`` defaults to ``n_heads`` (MHA); ``qk_head_dim`` and ``v_head_dim`` default to
    ``hidden // n_heads``. Query head ``h`` reads kv head ``h // (n_heads // n_kv_heads)``, the
    contiguous grouping of Hugging Face ``repeat_kv``. RoPE uses the rotate-half layout with base
    ``rope_theta``. Validation runs on construction and raises ``ConfigError``.
    """

    vocab_size: int = 256
    max_seq_len: int = 256
    n_layers: int = 2
    hidden: int = 64
    n_heads: int = 4
    n_kv_heads: int | None = None
    qk_head_dim: int | None = None
    v_head_dim: int | None = None
    ffn: int = 256
    norm: str = "rms"
    norm_eps: float = 1e-5
    norm_placement: str = "pre"
    final_norm: bool = True
    position: str = "rope"
    rope_theta: float = 10000.0
    mlp: str = "swiglu"
    attn_bias: bool = False
    attn_out_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    causal: bool = True
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.qk_head_dim is None or self.v_head_dim is None:
            _check_positive_int("n_heads", self.n_heads)
            _check_positive_int("hidden", self.hidden)
            if self.hidden % self.n_heads:
                raise ConfigError(
                    f"hidden={self.hidden} is not a multiple of n_heads={self.n_heads}: "
                    "set qk_head_dim and v_head_dim explicitly"
                )
            default_head_dim = self.hidden // self.n_heads
            if self.qk_head_dim is None:
                object.__setattr__(self, "qk_head_dim", default_head_dim)
            if self.v_head_dim is None:
                object.__setattr__(self, "v_head_dim", default_head_dim)
        self._validate()

    def _validate(self) -> None:
        for name in ("vocab_size", *SIZE_FIELDS):
            _check_positive_int(name, getattr(self, name))
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads} "
                f"(allowed n_kv_heads: divisors of {self.n_heads})"
            )
        _check_choice("norm", self.norm, NORMS)
        _check_choice("position", self.position, POSITIONS)
        _check_choice("mlp", self.mlp, MLPS)
        _check_choice("norm_placement", self.norm_placement, NORM_PLACEMENTS)
        if self.position == "rope" and self.qk_head_dim % 2:
            raise ConfigError(
                f"qk_head_dim={self.qk_head_dim} must be even with position='rope' "
                "(rotate-half pairs dimension i with i + qk_head_dim/2)"
            )
        for name in ("norm_eps", "rope_theta", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name} must be a number, got {value!r}")
            if not (is_finite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
        if self.rope_theta <= 1:
            raise ConfigError(f"rope_theta must be > 1, got {self.rope_theta!r}")
        for name in (
            "final_norm",
            "attn_bias",
            "attn_out_bias",
            "mlp_bias",
            "tie_embeddings",
            "causal",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def group_size(self) -> int:
        """Query heads per kv head."""
        return self.n_heads // self.n_kv_heads

    def num_parameters(self) -> int:
        """The parameter count of ``Transformer(self)``, from the sizes alone (nothing is
        built, so it is cheap for any size)."""
        d, ffn = self.hidden, self.ffn
        norm = d * (2 if self.norm == "layer" else 1)
        q, kv = self.n_heads * self.qk_head_dim, self.n_kv_heads * self.qk_head_dim
        v = self.n_kv_heads * self.v_head_dim
        attn = d * (q + kv + v) + self.n_heads * self.v_head_dim * d
        attn += (q + kv + v) * self.attn_bias + d * self.attn_out_bias
        up = 2 if self.mlp == "swiglu" else 1
        mlp = (up + 1) * d * ffn + (up * ffn + d) * self.mlp_bias
        embeddings = self.vocab_size * d + self.max_seq_len * d * (self.position == "learned")
        return (
            embeddings
            + norm * (self.norm_placement == "post")
            + self.n_layers * (2 * norm + attn + mlp)
            + norm * self.final_norm
            + self.vocab_size * d * (not self.tie_embeddings)
        )

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, complete: bool = False) -> ModelConfig:
        """Build from a mapping; unknown keys raise ``ConfigError`` naming them.

        ``complete``: every field must be present, as in a saved config (where a missing one
        would silently take its default and describe another model)."""
        if not isinstance(data, dict):
            raise ConfigError(f"a model config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; allowed: {sorted(known)}")
        missing = sorted(known - set(data))
        if complete and missing:
            raise ConfigError(f"missing config field(s) {missing}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def size_differences(self, other: ModelConfig, label: str) -> str:
        """The size fields where this config differs from ``other``, for an error message:
        ``"hidden=64 (<label> 96), ffn=…"``; empty when every size agrees."""
        return ", ".join(
            f"{name}={getattr(self, name)} ({label} {getattr(other, name)})"
            for name in SIZE_FIELDS
            if getattr(self, name) != getattr(other, name)
        )


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE:
        raise ConfigError(f"{name} must be an integer in [1, {MAX_SIZE}], got {value!r}")


def seed_arg(text: str) -> int:
    """A ``--seed`` flag's value (an argparse ``type``): an integer in [0, ``MAX_SEED``]."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {MAX_SEED}], got {text!r}")
    return seed


def is_finite(value: int | float) -> bool:
    """False for inf, nan and an int too large for a float (where ``math.isfinite`` raises)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def is_finite_number(value: object) -> bool:
    """A JSON/TOML number that is finite: an int or float (not a bool) that ``is_finite``."""
    return isinstance(value, int | float) and not isinstance(value, bool) and is_finite(value)


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
