"""Growth to a target size: plan the expansions, compose them, apply to a model or in place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from growformer.config import SIZE_FIELDS, ConfigError, ModelConfig
from growformer.expand._ops import (
    WIDTH_INITS,
    Expansion,
    GrowthError,
    Intermediate,
    Step,
    apply_steps,
    check_choice,
    check_not_smaller,
)
from growformer.expand.head_dims import plan_qk_head_dim, plan_v_head_dim
from growformer.expand.heads import plan_heads
from growformer.expand.hidden import plan_hidden
from growformer.expand.layers import LAYER_INITS, check_layers, check_where, insert_layers
from growformer.expand.mlp import plan_ffn
from growformer.expand.positions import plan_positions
from growformer.model import Transformer, check_fits_in_memory, model_from_state
from growformer.optimizer import STATE_POLICIES, carry_optimizer_state_
from growformer.resize import ResizeRecord

# Fields that growth itself changes (qk growth with RoPE moves the base; hidden growth scales eps).
_DERIVED_FIELDS = ("rope_theta", "norm_eps", "init_std")


@dataclass(frozen=True)
class GrowthOptions:
    """How new capacity is initialized.

    ``layer_init``: ``identity`` or ``copy`` (see ``insert_layers``). ``where``: ``end``,
    ``middle``, ``interleave`` or explicit new-layer positions. ``width_init``: ``zero`` or
    ``tile`` for MLP width, heads and value dim (hidden and qk dims always use zero-style fills).
    ``seed`` seeds the random entries. ``approximate`` allows the non-exact hidden and layer
    growth of post-norm models.
    """

    layer_init: str = "identity"
    where: str | tuple[int, ...] = "end"
    width_init: str = "zero"
    seed: int = 0
    approximate: bool = False

    def __post_init__(self) -> None:
        check_choice("layer_init", self.layer_init, LAYER_INITS)
        check_choice("width_init", self.width_init, WIDTH_INITS)
        check_where(self.where)
        if not isinstance(self.approximate, bool):
            raise GrowthError(f"approximate must be True or False; got {self.approximate!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise GrowthError(f"seed must be an int; got {self.seed!r}")


def resolve_target(config: ModelConfig, target: ModelConfig | Mapping[str, int]) -> ModelConfig:
    """The config to grow ``config`` into, validated before any weight is touched.

    ``target`` is a mapping of size fields (``SIZE_FIELDS``; the others keep their value) or a
    full ``ModelConfig`` whose non-size fields must match (except those growth derives:
    ``rope_theta``, ``norm_eps``, ``init_std``). Raises ``GrowthError`` naming the field.
    """
    if isinstance(target, ModelConfig):
        differing = [
            f.name
            for f in fields(ModelConfig)
            if f.name not in SIZE_FIELDS + _DERIVED_FIELDS
            and getattr(target, f.name) != getattr(config, f.name)
        ]
        if differing:
            raise GrowthError(
                f"target differs in non-size field(s) {differing}; growth changes only "
                f"{', '.join(SIZE_FIELDS)}"
            )
        sizes = {name: getattr(target, name) for name in SIZE_FIELDS}
    elif not isinstance(target, Mapping):
        raise GrowthError(
            f"target must be a ModelConfig or a mapping of size fields to sizes; got "
            f"{type(target).__name__}"
        )
    else:
        unknown = sorted(set(target) - set(SIZE_FIELDS), key=str)
        if unknown:
            raise GrowthError(
                f"unknown target field(s) {unknown}; allowed: {', '.join(SIZE_FIELDS)}"
            )
        sizes = {name: value for name, value in target.items() if value is not None}
        if "n_kv_heads" not in sizes and "n_heads" in sizes and config.n_kv_heads == config.n_heads:
            sizes["n_kv_heads"] = sizes["n_heads"]
    try:
        resolved = config.replace(**sizes)
    except ConfigError as err:
        raise GrowthError(f"invalid target: {err}") from err
    for name in SIZE_FIELDS:
        check_not_smaller(name, getattr(config, name), getattr(resolved, name))
    return resolved


def expand_state(
    config: ModelConfig,
    state: Mapping[str, Tensor],
    target: ModelConfig | Mapping[str, int],
    options: GrowthOptions | None = None,
) -> Expansion:
    """Compose the expansions that take ``config`` to ``target``; one record for all of them.

    Order: hidden, qk dim, value dim, heads, MLP width, positions, layers. Head dims before
    heads and layers last, so new heads and layers are created at their final size with fully
    random free weights: every new entry then gets gradient within two optimizer steps.
    Every step is planned (and validated) before any weight is read; the width steps then run
    in one pass per tensor (``apply_steps``), bitwise equal to running them one at a time, and
    new layers are added to the result. Unchanged tensors pass through by reference.
    """
    o = options or GrowthOptions()
    goal = resolve_target(config, target)
    if state:  # before planning, whose index maps are as long as the new sizes
        some = next(iter(state.values()))
        check_fits_in_memory(goal, some.dtype, some.device, "the grown model")
    steps = _plan(config, goal, o)
    if steps:
        current = apply_steps(config, state, steps, o.seed)
    else:
        current = Expansion(config, dict(state), ResizeRecord.identity(state))
    if goal.n_layers != current.config.n_layers:
        layers = insert_layers(
            current.config,
            current.state,
            goal.n_layers,
            where=o.where,
            init=o.layer_init,
            seed=o.seed,
            approximate=o.approximate,
        )
        current = _then(current, layers)
    return Expansion(current.config, dict(current.state), current.record)


def check_growth(
    config: ModelConfig,
    target: ModelConfig | Mapping[str, int],
    options: GrowthOptions | None = None,
) -> ModelConfig:
    """The config ``expand_state`` would grow ``config`` into, planned and validated from the
    configs alone (no weights): raises the ``GrowthError`` growing would raise."""
    goal = resolve_target(config, target)
    _plan(config, goal, options or GrowthOptions())
    return goal


def _plan(config: ModelConfig, goal: ModelConfig, o: GrowthOptions) -> list[Step]:
    """The width steps from ``config`` to the resolved ``goal``; the layer growth is checked."""
    steps: list[Step] = []

    def now() -> ModelConfig:
        return steps[-1].config if steps else config

    if goal.hidden != now().hidden:
        steps.append(plan_hidden(now(), goal.hidden, approximate=o.approximate))
    if goal.qk_head_dim != now().qk_head_dim:
        steps.append(plan_qk_head_dim(now(), goal.qk_head_dim))
    if goal.v_head_dim != now().v_head_dim:
        steps.append(plan_v_head_dim(now(), goal.v_head_dim, init=o.width_init))
    if (goal.n_heads, goal.n_kv_heads) != (now().n_heads, now().n_kv_heads):
        steps.append(plan_heads(now(), goal.n_heads, goal.n_kv_heads, init=o.width_init))
    if goal.ffn != now().ffn:
        steps.append(plan_ffn(now(), goal.ffn, init=o.width_init))
    if goal.max_seq_len != now().max_seq_len:
        steps.append(plan_positions(now(), goal.max_seq_len))
    if goal.n_layers != now().n_layers:
        check_layers(now(), goal.n_layers, o.where, o.layer_init, o.approximate)
    return steps


def _then(current: Expansion, later: Expansion) -> Expansion:
    """Compose; the weights become an ``Intermediate`` that the next step may release."""
    return Expansion(later.config, Intermediate(later.state), current.record.then(later.record))


def _check_transformer(model: object) -> None:
    if not isinstance(model, Transformer):
        raise TypeError(
            f"model must be a growformer Transformer, got {type(model).__name__}; Hugging Face "
            "models grow through growformer.hf (folders) or growformer.integrations (live)"
        )


def grow(
    model: Transformer,
    target: ModelConfig | Mapping[str, int],
    options: GrowthOptions | None = None,
) -> tuple[Transformer, ResizeRecord]:
    """A new, larger model computing the same function as ``model``, and the resize record.

    ``model`` is left unchanged and shares no storage with the result.
    """
    _check_transformer(model)
    source = model.state_dict()
    with torch.no_grad():
        result = expand_state(model.config, source, target, options)
    source_storage = {t.untyped_storage().data_ptr() for t in source.values()}
    state = {
        name: t.clone() if t.untyped_storage().data_ptr() in source_storage else t
        for name, t in result.state.items()
    }
    grown = model_from_state(result.config, state)
    _follow_requires_grad(grown, dict(model.named_parameters()), result.record)
    grown.train(model.training)
    return grown, result.record


def grow_(
    model: Transformer,
    optimizer: torch.optim.Optimizer | None,
    target: ModelConfig | Mapping[str, int],
    options: GrowthOptions | None = None,
    *,
    state_policy: str = "transform",
    moment_powers: Mapping[str, int] | None = None,
) -> ResizeRecord:
    """Grow ``model`` in place and rewrite ``optimizer`` to match, between two training steps.

    Unchanged weights keep their Parameter objects; changed ones become new Parameters (their
    ``requires_grad`` follows the source). The optimizer's param groups point at the new
    Parameters and its state is carried through the record (``state_policy="transform"``:
    moments scaled, new entries zero, step kept) or dropped (``"reset"``). ``moment_powers``
    adds moment state keys beyond ``MOMENT_POWERS`` (key → 1 for a first moment, 2 for a
    second), as ``carry_optimizer_state_`` takes them. On any error (a bad
    target, optimizer state with no known transform) neither the model nor the optimizer
    changes. Hooks registered on replaced submodules do not carry over.
    """
    _check_transformer(model)
    with torch.no_grad():
        result = expand_state(model.config, dict(model.named_parameters()), target, options)
    return resize_(model, optimizer, result, state_policy=state_policy, moment_powers=moment_powers)


def resize_(
    model: Transformer,
    optimizer: torch.optim.Optimizer | None,
    result: Expansion,
    *,
    state_policy: str = "transform",
    moment_powers: Mapping[str, int] | None = None,
) -> ResizeRecord:
    """Swap ``result`` (any expansion of ``model``'s parameters) into the live model and carry
    ``optimizer`` through its record; the contract of ``grow_``, for any ``Expansion``."""
    check_choice("state_policy", state_policy, STATE_POLICIES)
    old_params = dict(model.named_parameters())
    skeleton = model_from_state(result.config, result.state)
    _follow_requires_grad(skeleton, old_params, result.record)
    new_params = dict(skeleton.named_parameters())
    if optimizer is not None:
        carry_optimizer_state_(
            optimizer,
            old_params,
            new_params,
            result.record,
            policy=state_policy,
            moment_powers=moment_powers,
        )
    model.config = skeleton.config
    for name, child in skeleton.named_children():
        setattr(model, name, child)
    model.train(model.training)
    return result.record


def _follow_requires_grad(
    model: Transformer, old_params: Mapping[str, torch.nn.Parameter], record: ResizeRecord
) -> None:
    """Each parameter of ``model`` is trainable when the one it grew from was (a frozen weight
    stays frozen, and a new layer's weights follow their role's source)."""
    for name, param in model.named_parameters():
        param.requires_grad_(old_params[record[name].source].requires_grad)
