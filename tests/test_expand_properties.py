"""Property: any sequence of valid expansions of any small pre-norm model is exact (float64)."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RTOL, assert_same_function, make_model, tiny_config, tokens_for
from growformer import GrowthOptions, ModelConfig, Transformer, grow
from growformer.expand import hidden_growth_inexact_reason

MAX_HIDDEN, MAX_HEADS, MAX_LAYERS = 64, 12, 5


@st.composite
def configs(draw) -> ModelConfig:
    n_heads = draw(st.sampled_from([1, 2, 3, 4]))
    n_kv_heads = draw(st.sampled_from([d for d in range(1, n_heads + 1) if n_heads % d == 0]))
    position = draw(st.sampled_from(["rope", "learned"]))
    qk = draw(st.integers(2, 8))
    if position == "rope":
        qk += qk % 2
    return tiny_config(
        hidden=draw(st.integers(8, 32)),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        qk_head_dim=qk,
        v_head_dim=draw(st.integers(1, 8)),
        ffn=draw(st.integers(4, 40)),
        n_layers=draw(st.integers(1, 3)),
        norm=draw(st.sampled_from(["rms", "layer"])),
        norm_eps=draw(st.sampled_from([1e-6, 1e-3, 1e-2])),
        position=position,
        mlp=draw(st.sampled_from(["swiglu", "gelu", "relu", "gelu_tanh"])),
        tie_embeddings=draw(st.booleans()),
        attn_bias=draw(st.booleans()),
        attn_out_bias=draw(st.booleans()),
        mlp_bias=draw(st.booleans()),
        final_norm=draw(st.booleans()),
        causal=draw(st.booleans()),
        max_seq_len=draw(st.integers(4, 16)),
    )


@st.composite
def growth_step(draw, c: ModelConfig) -> tuple[dict[str, int], GrowthOptions]:
    """A random valid increment of one or several size fields, and random options."""
    candidates = ["ffn", "heads", "qk_head_dim", "v_head_dim", "n_layers", "max_seq_len"]
    if c.hidden < MAX_HIDDEN and hidden_growth_inexact_reason(c) is None:
        candidates.append("hidden")
    chosen = draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3, unique=True))
    target: dict[str, int] = {}
    for field in chosen:
        if field == "heads":
            if c.n_heads >= MAX_HEADS:
                continue
            kv = draw(st.integers(c.n_kv_heads, c.n_kv_heads + 2))
            group = draw(st.integers(c.group_size, c.group_size + 2))
            if kv * group > MAX_HEADS or kv * group == c.n_heads:
                kv, group = c.n_kv_heads, c.group_size + 1
            target.update(n_heads=kv * group, n_kv_heads=kv)
        elif field == "qk_head_dim":
            step = draw(st.integers(1, 3))
            target[field] = c.qk_head_dim + (2 * step if c.position == "rope" else step)
        elif field == "n_layers":
            if c.n_layers >= MAX_LAYERS:
                continue
            target[field] = c.n_layers + draw(st.integers(1, MAX_LAYERS - c.n_layers))
        elif field == "hidden":
            target[field] = c.hidden + draw(st.integers(1, MAX_HIDDEN - c.hidden))
        else:
            target[field] = getattr(c, field) + draw(st.integers(1, 8))
    if not target:
        target["ffn"] = c.ffn + 1
    n_layers = target.get("n_layers", c.n_layers)
    added = n_layers - c.n_layers
    where = draw(st.sampled_from(["end", "middle", "interleave"]))
    if added and draw(st.booleans()):
        positions = st.lists(
            st.integers(0, n_layers - 1), min_size=added, max_size=added, unique=True
        )
        where = tuple(draw(positions))
    options = GrowthOptions(
        layer_init=draw(st.sampled_from(["identity", "copy"])),
        where=where,
        width_init=draw(st.sampled_from(["zero", "tile"])),
        seed=draw(st.integers(0, 2**16)),
    )
    return target, options


@settings(max_examples=35, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), config=configs())
def test_any_sequence_of_expansions_is_exact(data, config):
    model = make_model(config, torch.float64, seed=data.draw(st.integers(0, 100)))
    tokens = tokens_for(config)
    grown = model
    steps = data.draw(st.integers(1, 6))
    for _ in range(steps):
        target, options = data.draw(growth_step(grown.config))
        before = grown.config
        grown, _ = grow(grown, target, options)
        for field, value in target.items():
            assert getattr(grown.config, field) == value
        assert grown.config != before
    assert_same_function(model, grown, tokens, RTOL[torch.float64])


@given(config=configs())
def test_the_config_counts_the_models_parameters(config):
    with torch.device("meta"):
        assert config.num_parameters() == Transformer(config).num_parameters()
