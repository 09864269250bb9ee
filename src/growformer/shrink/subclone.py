"""``subclone``: a smaller model's weights taken from a larger one's, by importance.

A pure function of (config, weights): it reads each source tensor once, keeps the planned rows
and columns (``SubclonePlan``), rescales the readers (``rescale``) and returns the child's
config, weights, resize record and report. Unchanged tensors are passed through by reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from growformer.config import ModelConfig
from growformer.expand._ops import block_rows
from growformer.model import Transformer
from growformer.resize import ParamResize, ResizeRecord
from growformer.shrink.importance import Importance
from growformer.shrink.plan import SubclonePlan, plan_subclone
from growformer.shrink.report import SubcloneReport, build_report
from growformer.shrink.rescale import norm_gain_scales, reader_scale, scaled_parameters
from growformer.shrink.target import resolve_shrink_target


@dataclass(frozen=True)
class Subclone:
    """The child: its config and weights, the record (child parameter → source parameter and
    the kept positions, new → old, with the rescaling as ``value_scale``), the plan it was built
    from and the report."""

    config: ModelConfig
    state: dict[str, Tensor]
    record: ResizeRecord
    plan: SubclonePlan
    report: SubcloneReport


def subclone(
    config: ModelConfig,
    state: Mapping[str, Tensor],
    target: Mapping[str, int],
    importance: Importance,
    *,
    keep_layers: Sequence[int] | None = None,
    rescale: bool = True,
    headless: bool = False,
) -> Subclone:
    """Initialize a smaller model from the model ``(config, state)``.

    ``target`` gives the sizes to shrink to (``SHRINK_FIELDS``; see ``resolve_shrink_target``
    for defaults and the errors it raises), ``importance`` comes from ``measure_importance`` on
    calibration data, ``keep_layers`` overrides block removal, ``rescale`` multiplies the
    readers by √(h/ĥ) (see ``growformer.shrink.rescale``); ``headless``: the model outputs its
    final hidden state (a Hugging Face base model or classifier), so a tied W_U is not scaled.

    Example::

        importance = measure_importance(model.config, model.state_dict(), batches)
        child = subclone(model.config, model.state_dict(), {"n_layers": 3, "hidden": 192,
                         "n_heads": 6, "ffn": 768}, importance)
        small = model_from_state(child.config, child.state)
    """
    plan = plan_subclone(config, resolve_shrink_target(config, target), importance, keep_layers)
    return apply_plan(state, plan, importance=importance, rescale=rescale, headless=headless)


def apply_plan(
    state: Mapping[str, Tensor],
    plan: SubclonePlan,
    *,
    importance: Importance | None = None,
    rescale: bool = True,
    headless: bool = False,
) -> Subclone:
    """Build the child that ``plan`` describes from the source weights ``state`` (read one
    tensor at a time, so ``state`` may load lazily). ``importance``, when given, fills the
    report's coverage figures and, for a post-norm model with ``rescale``, calibrates the norm
    gains; ``headless`` as in ``subclone``. Raises ``KeyError`` naming a missing source
    weight."""
    source, target = plan.source, plan.target
    scale = reader_scale(source, target) if rescale else 1.0
    scaled = scaled_parameters(target, headless) if scale != 1.0 else {}
    norm_gains = norm_gain_scales(plan, importance) if rescale and importance else {}
    with torch.device("meta"):
        child = Transformer(target)
    new_state: dict[str, Tensor] = {}
    record: dict[str, ParamResize] = {}
    for name, param in child.named_parameters():
        source_name, index = _source_of(name, plan)
        if source_name not in state:
            raise KeyError(f"source weight {source_name} is missing")
        dims = tuple(index.get(d) for d in range(param.ndim))
        value_scale: list[Tensor | None] = [None] * param.ndim
        grad_scale: list[Tensor | None] = [None] * param.ndim
        tensor = _take(state[source_name], dims)
        factor = (scale if name in scaled else 1.0) * norm_gains.get(name, 1.0)
        if factor != 1.0:
            d = scaled.get(name, 0)
            tensor = tensor * factor
            value_scale[d] = torch.full((param.shape[d],), factor, dtype=torch.float64)
            grad_scale[d] = 1.0 / value_scale[d]
        if tuple(tensor.shape) != tuple(param.shape):
            raise ValueError(f"{name}: built shape {tuple(tensor.shape)}, need {param.shape}")
        new_state[name] = tensor
        record[name] = ParamResize(source_name, dims, tuple(value_scale), tuple(grad_scale))
    with torch.device("meta"):
        source_params = Transformer(source).num_parameters()
    report = build_report(plan, importance, scale, (source_params, child.num_parameters()))
    return Subclone(target, new_state, ResizeRecord(record), plan, report)


def _source_of(name: str, plan: SubclonePlan) -> tuple[str, dict[int, Tensor | None]]:
    """The source parameter of child parameter ``name`` and its kept positions per dimension
    (None: the whole dimension)."""
    s, t = plan.source, plan.target
    hidden = _unless_all(plan.hidden, s.hidden)
    if not name.startswith("layers."):
        if name == "pos_emb.weight":
            positions = _unless_all(torch.arange(t.max_seq_len), s.max_seq_len)
            return name, {0: positions, 1: hidden}
        if name in ("tok_emb.weight", "lm_head.weight"):
            return name, {1: hidden}
        return name, {0: hidden}  # emb_norm and final_norm gains and biases
    _, child_layer, part = name.split(".", 2)
    layer = int(child_layer)
    source_name = f"layers.{plan.layers[layer]}.{part}"
    heads, kv = plan.heads[layer], plan.kv_heads[layer]
    q_rows = _unless_all(block_rows(heads, s.qk_head_dim), s.n_heads * s.qk_head_dim)
    k_rows = _unless_all(block_rows(kv, s.qk_head_dim), s.n_kv_heads * s.qk_head_dim)
    v_rows = _unless_all(block_rows(kv, s.v_head_dim), s.n_kv_heads * s.v_head_dim)
    o_cols = _unless_all(block_rows(heads, s.v_head_dim), s.n_heads * s.v_head_dim)
    ffn = _unless_all(plan.ffn[layer], s.ffn)
    module = part.rsplit(".", 1)[0]
    rows = {
        "attn.q": q_rows,
        "attn.k": k_rows,
        "attn.v": v_rows,
        "mlp.up": ffn,
        "mlp.gate": ffn,
    }
    if module in rows:
        return source_name, {0: rows[module], 1: hidden}
    if module == "attn.o":
        return source_name, {0: hidden, 1: o_cols}
    if module == "mlp.down":
        return source_name, {0: hidden, 1: ffn}
    return source_name, {0: hidden}  # attn_norm and mlp_norm gains and biases


def _unless_all(index: Tensor, size: int) -> Tensor | None:
    """None when ``index`` keeps every one of ``size`` positions in order."""
    if len(index) == size and bool((index == torch.arange(size)).all()):
        return None
    return index


def _take(tensor: Tensor, dims: tuple[Tensor | None, ...]) -> Tensor:
    """``tensor`` restricted to the kept positions of each dimension (the most reducing first,
    so intermediates stay small); ``tensor`` itself when nothing is removed."""
    order = sorted(
        (d for d, index in enumerate(dims) if index is not None),
        key=lambda d: len(dims[d]) / tensor.shape[d],
    )
    for d in order:
        tensor = tensor.index_select(d, dims[d].to(tensor.device))
    return tensor
