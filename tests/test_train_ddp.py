"""Two CPU processes (gloo) through a growth event: ranks stay bit-identical and the losses
match a single-process run."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))

from growformer.train.schedule import named_schedule
from growformer.train.trainer import Trainer
from test_train import TARGET, TRAIN, TRAIN_DATA, VAL_DATA, losses

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, run_dir: str, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    schedule = named_schedule("exact", TARGET, TRAIN)
    trainer = Trainer(TARGET, TRAIN, schedule, TRAIN_DATA, VAL_DATA, run_dir, progress=False)
    trainer.run()
    torch.save(trainer.model.state_dict(), Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_gloo_processes_grow_in_step(tmp_path):
    port = _free_port()
    mp.spawn(_worker, args=(2, port, str(tmp_path / "ddp"), str(tmp_path)), nprocs=2)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert rank0["layers.0.mlp.up.weight"].shape[0] == TARGET.ffn
    single = Trainer(
        TARGET,
        TRAIN,
        named_schedule("exact", TARGET, TRAIN),
        TRAIN_DATA,
        VAL_DATA,
        tmp_path / "single",
        progress=False,
    ).run()
    assert losses(tmp_path / "ddp") == pytest.approx(losses(single.run_dir), rel=1e-4)
