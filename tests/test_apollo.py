"""Apollo: the LVPS depth sampler, weight-shared forward passes, interpolation growth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from growformer.config import ModelConfig
from growformer.expand import copy_layers, interpolate_order
from growformer.model import Transformer, model_from_state
from growformer.train.apollo import depth_probabilities, sample_depth, sharing_order, stage_depths
from growformer.train.metrics import read_events
from growformer.train.schedule import named_schedule
from growformer.train.trainer import Trainer
from test_train import TARGET, TRAIN, TRAIN_DATA, VAL_DATA


def chi_square_p_value(counts: dict[int, int], probabilities: dict[int, float]) -> float:
    """Pearson's test, bins with an expected count below 5 pooled into one."""
    total = sum(counts.values())
    observed, expected, pool_o, pool_e = [], [], 0.0, 0.0
    for k, p in probabilities.items():
        if p * total >= 5:
            observed.append(counts.get(k, 0))
            expected.append(p * total)
        else:
            pool_o += counts.get(k, 0)
            pool_e += p * total
    if pool_e > 0:
        observed.append(pool_o)
        expected.append(pool_e)
    statistic = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    dof = len(observed) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2), torch.tensor(statistic / 2)))


@pytest.mark.parametrize(("n_distinct", "n_max"), [(1, 12), (3, 12), (6, 12), (2, 4)])
def test_lvps_draws_follow_the_stated_distribution(n_distinct, n_max):
    probabilities = depth_probabilities(n_distinct, n_max)
    assert sum(probabilities.values()) == pytest.approx(1.0)
    rng = np.random.Generator(np.random.PCG64(0))
    draws = [sample_depth(n_distinct, n_max, rng) for _ in range(20_000)]
    counts = {k: draws.count(k) for k in set(draws)}
    assert set(counts) <= set(probabilities)
    assert chi_square_p_value(counts, probabilities) > 1e-3


def test_lvps_prefers_the_shallowest_depth_as_published():
    """For a 12-layer target the published sampler runs L = N about 64-74% of the time."""
    for n in (1, 3, 6):
        assert 0.63 <= depth_probabilities(n, 12)[n] <= 0.75


def test_chi_square_check_rejects_a_wrong_distribution():
    uniform = {k: 1 / 12 for k in range(1, 13)}
    rng = np.random.Generator(np.random.PCG64(1))
    draws = [sample_depth(1, 12, rng) for _ in range(5_000)]
    assert chi_square_p_value({k: draws.count(k) for k in set(draws)}, uniform) < 1e-6


def test_sharing_and_interpolation_maps():
    assert sharing_order(3, 7) == [0, 0, 0, 1, 1, 2, 2]
    assert sharing_order(3, 3) == [0, 1, 2]
    assert interpolate_order(3, 6) == [0, 0, 1, 1, 2, 2]
    assert interpolate_order(1, 3) == [0, 0, 0]
    assert interpolate_order(6, 12) == [t // 2 for t in range(12)]
    assert stage_depths(12) == [1, 3, 6, 12]
    with pytest.raises(ValueError, match="below"):
        sharing_order(3, 2)


@pytest.mark.parametrize("depth", [3, 5, 7, 12])
def test_shared_forward_equals_an_unrolled_model_with_copied_weights(depth):
    config = ModelConfig(vocab_size=50, n_layers=3, hidden=32, n_heads=4, ffn=64)
    torch.manual_seed(0)
    model = Transformer(config).double()
    order = sharing_order(3, depth)
    unrolled = copy_layers(config, model.state_dict(), order)
    explicit = model_from_state(unrolled.config, {k: v.clone() for k, v in unrolled.state.items()})
    tokens = torch.randint(0, 50, (2, 16))
    assert torch.equal(model(tokens, order), explicit(tokens))


def test_apollo_run_interpolates_at_each_stage_and_logs_the_jump(tmp_path):
    train = TRAIN.replace(steps=20)
    schedule = named_schedule("apollo", TARGET, train)
    assert [e.sizes["n_layers"] for e in schedule.events] == [2, 4]
    trainer = Trainer(TARGET, train, schedule, TRAIN_DATA, VAL_DATA, tmp_path / "a", progress=False)
    trainer.start()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    orders = [trainer.layer_order(step) for step in range(200)]
    assert orders == [trainer.layer_order(step) for step in range(200)]  # a function of the step
    depths = {len(order) for order in orders}
    assert min(depths) == 1 and max(depths) > 1 and max(depths) <= TARGET.n_layers
    stage = trainer._stage_at(schedule.events[0].step)
    trainer._grow(stage, stage.start_step)
    for t, old in enumerate(interpolate_order(1, 2)):
        assert torch.equal(
            trainer.model.layers[t].mlp.up.weight, before[f"layers.{old}.mlp.up.weight"]
        )
    result = trainer.run()
    events = read_events(result.run_dir)
    assert [e["config_after"]["n_layers"] for e in events] == [2, 4]
    assert all("loss_before" in e and "loss_after" in e for e in events)
    assert trainer.layer_order(train.steps) is None
