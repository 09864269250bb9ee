"""The adapter contract every Hugging Face family follows, and the conversion they share.

A family maps its checkpoint names to canonical names with three small rename tables (top-level
tensors, per-layer tensors, head tensors outside the base model), each entry a ``Rule``: one
Hugging Face tensor ⇄ the canonical tensors it holds, with a ``split`` and its exact inverse
``join`` for the few special cases (GPT-2's transposed Conv1D weights and fused Q/K/V). The
same tables drive both directions, so a round trip Hugging Face → canonical → Hugging Face
reproduces every tensor bit for bit.

Tensors a family has that the canonical model lacks (BERT's token-type embeddings, pooler and
MLM head; a decoder's sequence-classification ``score``) are carried as *extras* under their
Hugging Face names and grown with the model. A checkpoint with no LM head (a bare base model, or
a sequence classifier) runs in canonical form with the token embedding as its W_U and is
written back with no LM head. Tied
duplicates (an ``lm_head.weight`` stored although tied) are checked equal on reading and written
again only where the source had them. Legacy buffers that transformers ignores on load (GPT-2's
causal-mask ``attn.bias``, old ``rotary_emb.inv_freq``) are dropped.
"""

from __future__ import annotations

import dataclasses
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from growformer.config import ConfigError, ModelConfig, is_finite_number
from growformer.expand import GrowthOptions, expand_state, resolve_target
from growformer.expand._ops import DimChange, Rng, grow_tensor, prefix_index
from growformer.model import Transformer, check_weight_dtypes, model_from_state
from growformer.model_io import CheckpointError
from growformer.resize import ResizeRecord

_MISSING = object()


class FormatError(CheckpointError):
    """A Hugging Face config, checkpoint or target that a family cannot represent; the message
    names the field and what is allowed."""


def _same(t: Tensor, config: ModelConfig) -> tuple[Tensor, ...]:
    return (t,)


def _only(ts: tuple[Tensor, ...], config: ModelConfig) -> Tensor:
    return ts[0]


@dataclass(frozen=True)
class Rule:
    """One Hugging Face tensor ⇄ the canonical tensors it holds (names relative to the layer
    for per-layer rules). ``split`` returns views where it can; ``join`` is its exact inverse."""

    canonical: tuple[str, ...]
    split: Callable[[Tensor, ModelConfig], tuple[Tensor, ...]] = _same
    join: Callable[[tuple[Tensor, ...], ModelConfig], Tensor] = _only


def same(name: str) -> Rule:
    """A plain rename."""
    return Rule((name,))


def renames(pairs: Mapping[str, str]) -> dict[str, Rule]:
    """A rename table: Hugging Face name → ``same(canonical name)``."""
    return {hf: same(canonical) for hf, canonical in pairs.items()}


@dataclass(frozen=True)
class Source:
    """What writing a canonical model back in its family's format needs from the source.

    ``hf_config``: the source's config (``config.json`` contents; ``architectures`` names the
    model class). ``prefix``: the base-model prefix its names used (``"model."``, or ``""`` for
    a bare base model). ``duplicates``: tied copies it stored explicitly. ``kept``: source
    tensors a family needs to invert a conversion exactly (BERT: the position table before the
    token-type-0 embedding was folded into it). ``headless``: the source has no LM head (a bare
    base model, a classifier); its canonical model runs with the embedding as W_U, but what
    it outputs is the final hidden state.
    """

    family: Family
    hf_config: Mapping[str, Any]
    prefix: str
    duplicates: tuple[str, ...] = ()
    kept: Mapping[str, Tensor] = field(default_factory=dict)
    headless: bool = False

    def after_growth(self, old: ModelConfig, new: ModelConfig, record: ResizeRecord) -> Source:
        """This source with its config's per-layer settings following the layers of a growth
        from ``old`` to ``new`` (``record``: where each grown layer came from)."""
        if new.n_layers == old.n_layers:
            return self
        layers = [
            int(record[f"layers.{i}.attn.q.weight"].source.split(".")[1])
            for i in range(new.n_layers)
        ]
        return dataclasses.replace(
            self, hf_config=self.family.config_for_layers(self.hf_config, layers)
        )

    @property
    def architecture(self) -> str:
        """The transformers class of the source: the one its config names, else the family's."""
        names = self.hf_config.get("architectures") or [self.family.architecture]
        return names[0]


@dataclass(frozen=True)
class Canonical:
    """A Hugging Face model in canonical form: the canonical config and weights, the family's
    extra tensors by Hugging Face name, and its ``Source``.

    ``model()`` runs it (the Transformer shares these tensors); ``grow`` grows weights and extras
    together; ``with_model`` takes the weights of a canonical model trained or grown elsewhere.
    """

    config: ModelConfig
    state: dict[str, Tensor]
    extras: dict[str, Tensor]
    source: Source

    @property
    def family(self) -> Family:
        return self.source.family

    def model(self) -> Transformer:
        """The canonical Transformer over these tensors (no copy)."""
        return model_from_state(self.config, self.state)

    def grow(
        self, target: ModelConfig | Mapping[str, int], options: GrowthOptions | None = None
    ) -> Canonical:
        """Grow to ``target`` (see ``growformer.expand.expand_state``); extras follow.

        Growth the family cannot store is allowed here; ``write_folder`` and ``from_canonical``
        refuse it. Unchanged tensors are shared with ``self``.
        """
        with torch.no_grad():
            result = expand_state(self.config, self.state, target, options)
            extras = self.family.grow_extras(self.config, result.config, self.extras, self.source)
        return dataclasses.replace(
            self,
            config=result.config,
            state=result.state,
            extras=extras,
            source=self.source.after_growth(self.config, result.config, result.record),
        )

    def with_model(self, model: Transformer) -> Canonical:
        """The same source with ``model``'s weights; its sizes may only be larger (extras grow
        to match). Raises ``GrowthError`` when the model is of another kind."""
        goal = resolve_target(self.config, model.config)
        state = {name: t.detach() for name, t in model.state_dict().items()}
        with torch.no_grad():
            extras = self.family.grow_extras(self.config, goal, self.extras, self.source)
        return dataclasses.replace(self, config=model.config, state=state, extras=extras)


# A decoder's sequence-classification head (``…ForSequenceClassification``): it reads the final
# norm's output, whose new coordinates under hidden growth are zero, so zero new columns keep
# the class logits.
SCORE_HEAD: dict[str, tuple[tuple[int, str], ...]] = {"score.weight": ((1, "zero"),)}


class Family(ABC):
    """One Hugging Face model family: its rename tables and the config mapping.

    Subclasses set the class attributes and implement ``config_from_hf``, ``check_storable``
    and ``config_to_hf``; BERT also overrides the read/write hooks and ``grow_extras``.
    """

    model_type: ClassVar[str]
    architecture: ClassVar[str]  # the model class when a config names none
    base_prefix: ClassVar[str]  # the base model's prefix in head-model checkpoints
    layer_prefix: ClassVar[str]  # per-layer names start with f"{layer_prefix}{i}."
    top: ClassVar[dict[str, Rule]]
    layer: ClassVar[dict[str, Rule]]
    head: ClassVar[dict[str, Rule]] = {}  # names outside the base model
    # Extras with hidden-sized dimensions (names relative to the base prefix; heads outside the
    # base model as they are) → each such dimension and the fill of its new entries under
    # hidden growth. Dimension 1 reads the hidden state (shrinking rescales it) unless the extra
    # is in ``extra_writers``.
    extra_hidden_dims: ClassVar[dict[str, tuple[tuple[int, str], ...]]] = {}
    extra_writers: ClassVar[frozenset[str]] = frozenset()
    embedding: ClassVar[str]  # the token embedding's name, relative to the base model
    tied_by_default: ClassVar[bool] = False  # tie_word_embeddings when config.json omits it
    ignored: ClassVar[re.Pattern[str] | None] = None  # legacy buffers transformers ignores

    # -- config ---------------------------------------------------------------------------------

    @abstractmethod
    def config_from_hf(self, hf: Mapping[str, Any]) -> ModelConfig:
        """The canonical config; ``FormatError`` names a setting the canonical model lacks."""

    @abstractmethod
    def check_storable(self, config: ModelConfig) -> None:
        """Raise ``FormatError`` when the family's config cannot describe ``config``."""

    @abstractmethod
    def config_to_hf(self, config: ModelConfig, source: Mapping[str, Any]) -> dict:
        """``source`` (the source's config.json dict) updated to describe ``config`` (after
        ``check_storable``). Sizes are Python ints, eps Python floats."""

    def config_for_layers(self, hf: Mapping[str, Any], layers: Sequence[int]) -> dict:
        """``hf`` for a model whose layer i comes from the source's layer ``layers[i]`` (the one
        it was grown from, or kept by shrinking): settings of a layer follow it. The default
        has none."""
        return dict(hf)

    def ties(self, hf: Mapping[str, Any], prefix: str) -> dict[str, str]:
        """Tied names: duplicate → the name of the tensor it is tied to."""
        if flag(hf, "tie_word_embeddings", self.model_type, self.tied_by_default):
            return {"lm_head.weight": prefix + self.embedding}
        return {}

    @staticmethod
    def relative(name: str, prefix: str) -> str:
        """``name`` without the base-model ``prefix`` (a head's name as it is)."""
        return name[len(prefix) :] if prefix and name.startswith(prefix) else name

    def is_extra(self, name: str, prefix: str) -> bool:
        """Whether ``name`` is a family tensor the canonical model lacks (carried as is)."""
        return self.relative(name, prefix) in self.extra_hidden_dims

    def grow_extras(
        self, old: ModelConfig, new: ModelConfig, extras: dict[str, Tensor], source: Source
    ) -> dict[str, Tensor]:
        """The extras of a model grown from ``old`` to ``new``: under hidden growth, each
        hidden-sized dimension filled as ``extra_hidden_dims`` says."""
        if new.hidden == old.hidden:
            return extras
        index = prefix_index(old.hidden, new.hidden)
        out = {}
        for name, tensor in extras.items():
            for dim, fill in self.extra_hidden_dims.get(self.relative(name, source.prefix), ()):
                tensor = grow_tensor(tensor, DimChange(dim, index, fill), Rng(0))
            out[name] = tensor
        return out

    # -- weights --------------------------------------------------------------------------------

    def rules(
        self, config: ModelConfig, prefix: str
    ) -> Iterator[tuple[str, tuple[str, ...], Rule]]:
        """Every (Hugging Face name, canonical names, rule) of a model of ``config``."""
        for hf, rule in self.top.items():
            yield prefix + hf, rule.canonical, rule
        for i in range(config.n_layers):
            for hf, rule in self.layer.items():
                names = tuple(f"layers.{i}.{name}" for name in rule.canonical)
                yield f"{prefix}{self.layer_prefix}{i}.{hf}", names, rule
        for hf, rule in self.head.items():
            yield hf, rule.canonical, rule

    def detect_prefix(self, names: list[str]) -> str:
        """The base-model prefix the names use: ``base_prefix`` or none (a bare base model)."""
        return self.base_prefix if any(n.startswith(self.base_prefix) for n in names) else ""

    def from_hf(self, hf_config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> Canonical:
        """Convert a checkpoint (name → tensor, e.g. a state dict or safetensors shards).

        Canonical tensors are views of the given ones where the layout allows. Weights of
        several floating-point dtypes (norms kept in float32 beside bfloat16 matrices) are all
        cast to the widest of them, float32 or float64, which loses nothing. Raises
        ``FormatError`` for unsupported settings and ``CheckpointError`` naming missing,
        unexpected or misshapen weights, or tied weights that differ.
        """
        config = self.config_from_hf(hf_config)
        prefix = self.detect_prefix(list(tensors))
        headless = not any(h in tensors for h in self.head) and (
            not prefix or any(self.is_extra(n, prefix) for n in tensors)
        )
        if headless and not config.tie_embeddings:
            # A bare base model (LlamaModel) or a sequence classifier has no LM head: it runs
            # with the embedding as W_U, and is written back with none.
            config = config.replace(tie_embeddings=True)
        ties = self.ties(hf_config, prefix)
        by_name = {hf: (names, rule) for hf, names, rule in self.rules(config, prefix)}
        with torch.device("meta"):
            expected = {n: tuple(p.shape) for n, p in Transformer(config).named_parameters()}
        state: dict[str, Tensor] = {}
        extras: dict[str, Tensor] = {}
        duplicates: list[str] = []
        unexpected: list[str] = []
        for name, tensor in tensors.items():
            if name in ties:
                duplicates.append(name)
            elif name in by_name:
                names, rule = by_name[name]
                _check_joined_shape(name, tensor, names, rule, config, expected)
                state.update(zip(names, rule.split(tensor, config), strict=True))
            elif self.is_extra(name, prefix):
                extras[name] = tensor
            elif self.ignored is None or not self.ignored.search(name):
                unexpected.append(name)
        for name in duplicates:
            tied_to = ties[name]
            if tied_to not in tensors:
                raise CheckpointError(f"{name} is tied to {tied_to}, which is missing")
            if not torch.equal(tensors[name], tensors[tied_to]):
                raise CheckpointError(
                    f"{name} is tied to {tied_to} (tie_word_embeddings) but differs from it"
                )
        source = Source(self, dict(hf_config), prefix, tuple(duplicates), headless=headless)
        kept = self.after_read(config, state, extras, source)
        source = dataclasses.replace(source, kept=kept)
        self._check_weights(state, expected, by_name, unexpected)
        try:
            check_weight_dtypes(state)
        except ValueError as err:
            raise CheckpointError(str(err)) from err
        return Canonical(config, _one_float_dtype(state), extras, source)

    def to_hf(self, canonical: Canonical) -> dict[str, Tensor]:
        """The checkpoint of ``canonical`` under its source's names (and extras, and the tied
        duplicates the source stored). Raises ``FormatError`` when the family cannot store it."""
        config = canonical.config
        self.check_storable(config)
        state = dict(canonical.state)
        source = canonical.source
        out: dict[str, Tensor] = {}
        for hf, names, rule in self.rules(config, source.prefix):
            present = [n in state for n in names]
            if any(present):
                if not all(present):
                    missing = [n for n, p in zip(names, present, strict=True) if not p]
                    raise CheckpointError(f"{hf} needs the canonical weights {missing}")
                out[hf] = rule.join(tuple(state.pop(n) for n in names), config)
        out.update(self.before_write(config, state, canonical.extras, source))
        if state:
            raise FormatError(
                f"{self.model_type} has no place for the canonical weights {sorted(state)}"
            )
        for duplicate, tied_to in self.ties(source.hf_config, source.prefix).items():
            if duplicate in source.duplicates:
                out[duplicate] = out[tied_to].clone()
        return out

    def after_read(
        self,
        config: ModelConfig,
        state: dict[str, Tensor],
        extras: dict[str, Tensor],
        source: Source,
    ) -> dict[str, Tensor]:
        """Adjust the freshly split weights in place; returns the ``Source.kept`` tensors."""
        return {}

    def before_write(
        self,
        config: ModelConfig,
        state: dict[str, Tensor],
        extras: Mapping[str, Tensor],
        source: Source,
    ) -> dict[str, Tensor]:
        """The Hugging Face tensors beyond the rule tables (the extras, by default); may consume
        entries of ``state`` that no rule covers."""
        return dict(extras)

    def _check_weights(
        self,
        state: Mapping[str, Tensor],
        expected: Mapping[str, tuple[int, ...]],
        by_name: Mapping[str, tuple[tuple[str, ...], Rule]],
        unexpected: list[str],
    ) -> None:
        hf_of = {c: hf for hf, (names, _) in by_name.items() for c in names}
        missing = sorted(hf_of.get(n, n) for n in expected if n not in state)
        unexpected = sorted(unexpected + [hf_of[n] for n in state if n not in expected])
        if missing or unexpected:
            raise CheckpointError(
                f"the weights do not match config.json ({self.model_type}): missing {missing}, "
                f"unexpected {unexpected}"
            )
        for name, shape in expected.items():
            if tuple(state[name].shape) != shape:
                raise CheckpointError(
                    f"{hf_of.get(name, name)} holds {name} of shape {tuple(state[name].shape)}, "
                    f"config.json needs {shape}"
                )


def _check_joined_shape(
    name: str,
    tensor: Tensor,
    names: tuple[str, ...],
    rule: Rule,
    config: ModelConfig,
    expected: Mapping[str, tuple[int, ...]],
) -> None:
    """Before a rule that splits (GPT-2's fused Q/K/V) cuts ``tensor``: ``CheckpointError``
    unless it has the shape that joining the canonical weights of ``config`` gives."""
    if rule.split is _same or not all(n in expected for n in names):
        return
    with torch.device("meta"):
        needed = tuple(rule.join(tuple(torch.empty(expected[n]) for n in names), config).shape)
    if tuple(tensor.shape) != needed:
        raise CheckpointError(f"{name} has shape {tuple(tensor.shape)}, config.json needs {needed}")


# -- helpers for the config mappings ---------------------------------------------------------------


# Canonical size field → config.json key, as BERT, Llama, Qwen2 and Mistral name them.
SIZE_KEYS: dict[str, str] = {
    "max_seq_len": "max_position_embeddings",
    "n_layers": "num_hidden_layers",
    "hidden": "hidden_size",
    "n_heads": "num_attention_heads",
    "ffn": "intermediate_size",
}


def sizes_from_hf(
    hf: Mapping[str, Any], family: str, keys: Mapping[str, str] = SIZE_KEYS
) -> dict[str, Any]:
    """The canonical sizes stored under ``keys`` (field → config.json key), each ``require``d."""
    return {field: require(hf, key, family) for field, key in keys.items()}


def sizes_to_hf(config: ModelConfig, keys: Mapping[str, str] = SIZE_KEYS) -> dict[str, int]:
    """``config``'s sizes under ``keys`` (field → config.json key), as Python ints."""
    return {key: int(getattr(config, field)) for field, key in keys.items()}


def require(hf: Mapping[str, Any], key: str, family: str) -> Any:
    """``hf[key]``, or a ``FormatError`` naming the missing key."""
    value = hf.get(key, _MISSING)
    if value is _MISSING or value is None:
        raise FormatError(f"{family} config.json lacks {key!r}")
    return value


def flag(hf: Mapping[str, Any], key: str, family: str, default: bool) -> bool:
    """The boolean setting ``hf[key]`` (``default`` when absent or null); ``FormatError``
    unless it is a JSON boolean (a string such as ``"no"`` would read as true)."""
    value = hf.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise FormatError(f"{family} config.json: {key} must be true or false; got {value!r}")
    return value


def number(value: Any, key: str, family: str, default: float) -> float:
    """The numeric setting ``value``, read from config.json's ``key`` (``default`` when absent
    or null); ``FormatError`` unless it is a finite JSON number."""
    if value is None:
        return default
    if not is_finite_number(value):
        raise FormatError(f"{family} config.json: {key} must be a finite number; got {value!r}")
    return float(value)


def check_setting(family: str, key: str, value: Any, allowed: tuple[Any, ...]) -> None:
    """Raise ``FormatError`` unless a Hugging Face setting has one of the supported values."""
    if value not in allowed:
        raise FormatError(
            f"{family} config.json: {key}={value!r} is not supported; allowed: "
            f"{', '.join(repr(a) for a in allowed)}"
        )


def canonical_config(family: str, **fields: Any) -> ModelConfig:
    """``ModelConfig(**fields)``, with a ``ConfigError`` reported as a ``FormatError``."""
    try:
        return ModelConfig(**fields)
    except (ConfigError, TypeError) as err:
        raise FormatError(f"{family} config.json describes no valid model: {err}") from err


def _one_float_dtype(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with mixed floating-point weights cast to the widest dtype (float64 when one
    is, else float32); unchanged when they share one."""
    floats = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(floats) <= 1:
        return state
    widest = torch.float64 if torch.float64 in floats else torch.float32
    return {n: t.to(widest) if t.is_floating_point() else t for n, t in state.items()}
