"""ModelConfig validation, the canonical Transformer, model_from_state, and bad growth targets."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import POST_NORM, VARIANTS, make_model, tiny_config, tokens_for
from growformer import ConfigError, GrowthError, GrowthOptions, ModelConfig, grow, model_from_state
from growformer.config import SIZE_FIELDS
from growformer.model import Linear, Transformer

# ModelConfig


@pytest.mark.parametrize("field", ["vocab_size", *SIZE_FIELDS])
@pytest.mark.parametrize("value", [0, -3, 2.0, True, "8"])
def test_sizes_must_be_positive_integers(field, value):
    with pytest.raises(ConfigError, match=field):
        tiny_config(**{field: value})


def test_heads_must_be_a_multiple_of_kv_heads():
    with pytest.raises(ConfigError, match="n_kv_heads"):
        tiny_config(n_heads=4, n_kv_heads=3)


def test_hidden_not_divisible_by_heads_needs_explicit_head_dims():
    with pytest.raises(ConfigError, match="n_heads"):
        tiny_config(hidden=30, n_heads=4)
    config = tiny_config(hidden=30, n_heads=4, qk_head_dim=8, v_head_dim=8)
    assert (config.qk_head_dim, config.v_head_dim) == (8, 8)


def test_rope_needs_an_even_qk_head_dim():
    with pytest.raises(ConfigError, match="qk_head_dim"):
        tiny_config(qk_head_dim=7, v_head_dim=8)
    assert tiny_config(qk_head_dim=7, v_head_dim=8, position="learned").qk_head_dim == 7


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("norm", "batch"),
        ("position", "alibi"),
        ("mlp", "tanh"),
        ("norm_placement", "sandwich"),
    ],
)
def test_unknown_choices_are_rejected(field, value):
    with pytest.raises(ConfigError, match=field) as err:
        tiny_config(**{field: value})
    assert value in str(err.value)


@pytest.mark.parametrize("field", ["norm_eps", "rope_theta", "init_std"])
@pytest.mark.parametrize("value", [0.0, -1e-5, float("nan"), float("inf"), "1e-5", True])
def test_bad_floats_are_rejected(field, value):
    with pytest.raises(ConfigError, match=field):
        tiny_config(**{field: value})


def test_rope_theta_must_exceed_one():
    with pytest.raises(ConfigError, match="rope_theta"):
        tiny_config(rope_theta=1.0)


@pytest.mark.parametrize("field", ["causal", "tie_embeddings", "final_norm", "attn_bias"])
def test_flags_must_be_bools(field):
    with pytest.raises(ConfigError, match=field):
        tiny_config(**{field: 1})


def test_defaults():
    config = ModelConfig(hidden=48, n_heads=6)
    assert config.n_kv_heads == 6
    assert config.qk_head_dim == config.v_head_dim == 8
    assert config.group_size == 1
    gqa = ModelConfig(hidden=48, n_heads=6, n_kv_heads=2, v_head_dim=5)
    assert (gqa.n_kv_heads, gqa.group_size, gqa.qk_head_dim, gqa.v_head_dim) == (2, 3, 8, 5)


def test_replace_validates():
    with pytest.raises(ConfigError, match="n_kv_heads"):
        tiny_config().replace(n_kv_heads=3)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dict_and_json_round_trip(variant):
    config = VARIANTS[variant]
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.from_dict(json.loads(config.to_json())) == config


@pytest.mark.parametrize("variant", [*VARIANTS, "post_norm"])
def test_the_config_counts_the_models_parameters(variant):
    config = VARIANTS.get(variant, POST_NORM)
    with torch.device("meta"):
        assert config.num_parameters() == Transformer(config).num_parameters()


def test_from_dict_rejects_unknown_fields_and_non_mappings():
    data = tiny_config().to_dict()
    with pytest.raises(ConfigError, match="n_experts"):
        ModelConfig.from_dict({**data, "n_experts": 8})
    with pytest.raises(ConfigError, match="object"):
        ModelConfig.from_dict([("hidden", 32)])


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        tiny_config().hidden = 64


# Transformer


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_shapes(variant):
    config = VARIANTS[variant]
    model = make_model(config)
    tokens = tokens_for(config, batch=3, seq=5)
    with torch.no_grad():
        logits = model(tokens)
        hidden = model.hidden_states(tokens)
    assert logits.shape == (3, 5, config.vocab_size)
    assert hidden.shape == (3, 5, config.hidden)
    assert logits.dtype == torch.float64
    params = dict(model.named_parameters())
    assert params["layers.0.attn.q.weight"].shape == (
        config.n_heads * config.qk_head_dim,
        config.hidden,
    )
    assert params["layers.0.attn.k.weight"].shape == (
        config.n_kv_heads * config.qk_head_dim,
        config.hidden,
    )
    assert params["layers.0.attn.v.weight"].shape == (
        config.n_kv_heads * config.v_head_dim,
        config.hidden,
    )
    assert params["layers.0.attn.o.weight"].shape == (
        config.hidden,
        config.n_heads * config.v_head_dim,
    )
    assert ("lm_head.weight" in params) == (not config.tie_embeddings)
    assert ("pos_emb.weight" in params) == (config.position == "learned")


@pytest.mark.parametrize(
    "variant", ["llama_mha", "gpt2_all_bias", "rms_rope_gelu_encoder_headdims_nofinal"]
)
def test_causality(variant):
    config = VARIANTS[variant]
    model = make_model(config)
    tokens = tokens_for(config)
    changed = tokens.clone()
    t = 9
    changed[:, t] = (changed[:, t] + 1) % config.vocab_size
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    earlier = float((a[:, :t] - b[:, :t]).abs().max())
    later = float((a[:, t:] - b[:, t:]).abs().max())
    assert later > 1e-3
    if config.causal:
        assert earlier <= 1e-12
    else:
        assert earlier > 1e-3


@pytest.mark.parametrize("variant", ["llama_gqa_tied_eps", "qwen_mqa_qkv_bias"])
def test_gqa_equals_mha_with_repeated_kv_heads(variant):
    config = VARIANTS[variant]
    gqa = make_model(config)
    mha_config = config.replace(n_kv_heads=config.n_heads)
    state = {}
    for name, t in gqa.state_dict().items():
        if ".attn.k." in name or ".attn.v." in name:
            head_dim = config.qk_head_dim if ".attn.k." in name else config.v_head_dim
            heads = t.reshape(config.n_kv_heads, head_dim, *t.shape[1:])
            t = heads.repeat_interleave(config.group_size, dim=0).reshape(-1, *t.shape[1:])
        state[name] = t.clone()
    mha = model_from_state(mha_config, state)
    tokens = tokens_for(config)
    with torch.no_grad():
        err = float((gqa(tokens) - mha(tokens)).abs().max())
    assert err <= 1e-12
    if config.n_kv_heads == 1:
        return  # MQA: both layouts coincide
    # The other layout (kv heads tiled, not interleaved) is a different model.
    tiled = dict(state)
    for name, t in gqa.state_dict().items():
        if ".attn.k." in name:
            heads = t.reshape(config.n_kv_heads, config.qk_head_dim, *t.shape[1:])
            tiled[name] = heads.repeat(config.group_size, *[1] * (t.ndim)).reshape(-1, *t.shape[1:])
    with torch.no_grad():
        wrong = float((gqa(tokens) - model_from_state(mha_config, tiled)(tokens)).abs().max())
    assert wrong > 1e-3


def test_sequence_longer_than_max_seq_len_raises():
    for variant in ("llama_mha", "gpt2_all_bias"):
        config = VARIANTS[variant]
        model = make_model(config)
        with pytest.raises(ValueError, match="max_seq_len"):
            model(tokens_for(config, seq=config.max_seq_len + 1))


def test_model_from_state_uses_the_given_tensors():
    config = VARIANTS["gpt2_all_bias"]
    source = make_model(config)
    state = {n: t.clone() for n, t in source.state_dict().items()}
    model = model_from_state(config, state)
    for name, p in model.named_parameters():
        assert p.data_ptr() == state[name].data_ptr(), name
    tokens = tokens_for(config)
    with torch.no_grad():
        assert torch.equal(model(tokens), source(tokens))


def test_linear_initializes_like_nn_linear_except_on_meta(monkeypatch):
    torch.manual_seed(3)
    ours = Linear(5, 4, bias=True)
    torch.manual_seed(3)
    reference = torch.nn.Linear(5, 4, bias=True)
    assert torch.equal(ours.weight, reference.weight)
    assert torch.equal(ours.bias, reference.bias)

    def no_init(*args, **kwargs):
        raise AssertionError("nn.Linear's init ran on the meta device")

    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", no_init)
    on_meta = Linear(5, 4, device="meta")
    assert on_meta.weight.is_meta and on_meta.weight.shape == (4, 5)
    with torch.device("meta"):
        model_skeleton = Transformer(tiny_config())
    assert all(p.is_meta for p in model_skeleton.parameters())


def test_model_from_state_rejects_bad_weights():
    config = VARIANTS["gpt2_all_bias"]
    state = make_model(config).state_dict()
    missing = {n: t for n, t in state.items() if n != "layers.1.mlp.up.bias"}
    with pytest.raises(KeyError, match=r"layers\.1\.mlp\.up\.bias"):
        model_from_state(config, missing)
    extra = {**state, "layers.2.mlp.up.bias": state["layers.1.mlp.up.bias"]}
    with pytest.raises(KeyError, match=r"layers\.2\.mlp\.up\.bias"):
        model_from_state(config, extra)
    wrong = {**state, "layers.0.attn.o.weight": state["layers.0.attn.o.weight"][:, :-1]}
    with pytest.raises(ValueError, match=r"layers\.0\.attn\.o\.weight"):
        model_from_state(config, wrong)


# Bad growth targets


@pytest.mark.parametrize("field", SIZE_FIELDS)
def test_smaller_target_raises(field):
    config = tiny_config(n_kv_heads=2, n_layers=3)  # every size field can go down by 1 or 2
    model = make_model(config)
    step = 2 if field in ("n_heads", "qk_head_dim") else 1
    target = {field: getattr(config, field) - step}
    if field == "n_heads":
        target["n_kv_heads"] = 1
    with pytest.raises(GrowthError, match="shrink") as err:
        grow(model, target)
    assert field in str(err.value)
    # Validation comes first: nothing is built, the source is untouched.
    assert model.config == config


@pytest.mark.parametrize("target", [None, [1], "ffn"])
def test_a_target_that_is_not_sizes_raises(target):
    with pytest.raises(GrowthError, match="target must be a ModelConfig or a mapping"):
        grow(make_model(tiny_config()), target)


def test_only_a_growformer_transformer_grows():
    with pytest.raises(TypeError, match="model must be a growformer Transformer, got Linear"):
        grow(torch.nn.Linear(2, 2), {"ffn": 512})


def test_heads_not_divisible_by_kv_heads_raises():
    model = make_model(tiny_config(n_kv_heads=2))
    with pytest.raises(GrowthError, match="n_kv_heads"):
        grow(model, {"n_heads": 6, "n_kv_heads": 4})


def test_decreasing_group_size_raises():
    model = make_model(tiny_config(n_kv_heads=2))  # group size 2
    with pytest.raises(GrowthError, match="group size"):
        grow(model, {"n_heads": 6, "n_kv_heads": 6})


def test_qk_growth_whose_rope_base_overflows_raises():
    model = make_model(tiny_config())
    with pytest.raises(GrowthError, match="rope_theta"):
        grow(model, {"qk_head_dim": 8 * 1024})


def test_odd_qk_dim_with_rope_raises():
    model = make_model(tiny_config())
    with pytest.raises(GrowthError, match="qk_head_dim"):
        grow(model, {"qk_head_dim": 9})
    learned = make_model(tiny_config(position="learned"))
    assert grow(learned, {"qk_head_dim": 9})[0].config.qk_head_dim == 9


@pytest.mark.parametrize("field", ["vocab_size", "heads", "norm"])
def test_unknown_target_field_raises(field):
    model = make_model(tiny_config())
    with pytest.raises(GrowthError, match=field):
        grow(model, {field: 64})


@pytest.mark.parametrize(
    ("field", "value"),
    [("norm", "layer"), ("mlp", "gelu"), ("causal", False), ("tie_embeddings", True)],
)
def test_config_target_with_a_different_kind_raises(field, value):
    config = tiny_config()
    model = make_model(config)
    with pytest.raises(GrowthError, match=field):
        grow(model, config.replace(ffn=64, **{field: value}))


def test_config_target_may_differ_in_derived_fields():
    config = tiny_config()
    target = config.replace(ffn=64, qk_head_dim=12, rope_theta=123.0, norm_eps=1e-3)
    grown, _ = grow(make_model(config), target)
    assert (grown.config.ffn, grown.config.qk_head_dim) == (64, 12)
    assert grown.config.rope_theta == pytest.approx(1e4**1.5)  # derived, not taken


@pytest.mark.parametrize(
    "options",
    [
        {"layer_init": "random"},
        {"width_init": "noise"},
        {"where": "top"},
        {"where": 2},
        {"where": (2.7,)},
        {"where": (True,)},
        {"approximate": "no"},
        {"approximate": 0},
        {"seed": 1.5},
        {"seed": True},
    ],
)
def test_bad_growth_options_raise(options):
    """Checked when the options are made, not when some later growth first reads them."""
    with pytest.raises(GrowthError, match=next(iter(options))):
        GrowthOptions(**options)


@pytest.mark.parametrize("where", [(0, 0), (0, 9), (1,), (2, 2, 3)])
def test_bad_layer_positions_raise(where):
    model = make_model(tiny_config())
    with pytest.raises(GrowthError, match="where"):
        grow(model, {"n_layers": 4}, GrowthOptions(where=where))
