"""Every expansion on every model variant computes the same function as its source.

Tolerances are relative to the logits' scale: max |logit diff| <= rtol · max(1, max |logit|),
rtol 1e-10 in float64 and 1e-5 in float32.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from conftest import (
    DTYPES,
    EXPANSIONS,
    POST_NORM,
    POST_NORM_EXACT,
    POST_NORM_INEXACT,
    RTOL,
    SEQ,
    VARIANTS,
    assert_same_function,
    expansion,
    make_model,
    new_entry_masks,
    relative_error,
    tiny_config,
    tokens_for,
)
from growformer import GrowthError, GrowthOptions, ModelConfig, grow
from growformer.config import SIZE_FIELDS
from growformer.expand import (
    expand_ffn,
    expand_heads,
    expand_hidden,
    expand_qk_head_dim,
    expand_v_head_dim,
    extend_positions,
    insert_layers,
)


def _check_sizes(grown: ModelConfig, source: ModelConfig, target: dict[str, int]) -> None:
    for name in SIZE_FIELDS:
        expected = target.get(name, getattr(source, name))
        if name == "n_kv_heads" and "n_heads" in target and "n_kv_heads" not in target:
            expected = target["n_heads"]
        assert getattr(grown, name) == expected, f"{name}: {getattr(grown, name)} != {expected}"


def test_variants_have_logits_of_order_ten():
    for name, config in {**VARIANTS, "post_norm": POST_NORM}.items():
        with torch.no_grad():
            scale = float(make_model(config)(tokens_for(config)).abs().max())
        assert 3 <= scale <= 100, f"{name}: max |logit| {scale}"


@DTYPES
@pytest.mark.parametrize("name", list(EXPANSIONS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_expansion_is_exact(variant, name, dtype):
    config = VARIANTS[variant]
    target, options = expansion(name, config)
    model = make_model(config, dtype)
    grown, _ = grow(model, target, options)
    _check_sizes(grown.config, config, target)
    assert all(p.dtype == dtype for p in grown.parameters())
    assert_same_function(model, grown, tokens_for(config), RTOL[dtype])


@pytest.mark.parametrize(
    "name", [n for n in EXPANSIONS if not n.startswith(("max_seq_len", "all", "ffn_tile_x2"))]
)
@pytest.mark.parametrize("variant", ["llama_gqa_tied_eps", "gpt2_all_bias"])
def test_new_entries_are_live(variant, name):
    """Noise on the new (or, under tiling, duplicated) entries changes the function: the
    exactness above comes from how they were filled, and the tolerance can detect a mistake."""
    config = VARIANTS[variant]
    target, options = expansion(name, config)
    model = make_model(config)
    grown, record = grow(model, target, options)
    masks = new_entry_masks(grown, record)
    touched = 0
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pname, p in grown.named_parameters():
            mask = masks[pname]
            if options.width_init == "tile" and not record[pname].is_identity:
                mask = torch.ones_like(mask)  # tiling leaves nothing new: perturb the copies
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.add_(0.3 * noise * mask)
            touched += int(mask.sum())
    assert touched > 0
    assert relative_error(model, grown, tokens_for(config)) > 1e-4


def test_longer_sequences_after_max_seq_len_growth_keep_the_prefix():
    """A causal model's logits on the first SEQ tokens do not depend on later ones."""
    for variant in ("llama_mha", "gpt2_all_bias"):
        config = VARIANTS[variant]
        model = make_model(config)
        grown, _ = grow(model, {"max_seq_len": SEQ + 8})
        tokens = tokens_for(grown.config)
        with torch.no_grad():
            err = (grown(tokens)[:, :SEQ] - model(tokens[:, :SEQ])).abs().max()
        assert float(err) <= 1e-10 * 10
        with pytest.raises(ValueError, match="max_seq_len"):
            model(tokens)


# Post-norm (BERT-like)


@DTYPES
@pytest.mark.parametrize("name", POST_NORM_EXACT)
def test_post_norm_exact_expansions(name, dtype):
    target, options = expansion(name, POST_NORM)
    model = make_model(POST_NORM, dtype)
    grown, _ = grow(model, target, options)
    _check_sizes(grown.config, POST_NORM, target)
    assert_same_function(model, grown, tokens_for(POST_NORM), RTOL[dtype])


@pytest.mark.parametrize("name", POST_NORM_INEXACT)
def test_post_norm_hidden_and_layers_need_approximate(name):
    target, options = expansion(name, POST_NORM)
    model = make_model(POST_NORM)
    with pytest.raises(GrowthError, match="approximate"):
        grow(model, target, options)
    grown, _ = grow(model, target, replace(options, approximate=True))
    _check_sizes(grown.config, POST_NORM, target)
    assert relative_error(model, grown, tokens_for(POST_NORM)) > 1e-6


def test_hidden_growth_of_tied_layernorm_without_final_norm_needs_approximate():
    config = tiny_config(norm="layer", final_norm=False, tie_embeddings=True)
    model = make_model(config)
    with pytest.raises(GrowthError, match="approximate"):
        grow(model, {"hidden": 48})
    grown, _ = grow(model, {"hidden": 48}, GrowthOptions(approximate=True))
    assert grown.config.hidden == 48
    assert relative_error(model, grown, tokens_for(config)) > 1e-6


# Source untouched, storage, grown config


@pytest.mark.parametrize("name", ["all_fields_zero", "all_fields_tile", "ffn_zero"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_grow_leaves_source_unchanged_and_shares_no_storage(variant, name):
    config = VARIANTS[variant]
    target, options = expansion(name, config)
    model = make_model(config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grown, _ = grow(model, target, options)
    assert model.config == config
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    for n, p in after.items():
        assert torch.equal(p, before[n]), f"source weight {n} changed"
    source_storage = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for n, p in grown.named_parameters():
        assert p.untyped_storage().data_ptr() not in source_storage, f"{n} shares storage"
    grown_storage = [p.untyped_storage().data_ptr() for p in grown.parameters()]
    assert len(set(grown_storage)) == len(grown_storage), "two grown weights share storage"
    # Writing into the grown model does not reach the source.
    with torch.no_grad():
        for p in grown.parameters():
            p.add_(1.0)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


def test_grown_config_rope_theta_and_eps():
    config = VARIANTS["llama_gqa_tied_eps"]  # rope_theta 500, eps 1e-2, qk 8, hidden 32
    model = make_model(config)
    grown, _ = grow(model, {"qk_head_dim": 12})
    assert grown.config.rope_theta == pytest.approx(500.0 ** (12 / 8), rel=1e-12)
    assert grown.config.norm_eps == config.norm_eps
    grown, _ = grow(model, {"hidden": 48})
    assert grown.config.norm_eps == pytest.approx(1e-2 * 32 / 48, rel=1e-12)
    assert grown.config.rope_theta == config.rope_theta
    grown, _ = grow(model, {"hidden": 48, "qk_head_dim": 16})
    assert grown.config.norm_eps == pytest.approx(1e-2 * 32 / 48, rel=1e-12)
    assert grown.config.rope_theta == pytest.approx(500.0**2, rel=1e-12)
    # Two qk growths compose: theta^(12/8) then ^(16/12) = theta^(16/8).
    step, _ = grow(grow(model, {"qk_head_dim": 12})[0], {"qk_head_dim": 16})
    assert step.config.rope_theta == pytest.approx(500.0**2, rel=1e-12)
    # Without RoPE the base is untouched; other fields always are.
    learned = VARIANTS["gpt2_all_bias"]
    grown, _ = grow(make_model(learned), {"qk_head_dim": 12, "ffn": 64})
    assert grown.config.rope_theta == learned.rope_theta
    unchanged = {"rope_theta", "norm_eps", *SIZE_FIELDS}
    for field, value in learned.to_dict().items():
        if field not in unchanged:
            assert getattr(grown.config, field) == value, field


def test_unscaled_eps_would_not_be_exact():
    """Control for the eps scaling: the grown weights with the source's eps are off by far more
    than the tolerance (so the eps check above matters)."""
    config = VARIANTS["llama_gqa_tied_eps"]
    model = make_model(config)
    grown, _ = grow(model, {"hidden": 48})
    wrong = type(grown)(grown.config.replace(norm_eps=config.norm_eps)).double()
    wrong.load_state_dict(grown.state_dict())
    assert relative_error(model, wrong, tokens_for(config)) > 1e-4


def test_rope_qk_growth_keeps_old_dims_in_rotate_half_layout():
    """Old dims of every head go to [0, k/2) and [k̂/2, k̂/2 + k/2), scaled by sqrt(k̂/k)."""
    config = VARIANTS["llama_gqa_tied_eps"]  # 4 heads, 2 kv heads, qk 8
    model = make_model(config)
    grown, _ = grow(model, {"qk_head_dim": 12})
    c = math.sqrt(12 / 8)
    old = model.layers[0].attn.q.weight.detach().view(4, 8, -1)
    new = grown.layers[0].attn.q.weight.detach().view(4, 12, -1)
    torch.testing.assert_close(new[:, 0:4], old[:, 0:4] * c, rtol=1e-15, atol=0)
    torch.testing.assert_close(new[:, 6:10], old[:, 4:8] * c, rtol=1e-15, atol=0)
    new_k = grown.layers[0].attn.k.weight.detach().view(2, 12, -1)
    old_k = model.layers[0].attn.k.weight.detach().view(2, 8, -1)
    assert torch.equal(new_k[:, 0:4], old_k[:, 0:4])
    assert torch.equal(new_k[:, 6:10], old_k[:, 4:8])
    assert not new_k[:, 4:6].any() and not new_k[:, 10:12].any()


# Functional expansions agree with grow


def _functional(name, config, state, seed):
    if name == "ffn":
        return expand_ffn(config, state, config.ffn + 5, init="tile", seed=seed), (
            {"ffn": config.ffn + 5},
            GrowthOptions(width_init="tile", seed=seed),
        )
    if name == "heads":
        n_heads, n_kv = config.n_heads + config.group_size, config.n_kv_heads + 1
        return expand_heads(config, state, n_heads, n_kv, seed=seed), (
            {"n_heads": n_heads, "n_kv_heads": n_kv},
            GrowthOptions(seed=seed),
        )
    if name == "qk":
        return expand_qk_head_dim(config, state, config.qk_head_dim + 4, seed=seed), (
            {"qk_head_dim": config.qk_head_dim + 4},
            GrowthOptions(seed=seed),
        )
    if name == "v":
        return expand_v_head_dim(config, state, config.v_head_dim + 3, seed=seed), (
            {"v_head_dim": config.v_head_dim + 3},
            GrowthOptions(seed=seed),
        )
    if name == "hidden":
        return expand_hidden(config, state, config.hidden + 8, seed=seed), (
            {"hidden": config.hidden + 8},
            GrowthOptions(seed=seed),
        )
    if name == "layers":
        n = config.n_layers + 2
        return insert_layers(config, state, n, where="middle", init="copy", seed=seed), (
            {"n_layers": n},
            GrowthOptions(where="middle", layer_init="copy", seed=seed),
        )
    assert name == "positions"
    return extend_positions(config, state, config.max_seq_len + 4, seed=seed), (
        {"max_seq_len": config.max_seq_len + 4},
        GrowthOptions(seed=seed),
    )


@pytest.mark.parametrize("name", ["ffn", "heads", "qk", "v", "hidden", "layers", "positions"])
@pytest.mark.parametrize("variant", ["llama_gqa_tied_eps", "gpt2_all_bias"])
def test_functional_expansions_agree_with_grow(variant, name):
    config = VARIANTS[variant]
    model = make_model(config)
    state = {n: t.clone() for n, t in model.state_dict().items()}
    kept = {n: t.clone() for n, t in state.items()}
    result, (target, options) = _functional(name, config, state, seed=9)
    for n, t in state.items():
        assert torch.equal(t, kept[n]), f"expansion modified its input {n}"
    grown, record = grow(model, target, options)
    assert result.config == grown.config
    grown_state = grown.state_dict()
    assert result.state.keys() == grown_state.keys()
    for n, t in grown_state.items():
        assert torch.equal(result.state[n], t), n
    assert set(result.record) == set(record)
    for n in record:
        assert result.record[n].source == record[n].source
    # Unchanged tensors are passed through by reference (no copy).
    assert result.record.changed() or (name == "positions" and config.position == "rope")
    for n in set(result.record) - set(result.record.changed()):
        assert result.state[n] is state[n]
    model_from = type(model)(result.config).double()
    model_from.load_state_dict(result.state)
    assert_same_function(model, model_from, tokens_for(config), RTOL[torch.float64])


# Composition


ORDER = [
    {"hidden": 40},
    {"qk_head_dim": 10},
    {"v_head_dim": 11},
    {"n_heads": 6, "n_kv_heads": 3},
    {"ffn": 60},
    {"max_seq_len": 20},
    {"n_layers": 4},
]


@pytest.mark.parametrize("width_init", ["zero", "tile"])
@pytest.mark.parametrize(
    "variant", ["llama_gqa_tied_eps", "gpt2_all_bias", "ln_rope_relu_gqa_nofinal"]
)
def test_composed_target_equals_expansions_one_after_another(variant, width_init):
    config = VARIANTS[variant].replace(n_heads=4, n_kv_heads=2)
    model = make_model(config)
    options = GrowthOptions(width_init=width_init, where="interleave", seed=6)
    target = {k: v for step in ORDER for k, v in step.items()}
    one_shot, _ = grow(model, target, options)
    stepwise = model
    for step in ORDER:
        stepwise, _ = grow(stepwise, step, options)
    assert one_shot.config == stepwise.config
    a, b = one_shot.state_dict(), stepwise.state_dict()
    assert a.keys() == b.keys()
    for n in a:
        assert torch.equal(a[n], b[n]), n
    assert_same_function(model, one_shot, tokens_for(config), RTOL[torch.float64])
    # Another order reaches the same sizes and is still exact, though not bitwise equal.
    reverse = model
    for step in reversed(ORDER):
        reverse, _ = grow(reverse, step, options)
    assert reverse.config == one_shot.config
    assert_same_function(model, reverse, tokens_for(config), RTOL[torch.float64])


def test_same_target_is_a_copy():
    """Growing to the current size changes nothing (a useful no-op for schedules)."""
    config = VARIANTS["llama_mha"]
    model = make_model(config)
    grown, record = grow(model, {"ffn": config.ffn})
    assert grown.config == config
    assert not record.changed()
    for (n, p), (_, q) in zip(model.named_parameters(), grown.named_parameters(), strict=True):
        assert torch.equal(p, q), n


# Random fills: seeded, reproducible, independent of threads and chunking of the work


def _random_entries(grown, record) -> dict[str, torch.Tensor]:
    """The new non-zero entries of each matrix: the random ones in an RMSNorm model."""
    masks = new_entry_masks(grown, record)
    entries = {
        n: p.detach()[masks[n] & (p.detach() != 0)]
        for n, p in grown.named_parameters()
        if p.ndim == 2
    }
    return {n: e for n, e in entries.items() if e.numel()}


def test_random_fills_are_reproducible_and_depend_on_the_seed():
    config = VARIANTS["llama_gqa_tied_eps"]
    model = make_model(config)
    target, options = expansion("all_fields_zero", config)
    a, record = grow(model, target, options)
    b, _ = grow(model, target, options)
    c, _ = grow(model, target, replace(options, seed=options.seed + 1))
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), n
    new_a, new_c = _random_entries(a, record), _random_entries(c, record)
    assert new_a
    for n in new_a:
        assert not torch.equal(new_a[n], new_c[n]), n


def test_random_fills_do_not_repeat_across_tensors_or_growths():
    """Every tensor, and every growth of a schedule with the same seed, gets its own draws."""
    config = VARIANTS["llama_mha"].replace(ffn=16)
    model = make_model(config)
    once, _ = grow(model, {"ffn": 32})
    twice, _ = grow(once, {"ffn": 48})
    up0 = once.state_dict()["layers.0.mlp.up.weight"][16:]
    up1 = once.state_dict()["layers.1.mlp.up.weight"][16:]
    gate0 = once.state_dict()["layers.0.mlp.gate.weight"][16:]
    later = twice.state_dict()["layers.0.mlp.up.weight"][32:]
    first = torch.stack([up0, up1, gate0, later]).reshape(4, -1)
    distinct = first[:, None, :] != first[None, :, :]
    assert distinct.any(-1).sum() == 12  # every pair of the four blocks differs


@pytest.mark.parametrize(
    ("target", "name"),
    [
        ({"ffn": 1024}, "layers.0.mlp.up.weight"),  # new rows
        ({"hidden": 256}, "layers.0.attn.v.weight"),  # new input columns
        ({"hidden": 256}, "layers.1.mlp.up.weight"),
        ({"n_heads": 16}, "layers.0.attn.k.weight"),  # new kv groups' rows
        ({"qk_head_dim": 64}, "layers.1.attn.q.weight"),  # new rows among scaled ones
    ],
)
def test_random_fills_have_the_source_scale(target, name):
    """New random entries are centred with the standard deviation of the tensor they extend."""
    config = tiny_config(hidden=64, ffn=256, n_heads=4, n_kv_heads=4, qk_head_dim=16)
    model = make_model(config)
    source = model.state_dict()[name]
    grown, record = grow(model, target)
    tensor = grown.state_dict()[name]
    new = tensor[~record[name].carried_mask(tensor.shape)]
    assert new.numel() >= 4096
    assert abs(float(new.mean())) < 0.05 * float(source.std())
    assert float(new.std()) == pytest.approx(float(source.std()), rel=0.05)


@pytest.mark.parametrize("variant", ["llama_gqa_tied_eps", "gpt2_all_bias"])
def test_hidden_growth_gives_random_new_columns_to_v_up_and_w_u_only(variant):
    """Q, K and gate read the new coordinates through zero columns (learned scores and gates
    stay put as the coordinates come alive); V, up and an untied W_U through random ones."""
    config = VARIANTS[variant].replace(tie_embeddings=False)
    grown, record = grow(make_model(config), {"hidden": config.hidden + 8})
    random, zero = ["attn.v", "mlp.up", "lm_head"], ["attn.q", "attn.k", "mlp.gate"]
    seen = set()
    for name, tensor in grown.state_dict().items():
        part = next((p for p in random + zero if f"{p}.weight" in name), None)
        if part is None:
            continue
        new = tensor[:, config.hidden :]
        assert torch.equal(tensor[~record[name].carried_mask(tensor.shape)], new.reshape(-1))
        assert new.any() == (part in random), name
        seen.add(part)
    assert seen == set(random + zero) - ({"mlp.gate"} if config.mlp != "swiglu" else set())


def test_a_new_identity_layer_copies_norms_zeroes_biases_and_draws_the_rest():
    config = VARIANTS["gpt2_all_bias"]
    model = make_model(config)
    grown, record = grow(model, {"n_layers": config.n_layers + 1})
    old = model.state_dict()
    new = {
        n: t for n, t in grown.state_dict().items() if n.startswith(f"layers.{config.n_layers}.")
    }
    assert new
    for name, tensor in new.items():
        source = old[record[name].source]
        if ".attn_norm." in name or ".mlp_norm." in name:
            assert torch.equal(tensor, source), name
        elif name.endswith("bias") or ".attn.o." in name or ".mlp.down." in name:
            assert not tensor.any(), name
        else:
            assert float(tensor.std()) == pytest.approx(float(source.std()), rel=0.25), name
            assert not torch.equal(tensor, source), name


def test_a_fresh_tensor_is_zero_where_it_says_so_on_either_side_of_its_threshold():
    from growformer.expand._ops import _FRESH_PAGES_MIN_BYTES, fresh_tensor

    for shape, lazy in [((3, 5), False), ((_FRESH_PAGES_MIN_BYTES // 2, 3), True)]:
        t, zeroed = fresh_tensor(shape, torch.bfloat16, torch.device("cpu"))
        assert t.shape == shape and t.dtype == torch.bfloat16 and t.is_contiguous()
        assert zeroed == lazy
        if zeroed:
            assert not t.any()
        t.fill_(0)[-1, -1] = 2
        assert float(t.sum()) == 2


def _assert_same_growth(model, first, second, rtol: float = 0.0) -> None:
    """Two growths of ``model`` gave the same weights (to ``rtol``; bitwise at 0) and the second
    computes what ``model`` does."""
    for (n, p), q in zip(first.named_parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=rtol, atol=rtol * 1e-2, msg=n)
    assert_same_function(model, second, tokens_for(model.config), RTOL[torch.float64])


@pytest.mark.parametrize("kind", ["all_fields_zero", "layers_end_identity"])
def test_growth_into_lazy_zero_pages_gives_the_same_weights(kind, monkeypatch):
    """Tiny models stay below the mapped-memory threshold; lower it so every grown tensor is
    mapped: the zero fills that are then skipped leave the same weights."""
    from growformer.expand import _ops

    config = VARIANTS["gpt2_all_bias"]
    model = make_model(config)
    target, options = expansion(kind, config)
    heap, _ = grow(model, target, options)
    monkeypatch.setattr(_ops, "_FRESH_PAGES_MIN_BYTES", 1)
    mapped, _ = grow(model, target, options)
    _assert_same_growth(model, heap, mapped)


def test_fills_split_in_small_chunks_are_exact_and_do_not_depend_on_threads(monkeypatch):
    """Tiny models fill in one chunk; force many (strided ones included) on pools of 1 and 3
    threads: the same weights, still exact."""
    from concurrent.futures import ThreadPoolExecutor

    from growformer.expand import _ops

    config = VARIANTS["gpt2_all_bias"]
    model = make_model(config)
    target, options = expansion("all_fields_zero", config)
    monkeypatch.setattr(_ops.Rng, "CHUNK", 7)
    monkeypatch.setattr(_ops, "_GRAIN", 4)  # strided chunks copied in several pieces
    results = []
    for workers in (1, 3):
        with ThreadPoolExecutor(workers) as pool:
            monkeypatch.setattr(_ops, "_fill_pool", lambda pool=pool, n=workers: (pool, n))
            results.append(grow(model, target, options)[0])
    _assert_same_growth(model, *results)


@pytest.mark.parametrize("name", ["all_fields_zero", "all_fields_tile"])
def test_gather_path_for_many_runs_is_exact(monkeypatch, name):
    """Index maps with more than MAX_RUNS runs move carried entries by one gather instead of
    run by run: the same values (up to the order of the mean-fill sums)."""
    from growformer.expand import _ops

    config = VARIANTS["ln_learned_swiglu_tied_headdims"]
    model = make_model(config)
    target, options = expansion(name, config)
    by_runs, _ = grow(model, target, options)
    monkeypatch.setattr(_ops, "MAX_RUNS", 0)
    gathered, _ = grow(model, target, options)
    _assert_same_growth(model, by_runs, gathered, rtol=1e-12)
