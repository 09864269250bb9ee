"""bench/progressive.py's Trainer row is a like-for-like comparison: a transformers Trainer with
the growth callback, given the bench's setup, learns what growformer's trainer learns on the
same schedule (same initial weights, batches, learning rate and optimizer)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from growformer.data import Dataset
from growformer.data.loader import TokenSplit
from growformer.train.commands import run_training
from growformer.train.run_config import run_spec
from train_data import MarkovTokens

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[1] / "bench" / "progressive.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_progressive", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _val_losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv") as f:
        return {int(r["step"]): float(r["val_loss"]) for r in csv.DictReader(f) if r["val_loss"]}


def test_trainer_row_learns_like_growformers_trainer(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    dataset = Dataset(
        "markov",
        TokenSplit("train", MarkovTokens(64, 20_000, seed=0).tokens.numpy()),
        TokenSplit("val", MarkovTokens(64, 5_000, seed=1).tokens.numpy()),
        None,
        64,
        "a sparse Markov chain",
    )
    # compound on the tiny preset: shorter sequences and a smaller model until step 10.
    spec = run_spec("tiny", train={"steps": 24, "eval_every": 8}, schedule="compound")
    assert [s.start_step for s in spec.schedule.plan(spec.target, spec.train)] == [0, 10]
    run_training(spec, tmp_path / "own", dataset=dataset, progress=False)
    _bench_module().run_hf_trainer(spec, tmp_path / "trainer", dataset)
    own, trainer = _val_losses(tmp_path / "own"), _val_losses(tmp_path / "trainer")
    assert sorted(own) == sorted(trainer) == [8, 16, 24]
    assert own[24] < own[8] - 0.5  # it learns
    assert trainer[8] == pytest.approx(own[8], abs=1e-4)  # before the growth
    for step in (16, 24):
        assert trainer[step] == pytest.approx(own[step], abs=2e-3)
