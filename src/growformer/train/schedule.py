"""Growth schedules as data: the starting size and the growth events of a run.

A ``Schedule`` says what model a run starts from (size fields smaller than the target's, and a
shorter training sequence if wanted) and at which steps it grows, how (exact expansions, or
depth by copying whole layers: ``stack``, ``midas``, ``interpolate``; or ``lag``: the candidate
growth with the lowest loss a few steps after it) and to what size. Named schedules build one
from the target config and the step budget: ``scratch``, ``compound``, ``stack``, ``midas``,
``exact``, ``apollo``, ``lag-stack``. ``Schedule.plan`` validates it against the target before
training starts.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from growformer.config import SIZE_FIELDS, ConfigError, ModelConfig, is_finite
from growformer.expand import (
    BLOCK_POSITIONS,
    STACK_METHODS,
    GrowthError,
    GrowthOptions,
    check_growth,
    layer_order,
)
from growformer.optimizer import STATE_POLICIES
from growformer.train.apollo import stage_depths
from growformer.train.config import TrainConfig, TrainConfigError, check_int

GROWTH_METHODS = ("exact", *STACK_METHODS, "lag")
SCHEDULES = ("scratch", "compound", "stack", "midas", "exact", "apollo", "lag-stack")
DEPTH_SAMPLING = (None, "lvps")

# The depth growths LAG chooses among, by name: a copy order, or exact new layers.
LAG_CANDIDATES: dict[str, dict[str, Any]] = {
    "stack": {"method": "stack"},
    "midas": {"method": "midas"},
    "midas-first": {"method": "midas", "block_at": "first"},
    "midas-last": {"method": "midas", "block_at": "last"},
    "interpolate": {"method": "interpolate"},
    "identity": {"method": "exact", "layer_init": "identity"},
    "copy": {"method": "exact", "layer_init": "copy"},
}


@dataclass(frozen=True)
class GrowthEvent:
    """Grow before the batch of ``step``.

    ``sizes``: absolute sizes (``SIZE_FIELDS``) after the event; fields left out keep their
    value. ``method``: how new layers are made, ``exact`` (``insert_layers`` with
    ``options``), a copy order (``stack``, ``midas`` with ``midas_block`` and ``block_at``,
    ``interpolate``), or ``lag``: each of ``candidates`` (names in ``LAG_CANDIDATES``) is
    tried for ``lag_steps`` steps from here and the one with the lowest validation loss then is
    applied. Width always grows exactly. ``seq_len``: the training sequence length from this
    step on.
    ``state_policy``: ``transform`` carries the optimizer state, ``reset`` drops it.
    ``rewarm_steps``: the learning rate ramps linearly from 0 back to the schedule over that many
    steps after the event.
    """

    step: int
    sizes: Mapping[str, int] = field(default_factory=dict)
    seq_len: int | None = None
    method: str = "exact"
    midas_block: int = 1
    block_at: str = "middle"
    options: GrowthOptions = field(default_factory=GrowthOptions)
    state_policy: str = "transform"
    rewarm_steps: int = 0
    candidates: tuple[str, ...] = ()
    lag_steps: int = 0

    def __post_init__(self) -> None:
        where = f"growth event at step {self.step}"
        unknown = sorted(set(self.sizes) - set(SIZE_FIELDS))
        if unknown:
            raise TrainConfigError(
                f"{where}: unknown size field(s) {unknown}; allowed: {', '.join(SIZE_FIELDS)}"
            )
        if self.method not in GROWTH_METHODS:
            raise TrainConfigError(
                f"{where}: method must be one of {', '.join(GROWTH_METHODS)}; got {self.method!r}"
            )
        if self.state_policy not in STATE_POLICIES:
            raise TrainConfigError(
                f"{where}: state_policy must be one of {', '.join(STATE_POLICIES)}; "
                f"got {self.state_policy!r}"
            )
        if self.block_at not in BLOCK_POSITIONS:
            raise TrainConfigError(
                f"{where}: block_at must be one of {', '.join(BLOCK_POSITIONS)}; "
                f"got {self.block_at!r}"
            )
        for name in ("midas_block", "rewarm_steps", "lag_steps"):
            check_int(f"{where}: {name}", getattr(self, name), minimum=0)
        if self.method != "lag":
            if self.candidates or self.lag_steps:
                raise TrainConfigError(f"{where}: candidates and lag_steps need method = 'lag'")
            return
        unknown = [c for c in self.candidates if c not in LAG_CANDIDATES]
        if unknown:
            raise TrainConfigError(
                f"{where}: unknown candidate(s) {unknown}; allowed: {', '.join(LAG_CANDIDATES)}"
            )
        if len(set(self.candidates)) < 2 or self.lag_steps < 1:
            raise TrainConfigError(
                f"{where}: method 'lag' needs at least two distinct candidates among "
                f"{', '.join(LAG_CANDIDATES)} (got {list(self.candidates)}) and lag_steps ≥ 1 "
                f"(got {self.lag_steps})"
            )

    def candidate(self, name: str) -> GrowthEvent:
        """The concrete event of LAG candidate ``name``: this event's step, sizes and policies,
        with the candidate's method (exact candidates put new layers between the old ones)."""
        spec = dict(LAG_CANDIDATES[name])
        layer_init = spec.pop("layer_init", None)
        options = self.options
        if layer_init is not None:
            options = dataclasses.replace(options, layer_init=layer_init, where="interleave")
        return dataclasses.replace(self, options=options, candidates=(), lag_steps=0, **spec)


@dataclass(frozen=True)
class Stage:
    """A validated stretch of training: from ``start_step``, this model and sequence length;
    ``event`` is the growth that begins it (None for the first stage)."""

    index: int
    start_step: int
    config: ModelConfig
    seq_len: int
    event: GrowthEvent | None


def stage_at(stages: Sequence[Stage], step: int) -> Stage:
    """The stage that trains step ``step`` (0-based): the last of ``stages`` (a ``plan``) to
    start at or before it."""
    return [s for s in stages if s.start_step <= step][-1]


@dataclass(frozen=True)
class Schedule:
    """A run's starting size (``start``: size overrides of the target, ``start_seq_len``), its
    growth events in step order, and ``depth_sampling``: None, or ``"lvps"`` for Apollo's
    weight-shared deeper forward passes while the model is shallower than the target."""

    name: str = "scratch"
    start: Mapping[str, int] = field(default_factory=dict)
    start_seq_len: int | None = None
    events: tuple[GrowthEvent, ...] = ()
    depth_sampling: str | None = None

    def __post_init__(self) -> None:
        if self.depth_sampling not in DEPTH_SAMPLING:
            raise TrainConfigError(
                f"depth_sampling must be one of {DEPTH_SAMPLING}; got {self.depth_sampling!r}"
            )

    def plan(self, target: ModelConfig, train: TrainConfig) -> list[Stage]:
        """The stages of a run that must end at ``target`` trained on ``train.seq_len``.

        Raises ``TrainConfigError`` (naming the event and field) when a size would shrink, an
        event changes nothing, the
        last stage is not the target, a sequence is longer than the model's ``max_seq_len``,
        steps are not increasing inside ``(0, train.steps)``, or a copy order cannot reach its
        layer count.
        """
        unknown = sorted(set(self.start) - set(SIZE_FIELDS))
        if unknown:
            raise TrainConfigError(
                f"schedule start: unknown size field(s) {unknown}; "
                f"allowed: {', '.join(SIZE_FIELDS)}"
            )
        config = _sized(target, self.start, "schedule start")
        _check_seq_len(self.start_seq_len, "schedule start")
        seq_len = train.seq_len if self.start_seq_len is None else self.start_seq_len
        stages = [Stage(0, 0, config, seq_len, None)]
        previous = 0
        for event in self.events:
            where = f"growth event at step {event.step}"
            _check_seq_len(event.seq_len, where)
            if not previous < event.step < train.steps:
                raise TrainConfigError(
                    f"{where}: steps must increase strictly within (0, {train.steps}) "
                    f"(after step {previous})"
                )
            grown = _sized(config, event.sizes, where)
            for name in SIZE_FIELDS:
                if getattr(grown, name) < getattr(config, name):
                    raise TrainConfigError(
                        f"{where}: {name} would shrink from {getattr(config, name)} to "
                        f"{getattr(grown, name)}; growth events only grow"
                    )
            if event.method == "lag" and grown.n_layers == config.n_layers:
                raise TrainConfigError(
                    f"{where}: method 'lag' chooses a depth growth; n_layers must grow"
                )
            if event.method == "lag" and event.step + event.lag_steps > train.steps:
                raise TrainConfigError(
                    f"{where}: lag_steps {event.lag_steps} would try the candidates past the "
                    f"run's end (step {train.steps})"
                )
            for concrete in [event.candidate(c) for c in event.candidates] or [event]:
                try:
                    _check_event(config, grown, concrete)
                except GrowthError as error:
                    raise TrainConfigError(f"{where}: {concrete.method}: {error}") from None
            new_seq_len = seq_len if event.seq_len is None else event.seq_len
            if grown == config and new_seq_len == seq_len:
                raise TrainConfigError(
                    f"{where}: changes nothing (give a size or a seq_len; a size the start "
                    "leaves out starts at the target's)"
                )
            seq_len = new_seq_len
            config, previous = grown, event.step
            stages.append(Stage(len(stages), event.step, config, seq_len, event))
        for stage in stages:
            if stage.seq_len > stage.config.max_seq_len:
                raise TrainConfigError(
                    f"stage {stage.index}: seq_len {stage.seq_len} is longer than the model's "
                    f"max_seq_len {stage.config.max_seq_len}"
                )
        final = stages[-1]
        mismatched = final.config.size_differences(target, "target")
        if mismatched:
            raise TrainConfigError(
                f"schedule {self.name!r} ends at a model that is not the target: {mismatched}"
            )
        if final.seq_len != train.seq_len:
            raise TrainConfigError(
                f"schedule {self.name!r} ends at seq_len {final.seq_len}, not the training "
                f"seq_len {train.seq_len}"
            )
        return stages


def _check_event(config: ModelConfig, grown: ModelConfig, event: GrowthEvent) -> None:
    """Raise the ``GrowthError`` that applying ``event`` (a concrete method) to a model of
    ``config`` would raise: a copy order that cannot reach the depth, or a width or exact
    depth growth the expansions refuse (as ``growth.event_expansion`` applies them)."""
    if event.method != "exact" and grown.n_layers != config.n_layers:
        layer_order(
            event.method, config.n_layers, grown.n_layers, event.midas_block, event.block_at
        )
        config = config.replace(n_layers=grown.n_layers)
    reached = check_growth(config, dict(event.sizes), event.options)
    differing = reached.size_differences(grown, "the schedule's")
    if differing:
        raise GrowthError(
            f"growing {dict(event.sizes)} gives {differing}: an MHA model's n_kv_heads follows "
            "n_heads, so give the sizes explicitly"
        )


def schedule_to_dict(schedule: Schedule) -> dict[str, Any]:
    """A JSON-ready description of ``schedule`` (for ``run.json``)."""
    return {
        "name": schedule.name,
        "start": dict(schedule.start),
        "start_seq_len": schedule.start_seq_len,
        "depth_sampling": schedule.depth_sampling,
        "events": [
            {
                **{k: v for k, v in asdict(e).items() if k != "options"},
                "sizes": dict(e.sizes),
                "options": asdict(e.options),
            }
            for e in schedule.events
        ],
    }


def schedule_from_dict(data: Mapping[str, Any]) -> Schedule:
    """The schedule that ``schedule_to_dict`` described (a run's ``run.json``)."""
    events = tuple(
        GrowthEvent(
            **{
                **event,
                "sizes": dict(event["sizes"]),
                "candidates": tuple(event.get("candidates", ())),
                "options": GrowthOptions(
                    **{
                        k: tuple(v) if isinstance(v, list) else v
                        for k, v in event["options"].items()
                    }
                ),
            }
        )
        for event in data["events"]
    )
    return Schedule(
        data["name"],
        dict(data["start"]),
        data["start_seq_len"],
        events,
        data["depth_sampling"],
    )


def _check_seq_len(value: object, where: str) -> None:
    """A stage's ``seq_len``: None (keep the current one) or an int ≥ 1."""
    if value is not None:
        check_int(f"{where}: seq_len", value, minimum=1)


def _sized(config: ModelConfig, sizes: Mapping[str, int], where: str) -> ModelConfig:
    try:
        return config.replace(**dict(sizes))
    except (ConfigError, TypeError) as error:
        raise TrainConfigError(f"{where}: {error}") from None


def _at(fraction: float, steps: int, name: str) -> int:
    if not 0 < fraction < 1:
        raise TrainConfigError(f"{name} must be a fraction in (0, 1), got {fraction!r}")
    return max(1, min(steps - 1, round(fraction * steps)))


def _scaled(value: int, factor: float, name: str, multiple: int = 1) -> int:
    """``value``·``factor`` rounded to a ``multiple`` (at least one); ``factor`` must be a
    fraction in (0, 1]."""
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 < factor <= 1:
        raise TrainConfigError(f"{name} must be a fraction in (0, 1], got {factor!r}")
    return max(multiple, round(value * factor / multiple) * multiple)


def scratch_schedule(target: ModelConfig, train: TrainConfig) -> Schedule:
    """The target model from random init: the baseline."""
    return Schedule("scratch")


def compound_schedule(
    target: ModelConfig,
    train: TrainConfig,
    *,
    at: float = 0.4,
    depth: float = 0.5,
    ffn: float = 0.25,
    seq: float = 0.5,
    depth_method: str = "stack",
    layer_init: str = "copy",
    where: str = "interleave",
    width_init: str = "zero",
) -> Schedule:
    """CompoundGrow: start at ``depth``·layers, ``ffn``·FFN width and ``seq``·sequence length;
    at ``at``·steps grow all three to the target together.

    Width grows exactly (new FFN units random with zero down columns, which breaks the symmetry
    that exact tiling would keep forever). Depth grows by ``depth_method``: by default
    ``stack``, copies of the whole trained stack as CompoundGrow's paper does (not
    function-preserving: on the CPU preset it ends 0.015 below scratch where the exact growth
    ends level with it); ``interpolate``; or ``exact`` (new layers by ``layer_init`` and
    ``where``: with ``copy``, a copy of their neighbour with W_O and down zeroed).
    """
    start = {
        "n_layers": _scaled(target.n_layers, depth, "compound: depth"),
        "ffn": _scaled(target.ffn, ffn, "compound: ffn", 8),
    }
    event = GrowthEvent(
        step=_at(at, train.steps, "compound: at"),
        sizes={"n_layers": target.n_layers, "ffn": target.ffn},
        seq_len=train.seq_len,
        method=depth_method,
        options=GrowthOptions(layer_init=layer_init, where=where, width_init=width_init),
    )
    return Schedule("compound", start, _scaled(train.seq_len, seq, "compound: seq", 8), (event,))


def stack_schedule(
    target: ModelConfig, train: TrainConfig, *, at: float = 0.3, factor: int = 2
) -> Schedule:
    """G_stack: train ``n_layers/factor`` layers, then copy the whole stack ``factor`` times."""
    if factor < 2:
        raise TrainConfigError(f"stack: factor must be at least 2, got {factor}")
    if target.n_layers % factor:
        raise TrainConfigError(
            f"stack: factor {factor} must divide the target's n_layers {target.n_layers}"
        )
    event = GrowthEvent(
        step=_at(at, train.steps, "stack: at"),
        sizes={"n_layers": target.n_layers},
        method="stack",
    )
    return Schedule("stack", {"n_layers": target.n_layers // factor}, None, (event,))


def midas_schedule(
    target: ModelConfig,
    train: TrainConfig,
    *,
    block: int = 1,
    start_layers: int | None = None,
    alpha: float = 1.0,
    end: float = 0.7,
) -> Schedule:
    """MIDAS: from ``start_layers`` (default half the target), duplicate the middle block of
    ``block`` layers at each growth point until the target depth; stage ``i`` of ``k`` lasts
    in proportion to ``i**alpha`` (``alpha`` any finite number; 0: equal stages, negative:
    the early stages longer), the last growth at ``end``·steps."""
    first, points = _gradual_depths(target, train, "midas", block, start_layers, alpha, end)
    events = tuple(
        GrowthEvent(step=step, sizes={"n_layers": n}, method="midas", midas_block=block)
        for step, n in points
    )
    return Schedule("midas", {"n_layers": first}, None, events)


def lag_stack_schedule(
    target: ModelConfig,
    train: TrainConfig,
    *,
    block: int = 1,
    start_layers: int | None = None,
    alpha: float = 1.0,
    end: float = 0.7,
    candidates: tuple[str, ...] = ("midas-first", "midas", "midas-last"),
    lag_steps: int | None = None,
) -> Schedule:
    """LAG's adaptive gradual stacking: MIDAS's growth points, but at each one the block to
    duplicate is chosen by LAG among ``candidates`` (default: the first, middle or last block),
    each tried for ``lag_steps`` steps (default 1% of the steps, at least 2)."""
    first, points = _gradual_depths(target, train, "lag-stack", block, start_layers, alpha, end)
    k = max(2, train.steps // 100) if lag_steps is None else lag_steps
    events = tuple(
        GrowthEvent(
            step=step,
            sizes={"n_layers": n},
            method="lag",
            midas_block=block,
            candidates=tuple(candidates),
            lag_steps=k,
        )
        for step, n in points
    )
    return Schedule("lag-stack", {"n_layers": first}, None, events)


def _gradual_depths(
    target: ModelConfig,
    train: TrainConfig,
    name: str,
    block: int,
    start_layers: int | None,
    alpha: float,
    end: float,
) -> tuple[int, list[tuple[int, int]]]:
    """Gradual stacking's start depth and its (step, depth) growth points: ``block`` layers
    more each time; growth ``i`` of ``k`` comes after a stage lasting in proportion to
    ``i**alpha``, the last at ``end``·steps."""
    first = max(block, target.n_layers // 2) if start_layers is None else start_layers
    check_int(f"{name}: start_layers", first, minimum=1)
    if block < 1 or (target.n_layers - first) % block or first > target.n_layers:
        raise TrainConfigError(
            f"{name}: from {first} layers the target's {target.n_layers} is not reachable in "
            f"blocks of {block}"
        )
    if not is_finite(alpha):
        raise TrainConfigError(
            f"{name}: alpha must be a finite number (stage i lasts in proportion to "
            f"i**alpha; 0: equal stages), got {alpha!r}"
        )
    _at(end, train.steps, f"{name}: end")
    n_growths = (target.n_layers - first) // block
    # Stage lengths ∝ i**alpha. Where k**(alpha+1) (a bound on their sum) passes the float
    # range, the same proportions as (i/k)**alpha ≤ 1: these underflow (to stages of no
    # steps, named below) where i**alpha would overflow.
    scale = n_growths if (alpha + 1) * math.log(max(n_growths, 1)) > 700 else 1
    weights = [((i + 1) / scale) ** alpha for i in range(n_growths)]
    points, elapsed, previous = [], 0.0, 0
    for i, weight in enumerate(weights):
        elapsed += weight / sum(weights) * end
        step = max(1, min(train.steps - 1, round(elapsed * train.steps)))
        if step <= previous:
            raise TrainConfigError(
                f"{name}: growth points {i} and {i + 1} of {n_growths} both fall on step {step} "
                f"of {train.steps} (stage lengths ∝ i**alpha with alpha {alpha!r}, the last "
                f"growth at end {end!r}): bring alpha closer to 0, grow fewer times (a larger "
                "block or start_layers) or train more steps"
            )
        points.append((step, first + (i + 1) * block))
        previous = step
    return first, points


def exact_schedule(
    target: ModelConfig,
    train: TrainConfig,
    *,
    at: float = 0.3,
    depth: float = 0.5,
    width: float = 0.5,
) -> Schedule:
    """Four exact expansions at once (layers, hidden, FFN, heads with their kv heads; the head
    dims stay the target's): start at ``depth``·layers and ``width``·(hidden, FFN, heads) and
    grow to the target at ``at``·steps."""
    heads = _scaled(target.n_kv_heads, width, "exact: width") * target.group_size
    start = {
        "n_layers": _scaled(target.n_layers, depth, "exact: depth"),
        "hidden": _scaled(target.hidden, width, "exact: width", 8),
        "ffn": _scaled(target.ffn, width, "exact: width", 8),
        "n_heads": heads,
        "n_kv_heads": heads // target.group_size,
    }
    event = GrowthEvent(
        step=_at(at, train.steps, "exact: at"),
        sizes={name: getattr(target, name) for name in start},
        options=GrowthOptions(layer_init="copy", where="interleave"),
    )
    return Schedule("exact", start, None, (event,))


def apollo_schedule(
    target: ModelConfig,
    train: TrainConfig,
    *,
    boundaries: tuple[float, ...] = (0.05, 0.10, 0.25),
) -> Schedule:
    """Apollo: distinct layers 1 → 3 → 6 → 12 (scaled to the target's depth), expanded by
    interpolation at ``boundaries`` (fractions of the steps; the last stage takes the rest),
    LVPS depth sampling with weight sharing while shallower than the target. One learning-rate
    schedule, the optimizer state carried through each expansion."""
    depths = stage_depths(target.n_layers)
    if len(boundaries) < len(depths) - 1:
        raise TrainConfigError(
            f"apollo: {len(depths)} stages ({depths}) need {len(depths) - 1} boundaries, "
            f"got {list(boundaries)}"
        )
    points = boundaries[len(boundaries) - (len(depths) - 1) :]
    events = tuple(
        GrowthEvent(
            step=_at(point, train.steps, "apollo: boundary"),
            sizes={"n_layers": depth},
            method="interpolate",
        )
        for point, depth in zip(points, depths[1:], strict=True)
    )
    return Schedule("apollo", {"n_layers": depths[0]}, None, events, depth_sampling="lvps")


BUILDERS = {
    "scratch": scratch_schedule,
    "compound": compound_schedule,
    "stack": stack_schedule,
    "midas": midas_schedule,
    "exact": exact_schedule,
    "apollo": apollo_schedule,
    "lag-stack": lag_stack_schedule,
}


def named_schedule(name: str, target: ModelConfig, train: TrainConfig, **params: Any) -> Schedule:
    """The schedule ``name`` (one of ``SCHEDULES``) for ``target``; ``params`` are its
    builder's keyword arguments, checked by name."""
    if not isinstance(name, str) or name not in BUILDERS:
        raise TrainConfigError(f"schedule must be one of {', '.join(SCHEDULES)}; got {name!r}")
    builder = BUILDERS[name]
    hints = typing.get_type_hints(builder)
    allowed = [p for p in inspect.signature(builder).parameters if p not in ("target", "train")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise TrainConfigError(
            f"schedule {name!r}: unknown parameter(s) {unknown}; allowed: "
            f"{', '.join(allowed) or 'none'}"
        )
    for key, value in params.items():
        if key in hints and not _is_instance(value, hints[key]):
            raise TrainConfigError(
                f"schedule {name!r}: {key} must be {_type_name(hints[key])}, got {value!r}"
            )
    try:
        return builder(target, train, **params)
    except (TypeError, GrowthError) as error:
        raise TrainConfigError(f"schedule {name!r}: {error}") from None


def _is_instance(value: object, hint: object) -> bool:
    """``value`` fits a builder parameter's type (int, float, str, X | None, tuple[str, ...]);
    a bool is not a number, an int is a float, a list is a tuple."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_is_instance(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is tuple:
        (item, _) = typing.get_args(hint)
        return isinstance(value, list | tuple) and all(_is_instance(v, item) for v in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)  # type: ignore[arg-type]


def _type_name(hint: object) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if typing.get_origin(hint) is tuple:
        return f"a list of {_type_name(typing.get_args(hint)[0])}s"
    return {int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))
