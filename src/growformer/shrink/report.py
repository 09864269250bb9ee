"""The subclone report: what the child kept of its source, and how much importance that is."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor

from growformer.config import ModelConfig
from growformer.shrink.importance import Importance
from growformer.shrink.plan import SubclonePlan
from growformer.shrink.target import SHRINK_FIELDS

REPORT_FILE = "subclone_report.json"


@dataclass(frozen=True)
class LayerReport:
    """One child layer: its source layer, the kept kv and query heads (source indices), the
    number of kept FFN neurons, and the fraction of the layer's head and neuron importance
    kept (None without importance)."""

    source_layer: int
    kv_heads: list[int]
    heads: list[int]
    ffn: int
    head_coverage: float | None
    ffn_coverage: float | None


@dataclass(frozen=True)
class SubcloneReport:
    """What a subclone kept. Coverage is the fraction of the total importance mass kept (of the
    hidden dimensions; per layer, of its heads and neurons); ``block_change`` is the measured
    1 - cos(input, output) of every source layer; ``reader_scale`` the factor applied to the
    readers (1.0 without rescaling). Importance-derived fields are None when none was given;
    ``calibration_data`` names the calibration data when a folder was shrunk."""

    source: dict[str, int]
    target: dict[str, int]
    source_parameters: int
    target_parameters: int
    layers_kept: list[int]
    layers_removed: list[int]
    block_change: list[float] | None
    hidden_coverage: float | None
    layers: list[LayerReport]
    reader_scale: float
    calibration_tokens: int | None
    calibration_data: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def format(self) -> str:
        """A few lines for the terminal."""
        sizes = ", ".join(
            f"{f} {self.source[f]} → {self.target[f]}"
            for f in SHRINK_FIELDS
            if self.source[f] != self.target[f]
        )
        lines = [
            f"shrink: {sizes or 'no size change'}",
            f"parameters {self.source_parameters:,} → {self.target_parameters:,}",
            f"layers kept {self.layers_kept}, removed {self.layers_removed}",
        ]
        if self.block_change is not None:
            changes = " ".join(f"{c:.3f}" for c in self.block_change)
            lines.append(f"block change 1 - cos per source layer: {changes}")
        if self.hidden_coverage is not None:
            lines.append(f"hidden importance kept: {self.hidden_coverage:.1%}")
        lines.append("layer  source  kv heads  heads  ffn   head imp. kept  ffn imp. kept")
        for i, layer in enumerate(self.layers):
            head = "-" if layer.head_coverage is None else f"{layer.head_coverage:.1%}"
            ffn = "-" if layer.ffn_coverage is None else f"{layer.ffn_coverage:.1%}"
            lines.append(
                f"{i:>5}  {layer.source_layer:>6}  {len(layer.kv_heads):>8}  "
                f"{len(layer.heads):>5}  {layer.ffn:<5} {head:>14}  {ffn:>13}"
            )
        lines.append(f"reader scale {self.reader_scale:.4g}")
        return "\n".join(lines)


def build_report(
    plan: SubclonePlan,
    importance: Importance | None,
    reader_scale: float,
    parameters: tuple[int, int],
) -> SubcloneReport:
    """The report of ``plan``; ``parameters`` = (source, target) parameter counts."""
    s, t = plan.source, plan.target
    layers = []
    for child, source_layer in enumerate(plan.layers):
        heads, ffn = plan.heads[child], plan.ffn[child]
        head_cov = ffn_cov = None
        if importance is not None:
            head_cov = _coverage(importance.heads[source_layer], heads)
            ffn_cov = _coverage(importance.ffn[source_layer], ffn)
        layers.append(
            LayerReport(
                source_layer,
                plan.kv_heads[child].tolist(),
                heads.tolist(),
                len(ffn),
                head_cov,
                ffn_cov,
            )
        )
    return SubcloneReport(
        source=_sizes(s),
        target=_sizes(t),
        source_parameters=parameters[0],
        target_parameters=parameters[1],
        layers_kept=list(plan.layers),
        layers_removed=[i for i in range(s.n_layers) if i not in plan.layers],
        block_change=None if importance is None else importance.block_change.tolist(),
        hidden_coverage=None if importance is None else _coverage(importance.hidden, plan.hidden),
        layers=layers,
        reader_scale=reader_scale,
        calibration_tokens=None if importance is None else importance.tokens,
    )


def _sizes(config: ModelConfig) -> dict[str, int]:
    return {f: getattr(config, f) for f in SHRINK_FIELDS}


def _coverage(scores: Tensor, kept: Tensor) -> float:
    total = float(scores.sum())
    return float(scores[kept].sum()) / total if total > 0 else 1.0
