"""``grow_`` between two training steps: the model grows in place and AdamW's state follows.

A moment follows the gradient: where a value is scaled by c with the function unchanged its
gradient scales by 1/c, so exp_avg becomes m/c and exp_avg_sq v/c²; new entries start at zero
and ``step`` is kept. All in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import (
    VARIANTS,
    adamw,
    expansion,
    full_batch,
    gather_old,
    layer_of,
    make_model,
    new_layer_indices,
    next_token_loss,
    snapshot,
    train_step,
)
from growformer import GrowthOptions, ParamResize, grow, grow_

STEPS = 3


def trained(config, groups: bool = False):
    """A perturbed model after STEPS AdamW steps, its optimizer, and the batch."""
    model = make_model(config)
    if groups:
        params = dict(model.named_parameters())
        decay = [p for p in params.values() if p.ndim >= 2]
        no_decay = [p for p in params.values() if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
            lr=1e-2,
        )
    else:
        optimizer = adamw(model.parameters())
    batch = full_batch(config)
    for _ in range(STEPS):
        train_step(model, optimizer, batch)
    return model, optimizer, batch


def state_by_name(model, optimizer) -> dict[str, dict]:
    return {
        name: {k: v.clone() for k, v in optimizer.state[p].items()}
        for name, p in model.named_parameters()
    }


def max_error_at(mask: torch.Tensor, actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float(((actual - expected).abs() * mask).max()) if mask.any() else 0.0


# (1) Expansions that scale nothing: old entries take exactly the step they would have taken.

SCALE_FREE = [
    "ffn_zero",
    "heads_in_groups_zero",
    "heads_new_groups_zero",
    "heads_both_zero",
    "v_dim_zero",
    "layers_end_identity",
    "layers_middle_identity",
    "layers_explicit_identity",
]


def _old_entry_step_error(config, kind, policy="transform") -> float:
    model_a, opt_a, batch = trained(config)
    model_b, opt_b, _ = trained(config)
    for (n, p), (_, q) in zip(model_a.named_parameters(), model_b.named_parameters(), strict=True):
        assert torch.equal(p, q), f"training is not reproducible at {n}"
    train_step(model_a, opt_a, batch)

    target, options = expansion(kind, config)
    record = grow_(model_b, opt_b, target, options, state_policy=policy)
    new_layers = new_layer_indices(model_b)
    train_step(model_b, opt_b, batch)

    after_a = dict(model_a.named_parameters())
    worst = 0.0
    for name, p in model_b.named_parameters():
        if layer_of(name) in new_layers:
            continue  # copies in a new layer are not old entries
        r = record[name]
        expected = gather_old(after_a[r.source].detach(), r.index)
        worst = max(worst, max_error_at(r.carried_mask(p.shape), p.detach(), expected))
    return worst


@pytest.mark.parametrize("kind", SCALE_FREE)
@pytest.mark.parametrize("variant", ["llama_gqa_tied_eps", "gpt2_all_bias", "qwen_mqa_qkv_bias"])
def test_old_entries_step_as_if_not_grown(variant, kind):
    assert _old_entry_step_error(VARIANTS[variant], kind) <= 1e-6


def test_old_entries_step_differently_after_a_reset():
    """Control: with the state dropped, the same step differs by far more than 1e-6."""
    assert _old_entry_step_error(VARIANTS["gpt2_all_bias"], "ffn_zero", "reset") > 1e-4


# (2) The record's gradient scales are what the gradients do.

# Every expansion that scales a gradient, and a composition of all of them.
GRADIENT_KINDS = [
    "ffn_tile_uneven",
    "heads_both_tile",
    "v_dim_tile_uneven",
    "qk_dim_plus2",
    "hidden_plus7",
    "layers_interleave_copy",
    "all_fields_tile",
]


def _gradients(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    next_token_loss(model, batch).backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("kind", GRADIENT_KINDS)
@pytest.mark.parametrize("variant", ["llama_gqa_tied_eps", "qwen_mqa_qkv_bias", "gpt2_all_bias"])
def test_record_gradient_scales_match_the_real_gradients(variant, kind):
    """On the same batch, every carried entry's gradient in the grown model is its source
    entry's gradient times the record's ``grad_scale`` (what ``carry`` computes for moments).
    Exception: LayerNorm hidden growth mean-fills the writers' new rows, so the new residual
    coordinates, and with them the carried writers' gradients, depend on the old rows; there
    the carried moments are an approximation and those tensors are not checked."""
    config = VARIANTS[variant]
    model = make_model(config)
    target, options = expansion(kind, config)
    grown, record = grow(model, target, options)
    batch = full_batch(config)
    old, new = _gradients(model, batch), _gradients(grown, batch)
    mean_filled = config.norm == "layer" and grown.config.hidden != config.hidden
    checked = 0
    for name, grad in new.items():
        r = record[name]
        if mean_filled and not name.endswith(_NORMS_AND_READERS):
            continue
        expected = r.carry(old[r.source], "grad", 1)
        scale = max(1.0, float(expected.abs().max()))
        assert max_error_at(r.carried_mask(grad.shape), grad, expected) <= 1e-9 * scale, name
        checked += 1
    assert checked >= 6 * config.n_layers


# Tensors whose carried gradients LayerNorm hidden growth leaves exact: norm gains and biases
# and the readers' old columns.
_NORMS_AND_READERS = (
    "norm.weight",
    "norm.bias",
    "attn.q.weight",
    "attn.k.weight",
    "attn.v.weight",
    "mlp.up.weight",
    "mlp.gate.weight",
)


# (3) Moments of scaled entries.


def test_qk_growth_scales_query_moments():
    config = VARIANTS["llama_gqa_tied_eps"]  # RoPE, attention without biases
    model, optimizer, _ = trained(config)
    old_values = snapshot(model)
    old = state_by_name(model, optimizer)
    k_old, k_new = config.qk_head_dim, config.qk_head_dim + 4
    c = math.sqrt(k_new / k_old)
    record = grow_(model, optimizer, {"qk_head_dim": k_new})
    checked = 0
    for name, p in model.named_parameters():
        r = record[name]
        mask = r.carried_mask(p.shape)
        is_q = name.endswith(("attn.q.weight", "attn.q.bias"))
        factor = c if is_q else 1.0
        state = optimizer.state[p]
        value = gather_old(old_values[r.source], r.index) * factor
        assert max_error_at(mask, p.detach(), value) <= 1e-12 * float(value.abs().max())
        for key, power in (("exp_avg", 1), ("exp_avg_sq", 2)):
            moment = gather_old(old[r.source][key], r.index) / factor**power
            scale = float(moment.abs().max())
            assert max_error_at(mask, state[key], moment) <= 1e-12 * scale, (name, key)
        checked += is_q
    assert checked == config.n_layers


@pytest.mark.parametrize("k", [2, 3])
def test_tiled_mlp_moments(k):
    """Up (and gate) rows keep their values and get 1/k of the gradient: m/k, v/k².
    Down columns get 1/k of the value and an unchanged gradient: moments kept."""
    config = VARIANTS["qwen_mqa_qkv_bias"]  # SwiGLU: up and gate
    model, optimizer, _ = trained(config)
    old_values = snapshot(model)
    old = state_by_name(model, optimizer)
    record = grow_(model, optimizer, {"ffn": k * config.ffn}, GrowthOptions(width_init="tile"))
    for name, p in model.named_parameters():
        r = record[name]
        assert bool(r.carried_mask(p.shape).all()), f"{name}: tiling made new entries"
        if name.endswith(("mlp.up.weight", "mlp.gate.weight")):
            value_factor, grad_factor = 1.0, 1.0 / k
        elif name.endswith("mlp.down.weight"):
            value_factor, grad_factor = 1.0 / k, 1.0
        else:
            assert r.is_identity
            value_factor = grad_factor = 1.0
        value = gather_old(old_values[r.source], r.index) * value_factor
        torch.testing.assert_close(p.detach(), value, rtol=1e-14, atol=0)
        for key, power in (("exp_avg", 1), ("exp_avg_sq", 2)):
            moment = gather_old(old[r.source][key], r.index) * grad_factor**power
            torch.testing.assert_close(optimizer.state[p][key], moment, rtol=1e-14, atol=0)


def test_hidden_growth_scales_gain_moments():
    """Gains are multiplied by sqrt(h/ĥ), so their moments by sqrt(ĥ/h) and ĥ/h."""
    config = VARIANTS["gpt2_all_bias"]
    model, optimizer, _ = trained(config)
    old = state_by_name(model, optimizer)
    h, h_new = config.hidden, config.hidden + 16
    record = grow_(model, optimizer, {"hidden": h_new})
    gains = [n for n, _ in model.named_parameters() if n.endswith("norm.weight")]
    assert len(gains) == 2 * config.n_layers + 1
    for name in gains:
        p = dict(model.named_parameters())[name]
        r = record[name]
        mask = r.carried_mask(p.shape)
        assert int(mask.sum()) == h
        for key, power in (("exp_avg", 1), ("exp_avg_sq", 2)):
            moment = old[name][key] * (h_new / h) ** (power / 2)
            torch.testing.assert_close(optimizer.state[p][key][:h], moment, rtol=1e-13, atol=0)


# (3) New entries start at zero; step is kept.


@pytest.mark.parametrize("kind", ["all_fields_zero", "all_fields_tile", "hidden_plus7"])
def test_new_entries_have_zero_state_and_step_is_kept(kind):
    config = VARIANTS["gpt2_all_bias"]
    model, optimizer, _ = trained(config)
    old = state_by_name(model, optimizer)
    target, options = expansion(kind, config)
    record = grow_(model, optimizer, target, options)
    assert {id(p) for p in model.parameters()} == {id(p) for p in optimizer.state}
    new_count = 0
    for name, p in model.named_parameters():
        state = optimizer.state[p]
        r = record[name]
        assert set(state) == {"step", "exp_avg", "exp_avg_sq"}, name
        assert float(state["step"]) == STEPS
        assert torch.equal(state["step"], old[r.source]["step"])
        new = ~r.carried_mask(p.shape)
        new_count += int(new.sum())
        for key in ("exp_avg", "exp_avg_sq"):
            assert state[key].shape == p.shape
            assert not state[key][new].any(), f"{name}.{key} is non-zero at new entries"
    if kind != "all_fields_tile":
        assert new_count > 0
    # No two parameters share a weight or a moment (copied layers get copies).
    tensors = list(model.parameters()) + [
        optimizer.state[p][key] for p in model.parameters() for key in ("exp_avg", "exp_avg_sq")
    ]
    storage = [t.untyped_storage().data_ptr() for t in tensors]
    assert len(set(storage)) == len(storage)
    # And training goes on.
    train_step(model, optimizer, full_batch(model.config))
    assert all(float(optimizer.state[p]["step"]) == STEPS + 1 for p in model.parameters())


# (4) Reset.


def test_reset_policy_empties_state_and_keeps_param_groups():
    config = VARIANTS["llama_gqa_tied_eps"]
    model, optimizer, _ = trained(config, groups=True)
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    target, options = expansion("all_fields_zero", config)
    grow_(model, optimizer, target, options, state_policy="reset")
    assert len(optimizer.state) == 0
    assert [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups] == (
        settings
    )
    held = [p for g in optimizer.param_groups for p in g["params"]]
    assert sorted(map(id, held)) == sorted(map(id, model.parameters()))
    train_step(model, optimizer, full_batch(model.config))
    assert all(float(optimizer.state[p]["step"]) == 1 for p in model.parameters())


def test_unknown_state_policy_is_rejected():
    config = VARIANTS["llama_mha"]
    model, optimizer, _ = trained(config)
    with pytest.raises(ValueError, match="policy"):
        grow_(model, optimizer, {"ffn": config.ffn + 4}, state_policy="keep")
    with pytest.raises(ValueError, match="policy"):
        grow_(model, None, {"ffn": config.ffn + 4}, state_policy="keep")
    assert model.config == config


# (5) Param groups.


@pytest.mark.parametrize("kind", ["all_fields_zero", "layers_middle_identity", "hidden_plus16"])
@pytest.mark.parametrize("variant", ["llama_gqa_tied_eps", "gpt2_all_bias"])
def test_new_params_join_the_group_of_their_source(variant, kind):
    config = VARIANTS[variant]
    model, optimizer, _ = trained(config, groups=True)
    group_of_old = {
        name: g
        for name, p in model.named_parameters()
        for g, group in enumerate(optimizer.param_groups)
        if any(p is q for q in group["params"])
    }
    target, options = expansion(kind, config)
    record = grow_(model, optimizer, target, options)
    held = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(held) == len({id(p) for p in held}), "a parameter is held twice"
    assert {id(p) for p in held} == {id(p) for p in model.parameters()}
    for name, p in model.named_parameters():
        (group,) = [
            g for g, grp in enumerate(optimizer.param_groups) if any(p is q for q in grp["params"])
        ]
        assert group == group_of_old[record[name].source], name
        assert group == (0 if p.ndim >= 2 else 1), name
    assert optimizer.param_groups[0]["weight_decay"] == 0.1
    assert optimizer.param_groups[1]["weight_decay"] == 0.0


def test_frozen_weights_stay_frozen_and_out_of_the_optimizer():
    config = VARIANTS["gpt2_all_bias"]
    model = make_model(config)
    model.tok_emb.weight.requires_grad_(False)
    optimizer = adamw([p for p in model.parameters() if p.requires_grad])
    batch = full_batch(config)
    train_step(model, optimizer, batch)
    grow_(model, optimizer, {"hidden": config.hidden + 8, "n_layers": config.n_layers + 1})
    assert not model.tok_emb.weight.requires_grad
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    assert id(model.tok_emb.weight) not in held
    train_step(model, optimizer, full_batch(model.config))


@pytest.mark.parametrize("policy", ["transform", "reset"])
def test_parameters_outside_the_model_keep_their_group_and_state(policy):
    """An optimizer that also trains another module (a task head) keeps training it."""
    config = VARIANTS["llama_mha"]
    model = make_model(config)
    head = torch.nn.Linear(config.hidden, 3, dtype=torch.float64)
    optimizer = torch.optim.AdamW(
        [{"params": model.parameters()}, {"params": head.parameters(), "lr": 1e-4}], lr=1e-2
    )
    batch = full_batch(config)
    tokens = batch[:, :-1]
    (model(tokens).sum() + head(model.hidden_states(tokens)).sum()).backward()
    optimizer.step()
    head_state = {
        p: {k: v.clone() for k, v in optimizer.state[p].items()} for p in head.parameters()
    }
    grow_(model, optimizer, {"ffn": config.ffn + 8}, state_policy=policy)
    assert [id(p) for p in optimizer.param_groups[1]["params"]] == [
        id(p) for p in head.parameters()
    ]
    assert optimizer.param_groups[1]["lr"] == 1e-4
    for p, state in head_state.items():
        assert state.keys() == optimizer.state[p].keys()
        assert all(torch.equal(v, optimizer.state[p][k]) for k, v in state.items())
    held = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert held == {id(p) for p in model.parameters()}


def test_grow_keeps_frozen_weights_frozen():
    config = VARIANTS["gpt2_all_bias"]
    model = make_model(config)
    model.tok_emb.weight.requires_grad_(False)
    model.layers[0].attn.q.weight.requires_grad_(False)
    grown, _ = grow(model, {"hidden": config.hidden + 8, "n_layers": config.n_layers + 1})
    frozen = {n for n, p in grown.named_parameters() if not p.requires_grad}
    assert frozen == {"tok_emb.weight", "layers.0.attn.q.weight"}


def test_unchanged_weights_keep_their_parameter_objects():
    config = VARIANTS["gpt2_all_bias"]
    model, optimizer, _ = trained(config)
    before = dict(model.named_parameters())
    record = grow_(model, optimizer, {"ffn": config.ffn + 8})
    for name, p in model.named_parameters():
        unchanged = record[name].is_identity and record[name].source == name
        assert (p is before[name]) == unchanged, name
        assert p.requires_grad
    assert any(p is before[n] for n, p in model.named_parameters())


def test_grow_in_place_equals_grow():
    config = VARIANTS["ln_rope_relu_gqa_nofinal"]
    model = make_model(config)
    target, options = expansion("all_fields_zero", config)
    grown, _ = grow(model, target, options)
    grow_(model, None, target, options)
    assert model.config == grown.config
    a, b = model.state_dict(), grown.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# (6) Unknown per-parameter state.


# A key with no known power, and a known key not shaped like its parameter (factored rows).
UNKNOWN_STATE = {
    "ema_weight": lambda w: w.clone(),
    "max_exp_avg_sq": lambda w: w.square().mean(1),
}


def _with_unknown_state(key: str = "ema_weight"):
    config = VARIANTS["gpt2_all_bias"]
    model, optimizer, _ = trained(config)
    up = model.layers[0].mlp.up.weight
    optimizer.state[up][key] = UNKNOWN_STATE[key](up.detach())
    return config, model, optimizer


@pytest.mark.parametrize("key", UNKNOWN_STATE)
def test_unknown_state_key_raises_and_leaves_the_optimizer_unchanged(key):
    config, model, optimizer = _with_unknown_state(key)
    groups = [list(g["params"]) for g in optimizer.param_groups]
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    with pytest.raises(ValueError, match=key):
        grow_(model, optimizer, {"ffn": config.ffn + 8})
    assert [list(g["params"]) for g in optimizer.param_groups] == groups
    assert {id(p) for p in optimizer.state} == set(state)
    for p, s in optimizer.state.items():
        assert s.keys() == state[id(p)].keys()
        for k, v in s.items():
            assert torch.equal(v, state[id(p)][k])


def test_unknown_state_key_leaves_the_model_unchanged():
    config, model, optimizer = _with_unknown_state()
    before = snapshot(model)
    with pytest.raises(ValueError, match="ema_weight"):
        grow_(model, optimizer, {"ffn": config.ffn + 8})
    assert model.config == config
    after = snapshot(model)
    assert after.keys() == before.keys()
    for name, value in after.items():
        assert torch.equal(value, before[name]), name


def test_moment_powers_carry_another_optimizers_state_as_the_error_advises():
    """RMSprop's ``square_avg`` is unknown: ``grow_`` names the key and ``moment_powers``,
    which it then accepts; the carried second moment is the old one on old entries."""
    config = VARIANTS["gpt2_all_bias"]
    model = make_model(config)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batch = full_batch(config)
    train_step(model, optimizer, batch)
    old = state_by_name(model, optimizer)
    with pytest.raises(ValueError, match=r"moment_powers=\{'square_avg'"):
        grow_(model, optimizer, {"ffn": config.ffn + 8})
    record = grow_(model, optimizer, {"ffn": config.ffn + 8}, moment_powers={"square_avg": 2})
    for name, p in model.named_parameters():
        r = record[name]
        moment = optimizer.state[p]["square_avg"]
        assert torch.equal(moment, r.carry(old[r.source]["square_avg"], "grad", 2)), name
        assert not moment[~r.carried_mask(p.shape)].any(), name
    train_step(model, optimizer, batch)


# (7) Records compose.


def test_param_resize_then_composes_indices_and_scales():
    first = ParamResize.along(
        "w", 1, 0, torch.tensor([0, -1, 1]), value_scale=torch.tensor([2.0, 1.0, 3.0])
    )
    second = ParamResize.along(
        "w", 1, 0, torch.tensor([2, 0, -1, 1]), value_scale=torch.tensor([5.0, 7.0, 1.0, 1.0])
    )
    both = first.then(second)
    assert both.source == "w"
    assert both.index[0].tolist() == [1, 0, -1, -1]
    old = torch.tensor([10.0, 20.0])
    assert both.carry(old, "value").tolist() == [20.0 * 3 * 5, 10.0 * 2 * 7, 0.0, 0.0]
    assert both.carried_mask(torch.Size([4])).tolist() == [True, True, False, False]


@pytest.mark.parametrize("variant", ["llama_gqa_tied_eps", "gpt2_all_bias"])
def test_two_step_records_compose_to_the_one_shot_record(variant):
    config = VARIANTS[variant]
    model = make_model(config)
    first = {"ffn": config.ffn + 8, "n_layers": config.n_layers + 1, "v_head_dim": 11}
    second = {"hidden": config.hidden + 8, "qk_head_dim": config.qk_head_dim + 2}
    options = GrowthOptions(where="middle", layer_init="copy", width_init="tile", seed=2)
    mid, r1 = grow(model, first, options)
    two_step, r2 = grow(mid, second, options)
    one_shot, r12 = grow(model, {**first, **second}, options)
    composed = r1.then(r2)
    assert set(composed) == set(r12) == set(dict(two_step.named_parameters()))
    source = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(0)
    for name, p in two_step.named_parameters():
        c, one = composed[name], r12[name]
        assert c.source == one.source == r1[r2[name].source].source, name
        mask = c.carried_mask(p.shape)
        assert torch.equal(mask, one.carried_mask(p.shape)), name
        x = torch.randn(source[c.source].shape, generator=gen, dtype=torch.float64)
        for scale, power in (("grad", 1), ("grad", 2), ("value", 1)):
            via_both = r2[name].carry(r1[r2[name].source].carry(x, scale, power), scale, power)
            torch.testing.assert_close(c.carry(x, scale, power), via_both, rtol=1e-14, atol=0)
            torch.testing.assert_close(one.carry(x, scale, power), via_both, rtol=1e-14, atol=0)
        # The carried weights themselves: the source read through the composed record.
        value = c.carry(source[c.source].detach(), "value")
        torch.testing.assert_close(p.detach() * mask, value, rtol=1e-13, atol=1e-15)
        q = dict(one_shot.named_parameters())[name].detach()
        torch.testing.assert_close(q * mask, p.detach() * mask, rtol=1e-13, atol=1e-15)


def test_composed_record_carries_optimizer_state_like_two_grow_calls():
    """Growing in two grow_ calls transforms the state as the composed record says."""
    config = VARIANTS["llama_gqa_tied_eps"]
    model, optimizer, _ = trained(config)
    old = state_by_name(model, optimizer)
    r1 = grow_(model, optimizer, {"qk_head_dim": config.qk_head_dim + 2, "ffn": 60})
    r2 = grow_(
        model,
        optimizer,
        {"hidden": config.hidden + 8, "ffn": 120, "n_layers": 3},
        GrowthOptions(width_init="tile", layer_init="copy"),
    )
    composed = r1.then(r2)
    for name, p in model.named_parameters():
        r = composed[name]
        for key, power in (("exp_avg", 1), ("exp_avg_sq", 2)):
            expected = r.carry(old[r.source][key], "grad", power)
            torch.testing.assert_close(optimizer.state[p][key], expected, rtol=1e-13, atol=0)
