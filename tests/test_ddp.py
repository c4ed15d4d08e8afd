"""DistributedDataParallel on CPU: 2 processes, gloo on loopback, a few SGD steps of a VoxelClassifier (sparse
and dense batch norms synchronised by sparseconv.distributed). The replicas end bitwise identical and equal to
one process training on the same global batches (float64; tolerance 1e-9)."""
from __future__ import annotations

import datetime
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import sparseconv
from conftest import make_sparse
from sparseconv import distributed as sd
from sparseconv.models import VoxelClassifier

WORLD, STEPS, PER_RANK = 2, 3, 2


def _model():
    torch.manual_seed(0)
    return VoxelClassifier(2, 3, 8, channels=(4, 8), dense_channels=4, dropout=0.0).double()


def _global_batch(step):
    """Clouds and labels of one step, in global order (rank r takes items r, r + WORLD, ...)."""
    n = WORLD * PER_RANK
    clouds = [make_sparse(1, 8, 0.15 + 0.03 * i, 2, torch.float64, seed=100 * step + i) for i in range(n)]
    return clouds, [(step + i) % 3 for i in range(n)]


def _train(model, rank, world):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    seen = 0
    for step in range(STEPS):
        clouds, labels = _global_batch(step)
        clouds, labels = sd.shard(clouds, rank, world), sd.shard(labels, rank, world)
        loss = F.cross_entropy(model(sparseconv.sparse_collate(clouds)), torch.tensor(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(labels)
    return seen


def _worker(rank, port, folder):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        try:  # torch's own SyncBatchNorm refuses CPU tensors: the reason for sparseconv.distributed's
            torch.nn.SyncBatchNorm(2)(torch.randn(4, 2))
            torch_sync_bn = "ran"
        except ValueError as e:
            torch_sync_bn = str(e)
        model = sd.wrap(sd.convert_sync_batchnorm(_model()))
        seen = _train(model, rank, WORLD)
        totals = sd.reduce_sum({"seen": seen, "hist": torch.bincount(torch.tensor([rank]), minlength=WORLD)})
        state = sd.unwrap(model).state_dict()
        torch.save({"state": state, "totals": totals, "torch_sync_bn": torch_sync_bn},
                   os.path.join(folder, f"rank{rank}.pt"))
        sd.save_on_main(state, os.path.join(folder, "checkpoint.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_match_one(tmp_path):
    ctx = mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP workers did not finish in 120 s")

    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    checkpoint = torch.load(tmp_path / "checkpoint.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "rank0.pt", "rank1.pt"]
    assert "GPU" in ranks[0]["torch_sync_bn"]  # documented limitation of torch.nn.SyncBatchNorm
    for r in ranks:
        assert r["totals"]["seen"] == float(STEPS * WORLD * PER_RANK)
        assert r["totals"]["hist"].tolist() == [1] * WORLD

    single = _model()
    _train(single, 0, 1)
    expected = single.state_dict()
    assert ranks[0]["state"].keys() == expected.keys() == checkpoint.keys()
    for name, value in expected.items():
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), name  # replicas identical
        assert torch.equal(ranks[0]["state"][name], checkpoint[name]), name
        torch.testing.assert_close(ranks[0]["state"][name], value, rtol=1e-9, atol=1e-9, msg=name)


def test_shard():
    items = list(range(7))
    assert [sd.shard(items, r, 3) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    padded = [sd.shard(items, r, 3, pad=True) for r in range(3)]
    assert [len(p) for p in padded] == [3, 3, 3] and sorted(sum(padded, [])) == sorted(items + [0, 1])
    shuffled = [sd.shard(items, r, 3, seed=1) for r in range(3)]
    assert sorted(sum(shuffled, [])) == items and shuffled == [sd.shard(items, r, 3, seed=1) for r in range(3)]
    assert sd.shard(items) == items  # no process group: everything
    assert sd.reduce_sum({"a": 2, "b": torch.ones(2)})["a"] == 2.0


def test_sync_batchnorm_without_process_group_is_batchnorm():
    model = _model()
    synced = sd.convert_sync_batchnorm(_model())
    kinds = {type(m).__name__ for m in synced.modules()}
    assert "SyncBatchNorm" in kinds and not kinds & {"BatchNorm1d", "BatchNorm3d"}
    x = make_sparse(2, 8, 0.2, 2, torch.float64)
    torch.testing.assert_close(synced(x), model(x), rtol=1e-12, atol=1e-12)
    assert synced.state_dict().keys() == model.state_dict().keys()
