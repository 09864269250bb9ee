"""After growth every new parameter entry learns: AdamW steps on the real loss move it.

Zero-initialized entries (new W_O columns, MLP down columns, writers' new rows, new K rows, the
new input columns of Q, K and gate) and the random ones they gate (new Q/K/V, up and gate rows,
the new input columns of V, up and W_U, new gains) get gradient at the first or the second step;
an entry that has not moved at either step is dead.
The batch holds every token id and uses the full max_seq_len, so every embedding and position
row gets gradient. Tiling creates no new entries, so only the zero-style inits appear here.

Two kinds of entries get no gradient in any model, grown or not, and are exempt: a key bias
without RoPE (softmax ignores the q·b it adds to every score of a query) and the weights of a
ReLU unit that is inactive on every token of the batch (at one of the steps).
"""

from __future__ import annotations

import pytest
import torch

from conftest import (
    VARIANTS,
    adamw,
    expansion,
    full_batch,
    layer_of,
    make_model,
    new_entry_masks,
    new_layer_indices,
    next_token_loss,
    snapshot,
    train_step,
)
from growformer import grow

KINDS = [
    "ffn_zero",
    "heads_in_groups_zero",
    "heads_new_groups_zero",
    "heads_both_zero",
    "v_dim_zero",
    "qk_dim_plus2",
    "hidden_plus7",
    "layers_end_identity",
    "layers_middle_identity",
    "layers_explicit_copy",
    "max_seq_len",
]
CASES = [
    (variant, kind)
    for variant, config in VARIANTS.items()
    for kind in KINDS
    if not (kind == "max_seq_len" and config.position == "rope")  # RoPE: nothing new
]
MOVED = 1e-6  # an AdamW step with lr 1e-2 moves an entry that has gradient by ~1e-2


def _train(grown, steps: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Train ``steps`` AdamW steps. Returns, per parameter, the largest change of each entry in
    any one step, and per ReLU MLP (by prefix) the units inactive on the whole batch in at
    least one step."""
    active: dict[str, list[torch.Tensor]] = {}
    hooks = []
    if grown.config.mlp == "relu":
        for i, layer in enumerate(grown.layers):
            prefix = f"layers.{i}.mlp."

            def hook(_module, _inputs, out, prefix=prefix):
                seen = (out.detach() > 0).reshape(-1, out.shape[-1]).any(0)
                active.setdefault(prefix, []).append(seen)

            hooks.append(layer.mlp.up.register_forward_hook(hook))
    optimizer = adamw(grown.parameters())
    batch = full_batch(grown.config)
    moved = {name: torch.zeros_like(p) for name, p in grown.named_parameters()}
    for _ in range(steps):
        before = snapshot(grown)
        assert torch.isfinite(torch.tensor(train_step(grown, optimizer, batch)))
        for name, p in grown.named_parameters():
            torch.maximum(moved[name], (p.detach() - before[name]).abs(), out=moved[name])
    for h in hooks:
        h.remove()
    inactive = {prefix: ~torch.stack(seen).all(0) for prefix, seen in active.items()}
    return moved, inactive


def _exempt(name: str, shape, config, inactive) -> torch.Tensor:
    """Entries of ``name`` that get no gradient in any model (see the module docstring)."""
    out = torch.zeros(shape, dtype=torch.bool)
    if name.endswith("attn.k.bias") and config.position == "learned":
        out[:] = True
    for prefix, units in inactive.items():
        if name.startswith(prefix + "up."):
            out |= units.reshape(-1, *([1] * (len(shape) - 1)))
        elif name == prefix + "down.weight":
            out |= units[None, :]
    return out


def assert_new_entries_move(config, target, options, steps: int = 2) -> None:
    grown, record = grow(make_model(config), target, options)
    masks = dict(new_entry_masks(grown, record))
    new_layers = new_layer_indices(grown)
    assert len(new_layers) == grown.config.n_layers - config.n_layers
    for name in masks:
        if layer_of(name) in new_layers:
            masks[name] = torch.ones_like(masks[name])  # every param of a new layer
    assert any(m.any() for m in masks.values()), "expansion created no new entries"

    moved, inactive = _train(grown, steps)
    dead = {}
    for name, p in grown.named_parameters():
        mask = masks[name] & ~_exempt(name, p.shape, grown.config, inactive)
        stuck = mask & (moved[name] <= MOVED)
        if stuck.any():
            dead[name] = f"{int(stuck.sum())}/{int(masks[name].sum())}"
    assert not dead, f"new entries that did not move in {steps} steps (stuck/new): {dead}"


@pytest.mark.parametrize(("variant", "kind"), CASES)
def test_every_new_entry_moves_in_two_adamw_steps(variant, kind):
    config = VARIANTS[variant]
    target, options = expansion(kind, config)
    assert_new_entries_move(config, target, options, steps=2)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_composed_growth_with_new_kv_groups_moves_every_new_entry_in_two_steps(variant):
    """New kv groups together with qk and value dim growth: the plan grows head dims before
    heads, so the new heads get random Q, K, V rows in every dim, not zero K rows that would
    wait for their W_O columns."""
    config = VARIANTS[variant]
    target, options = expansion("all_fields_zero", config)
    assert_new_entries_move(config, target, options, steps=2)


def test_exemptions_are_properties_of_the_source_model():
    """Without growth, a key bias (learned positions) gets exactly zero gradient while a query
    bias does not: the exemption is not hiding a growth defect."""
    config = VARIANTS["gpt2_all_bias"]
    model = make_model(config)
    next_token_loss(model, full_batch(config)).backward()
    k_grad = model.layers[0].attn.k.bias.grad
    q_grad = model.layers[0].attn.q.bias.grad
    assert float(q_grad.abs().max()) > 1e-6
    assert float(k_grad.abs().max()) < 1e-12 * float(q_grad.abs().max())
