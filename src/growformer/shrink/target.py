"""The target of a shrink: sizes no larger than the source's, validated before any work."""

from __future__ import annotations

from collections.abc import Mapping

from growformer.config import SIZE_FIELDS, ConfigError, ModelConfig

# Sizes a shrink may reduce. Head dims are not among them: heads are kept or removed whole.
SHRINK_FIELDS = ("n_layers", "hidden", "n_heads", "n_kv_heads", "ffn", "max_seq_len")


class ShrinkError(ValueError):
    """A shrink target or option that cannot be applied; the message names the field and what
    is allowed."""


def kv_heads_allowed(source: ModelConfig, n_heads: int) -> list[int]:
    """The ``n_kv_heads`` a child with ``n_heads`` query heads may have: whole kv groups of the
    source are kept (at most ``source.n_kv_heads``) and each keeps the same number of its query
    heads (at most ``source.group_size``)."""
    return [
        k
        for k in range(1, min(n_heads, source.n_kv_heads) + 1)
        if n_heads % k == 0 and n_heads // k <= source.group_size
    ]


def resolve_shrink_target(source: ModelConfig, sizes: Mapping[str, int]) -> ModelConfig:
    """The child's config: ``source`` with ``sizes`` applied, every size at most the source's.

    Fields not in ``sizes`` keep the source's value, except ``n_kv_heads``, which by default
    keeps the source's group size (``n_heads / source.group_size`` kv heads), or is the one
    value allowed (MQA stays MQA). Head dims stay the source's. Raises ``ShrinkError`` for an
    unknown field, a target larger than the source (pointing to ``growformer grow``), a changed
    head dim, or a kv-head count that whole kv groups cannot give (listing the allowed values).
    """
    unknown = sorted(set(sizes) - set(SIZE_FIELDS))
    if unknown:
        raise ShrinkError(f"unknown size field(s) {unknown}; allowed: {list(SHRINK_FIELDS)}")
    for field, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ShrinkError(f"{field} must be a positive integer, got {value!r}")
        current = getattr(source, field)
        if field in ("qk_head_dim", "v_head_dim"):
            if value != current:
                raise ShrinkError(
                    f"{field}: subcloning keeps or removes whole heads, so {field} stays "
                    f"{current} (got {value})"
                )
            continue
        if value > current:
            raise ShrinkError(
                f"{field}: target {value} is larger than the source's {current}; shrinking only "
                "reduces sizes (use `growformer grow` to enlarge a model)"
            )
    n_heads = sizes.get("n_heads", source.n_heads)
    allowed = kv_heads_allowed(source, n_heads)
    if "n_kv_heads" in sizes:
        n_kv = sizes["n_kv_heads"]
        if n_kv not in allowed:
            raise ShrinkError(
                f"n_kv_heads={n_kv} with n_heads={n_heads}: the child keeps whole kv groups of "
                f"the source ({source.n_kv_heads} kv heads, {source.group_size} query heads "
                f"each) and the same number of query heads in each; allowed n_kv_heads: "
                f"{allowed or 'none'}"
            )
    elif n_heads % source.group_size == 0 and n_heads // source.group_size in allowed:
        n_kv = n_heads // source.group_size
    elif len(allowed) == 1:
        n_kv = allowed[0]
    else:
        raise ShrinkError(
            f"n_heads={n_heads} is not a multiple of the source's group size "
            f"{source.group_size}: give n_kv_heads (allowed: {allowed or 'none'})"
        )
    changes = {f: v for f, v in sizes.items() if f in SHRINK_FIELDS}
    changes.update(n_kv_heads=n_kv, qk_head_dim=source.qk_head_dim, v_head_dim=source.v_head_dim)
    try:
        return source.replace(**changes)
    except ConfigError as err:
        raise ShrinkError(str(err)) from err
