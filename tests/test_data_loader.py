"""Batches by (seed, step), sequence-length changes, row parts, evaluation windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from growformer.data import DataError, TokenSplit

N = 10_000


@pytest.fixture
def split() -> TokenSplit:
    # Distinct ids, so a window's first token says where it starts.
    return TokenSplit("train", np.arange(N, dtype=np.uint32), seed=7)


def test_batch_is_a_function_of_seed_and_step(split):
    x, y = split.batch_at(3, 8, 32)
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.int64
    for step in (0, 5, 1, 3):  # call history does not matter
        split.batch_at(step, 8, 32)
    x2, y2 = TokenSplit("copy", split.tokens.copy(), seed=7).batch_at(3, 8, 32)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, split.batch_at(4, 8, 32)[0])
    assert not torch.equal(x, TokenSplit("other", split.tokens, seed=8).batch_at(3, 8, 32)[0])


def test_targets_are_inputs_shifted_by_one_contiguous_windows(split):
    x, y = split.batch_at(0, 16, 20)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y - x, torch.ones_like(x))  # consecutive tokens of the array
    assert x.is_contiguous() and y.is_contiguous()


def test_every_start_is_reachable_and_in_range():
    tokens = np.arange(6, dtype=np.uint16)
    split = TokenSplit("tiny", tokens)
    firsts = {int(split.batch_at(s, 4, 4)[0][i, 0]) for s in range(50) for i in range(4)}
    assert firsts == {0, 1}  # windows of 5 tokens in 6: starts 0 and 1


def test_sequence_length_may_change_between_steps(split):
    for step, seq_len in [(0, 16), (1, 16), (2, 64), (3, 64), (4, 128)]:
        x, y = split.batch_at(step, 4, seq_len)
        assert x.shape == (4, seq_len) and torch.equal(x[:, 1:], y[:, :-1])
    # Resuming at step 2 with the new length gives the same batch as the uninterrupted run.
    assert torch.equal(split.batch_at(2, 4, 64)[0], split.batch_at(2, 4, 64)[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step": -1}, "step"),
        ({"step": 1.5}, "step"),
        ({"batch_size": 0}, "batch_size"),
        ({"seq_len": 0}, "seq_len"),
        ({"seq_len": N}, r"too few for one window of seq_len \+ 1 = 10001"),
    ],
)
def test_bad_batch_arguments(split, kwargs, match):
    args = {"step": 0, "batch_size": 2, "seq_len": 8, **kwargs}
    with pytest.raises(DataError, match=match):
        split.batch_at(**args)


def test_split_validation():
    with pytest.raises(DataError, match="1-D"):
        TokenSplit("x", np.zeros((2, 3), dtype=np.uint16))
    with pytest.raises(DataError, match="seed"):
        TokenSplit("x", np.zeros(3, dtype=np.uint16), seed=-1)


def test_eval_windows_are_fixed_and_cover_the_split():
    split = TokenSplit("val", np.arange(1001, dtype=np.uint16), seed=1)
    batches = list(split.eval_batches(batch_size=3, seq_len=100))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert [len(b[0]) for b in batches] == [3, 3, 3, 1]
    # Every token but the first is a target exactly once.
    assert sorted(y.flatten().tolist()) == list(range(1, 1001))
    assert torch.equal(x[:, 0], torch.arange(0, 1000, 100))
    reseeded = TokenSplit("val", split.tokens, seed=99)
    assert all(
        torch.equal(a[0], b[0]) for a, b in zip(batches, reseeded.eval_batches(3, 100), strict=True)
    )


def test_eval_windows_capped_and_evenly_spread():
    split = TokenSplit("val", np.arange(10_001, dtype=np.uint16))
    starts = split.eval_starts(seq_len=10, max_windows=5)
    assert starts.tolist() == [0, 2500, 5000, 7490, 9990]
    assert len(split.eval_starts(seq_len=10, max_windows=5000)) == 1000


def test_epochs_and_content_hash(split):
    assert split.epochs(2 * N) == 2.0
    same = TokenSplit("same ids, other dtype", split.tokens.astype(np.uint16), seed=1)
    assert same.content_hash == split.content_hash
    assert TokenSplit("x", split.tokens[1:]).content_hash != split.content_hash
