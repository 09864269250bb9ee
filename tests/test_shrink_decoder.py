"""A decoder trained with the trainer on (a few modules of) the default corpus, then
subcloned: before any training the child's loss is far below a random child's and below naive
truncation's (first layers, first hidden dims, heads and neurons).

Measured (parent 4 layers, hidden 64, 4 heads / 2 kv heads, FFN 256, 250 steps of 16 x 32
tokens, val loss 3.62; child 2 layers, hidden 32, 2 heads / 1 kv head, FFN 128), validation
loss before training: subcloned 4.24 (4.57 without rescaling), truncated 4.41 (4.76 without
rescaling), random init 6.24 (ln 512 = 6.24). About 25 s on 2 busy CPU cores.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from growformer import ModelConfig, Transformer, model_from_state
from growformer.data import load_dataset
from growformer.data.cache import CACHE_ENV
from growformer.shrink import (
    apply_plan,
    measure_importance,
    resolve_shrink_target,
    subclone,
    truncation_plan,
)
from growformer.train.config import TrainConfig
from growformer.train.schedule import named_schedule
from growformer.train.trainer import Trainer

MODULES = ("json", "textwrap", "email", "argparse", "logging", "collections")
PARENT = ModelConfig(
    vocab_size=512, max_seq_len=32, n_layers=4, hidden=64, n_heads=4, n_kv_heads=2, ffn=256
)
TRAIN = TrainConfig(
    steps=250, batch_size=16, seq_len=32, warmup_steps=20, eval_every=250, eval_batches=4
)
CHILD = {"n_layers": 2, "hidden": 32, "n_heads": 2, "ffn": 128}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The dataset and the parent trained on it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        data = load_dataset(
            vocab_size=PARENT.vocab_size, seq_len=TRAIN.seq_len, stdlib_modules=MODULES
        )
    torch.manual_seed(0)
    trainer = Trainer(
        PARENT,
        TRAIN,
        named_schedule("scratch", PARENT, TRAIN),
        data.train,
        data.val,
        tmp_path_factory.mktemp("run"),
        progress=False,
    )
    trainer.run()
    return data, trainer.model.eval()


def val_loss(model: Transformer, data) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for inputs, targets in data.val.eval_batches(16, TRAIN.seq_len, 64):
            logits = model(inputs)
            total += float(
                F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
            )
            count += targets.numel()
    return total / count


@pytest.mark.slow
def test_subcloned_decoder_starts_far_better_than_random_and_truncation(trained):
    data, parent = trained
    state = parent.state_dict()
    batches = [inputs for inputs, _ in data.train.eval_batches(16, TRAIN.seq_len, 64)]
    importance = measure_importance(parent.config, state, batches)
    target = resolve_shrink_target(parent.config, CHILD)
    losses = {"parent": val_loss(parent, data)}
    for rescale in (True, False):
        child = subclone(parent.config, state, CHILD, importance, rescale=rescale)
        losses[f"subcloned rescale={rescale}"] = val_loss(
            model_from_state(child.config, child.state), data
        )
        naive = apply_plan(state, truncation_plan(parent.config, target), rescale=rescale)
        losses[f"truncated rescale={rescale}"] = val_loss(
            model_from_state(naive.config, naive.state), data
        )
    torch.manual_seed(0)
    losses["random"] = val_loss(Transformer(target), data)
    figures = ", ".join(f"{k} {v:.3f}" for k, v in losses.items())
    subcloned = losses["subcloned rescale=True"]
    assert losses["random"] > math.log(PARENT.vocab_size) - 0.5, figures
    assert subcloned < losses["random"] - 1.5, figures
    assert subcloned < losses["truncated rescale=True"] - 0.1, figures
    assert subcloned < losses["truncated rescale=False"] - 0.1, figures
