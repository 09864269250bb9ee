"""Rescaling readers for the smaller hidden size.

A reader (Q, K, V, MLP up and gate, W_U) sums over the hidden dimensions; with ĥ of the h kept,
its output loses about a factor √(ĥ/h) in norm when the terms are roughly independent. The
child's readers are therefore multiplied by √(h/ĥ) so that activations keep their scale (the
weight-subcloning recipe). Reader biases are not scaled: they do not sum over the hidden size.
A tied W_U is the token embedding, a writer, so it is scaled through the final norm's gain and
bias instead (the same function); without a final norm a tied W_U is left as it is, and so is
the final norm of a headless model (a base model or a classifier, whose output is the final
hidden state; a classifier's head is a reader of its own, scaled with the extras).

Post-norm (BERT) models need one more step. There a LayerNorm's output *is* the residual
stream, and the child's LayerNorm normalizes over the kept dimensions only: the important ones,
whose spread is wider than the average's, so the child's normalized values come out smaller than
the parent's by r = std over kept / std over all (about 1.1 to 1.4 per norm in MiniLM). Each
post-norm gain is multiplied by r, estimated from calibration as √(mean over kept dimensions of
E[n_j²]) with ``n`` the parent norm's normalized input (``Importance.norm_sq``), so the kept
coordinates of the stream keep the parent's values. The mean shift (mean over kept - mean over
all, about 0.01 of a std) is left alone: correcting it measured no better. In a pre-norm model
the same correction measured no better either (the norms feed only readers, and r is already
what the reader rescaling assumes), so it is applied to post-norm models only.

Measured before any training (child 3 layers of 6, half the hidden size, heads and FFN):
MiniLM sentence-similarity Spearman 0.34 without rescaling, 0.39 with the readers rescaled,
0.40 with the norm gains calibrated too; a trained 6-layer RMSNorm decoder: loss 4.20 without,
3.93 with (random init 6.24).

``subclone(..., rescale=False)`` keeps the selected weights as they are.
"""

from __future__ import annotations

import math

from growformer.config import ModelConfig
from growformer.shrink.importance import Importance
from growformer.shrink.plan import SubclonePlan

# Per-layer reader weights, scaled along their input (hidden) dimension 1.
LAYER_READERS = ("attn.q.weight", "attn.k.weight", "attn.v.weight", "mlp.up.weight")


def reader_scale(source: ModelConfig, target: ModelConfig) -> float:
    """√(h/ĥ): the factor that keeps a reader's output scale when the hidden size shrinks."""
    return math.sqrt(source.hidden / target.hidden)


def scaled_parameters(config: ModelConfig, headless: bool = False) -> dict[str, int]:
    """The child's parameters that rescaling multiplies, each with the dimension the factor
    runs along (the hidden dimension of that tensor). ``headless``: the model's output is its
    final hidden state, not logits through a tied W_U."""
    scaled: dict[str, int] = {}
    readers = LAYER_READERS + ("mlp.gate.weight",) * (config.mlp == "swiglu")
    for i in range(config.n_layers):
        scaled.update({f"layers.{i}.{name}": 1 for name in readers})
    if not config.tie_embeddings:
        scaled["lm_head.weight"] = 1
    elif config.final_norm and not headless:
        scaled["final_norm.weight"] = 0
        if config.norm == "layer":
            scaled["final_norm.bias"] = 0
    return scaled


def norm_gain_scales(plan: SubclonePlan, importance: Importance) -> dict[str, float]:
    """For a post-norm child, each norm gain's factor r (see the module docstring), by child
    parameter name; empty for a pre-norm child."""
    if plan.source.norm_placement != "post":
        return {}
    sources = {"emb_norm": "emb_norm"}
    for child, layer in enumerate(plan.layers):
        for norm in ("attn_norm", "mlp_norm"):
            sources[f"layers.{child}.{norm}"] = f"layers.{layer}.{norm}"
    return {
        f"{child}.weight": float(importance.norm_sq[source][plan.hidden].mean().sqrt())
        for child, source in sources.items()
    }
