"""`sparseconv train` and `classify` data-parallel: 2 CPU processes with gloo on loopback.

Training: the replicas end identical and equal (float tolerance) to one process on the same global batches;
rank 0 alone writes the checkpoint. Classify: the files are split across the ranks by size, every file is
classified exactly once, and the outputs equal one process's.
"""
from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

laspy = pytest.importorskip("laspy")

from sparseconv import distributed as sd  # noqa: E402
from sparseconv.cli import main  # noqa: E402
from sparseconv.lidar import train  # noqa: E402

WORLD = 2
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Per rank: 1 window per step, 4 windows per epoch -> 2 optimizer steps of a 2-window global batch.
TRAIN_ARGS = dict(epochs=1, lr=2e-3, val_fraction=0.3, seed=0, samples_per_epoch=4, channels=(8, 16),
                  hidden=8, tile_size=24.0, overlap=4.0, progress=False, return_model=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(ctx, seconds):
    deadline = time.monotonic() + seconds
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"DDP workers did not finish in {seconds} s")


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiles")
    assert main(["generate", str(folder), "--tiles", "3", "--size", "40", "--density", "3", "--seed", "7",
                 "--scene", "suburban", "--quiet"]) == 0
    return sorted(str(folder / f) for f in os.listdir(folder))


def _train_worker(rank, port, paths, folder):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        history, model = train(paths, os.path.join(folder, "ddp.pt"), batch_size=1, log=lambda *a: None,
                               **TRAIN_ARGS)
        torch.save({"state": model.state_dict(), "history": history}, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_train_two_processes_match_one(tiles, tmp_path):
    ctx = mp.start_processes(_train_worker, args=(_free_port(), tiles, str(tmp_path)), nprocs=WORLD, join=False,
                             start_method="spawn")
    _join(ctx, 240)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    ckpt = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".sparseconv-")]  # written whole, then renamed

    torch.set_num_threads(1)
    try:
        history, single = train(tiles, str(tmp_path / "single.pt"), batch_size=WORLD, log=lambda *a: None,
                                **TRAIN_ARGS)
    finally:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    expected = single.state_dict()
    assert ranks[0]["state"].keys() == expected.keys() == ckpt["model"].keys()
    for name, value in expected.items():
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), name  # replicas identical
        assert torch.equal(ranks[0]["state"][name], ckpt["model"][name]), name  # what rank 0 wrote
        # Same windows, same global loss; only the order of float sums differs. AdamW normalises each element's
        # step to about lr, so where a gradient is near zero that order can move an element by up to ~lr a step
        # (a CI run saw 8 of 4,320 weights off by 2.4e-4); a wrong reduction moves most of them.
        d = (ranks[0]["state"][name].double() - value.double()).abs()
        assert d.numel() == 0 or float(d.max()) <= 2 * TRAIN_ARGS["lr"] + 1e-6, (name, float(d.max()))
        assert int((d > 1e-4).sum()) <= max(2, d.numel() // 100), (name, int((d > 1e-4).sum()), d.numel())
    # Metrics are summed over ranks: the same point counts and confusion as the single process.
    for split in ("train", "val"):
        a, b = ranks[0]["history"][0][split], history[0][split]
        other = ranks[1]["history"][0][split]
        assert [a[k] for k in ("loss", "accuracy", "miou")] == [other[k] for k in ("loss", "accuracy", "miou")]
        np.testing.assert_array_equal(a["iou"], other["iou"])  # every rank reports the reduced metrics
        assert abs(a["accuracy"] - b["accuracy"]) < 0.01 and abs(a["loss"] - b["loss"]) < 0.02, (split, a, b)
        np.testing.assert_allclose(a["iou"], b["iou"], atol=0.02)


def test_shard_balanced():
    sizes = [100, 10, 60, 50, 5]
    shares = [sd.shard_balanced("abcde", sizes, r, 2) for r in range(2)]
    assert sorted(sum(shares, [])) == list("abcde")
    loads = [sum(s for f, s in zip("abcde", sizes) if f in share) for share in shares]
    assert loads == [115, 110]  # a+b+e vs c+d: heaviest first, each to the lighter rank
    assert sd.shard_balanced("abc", [1, 1, 1]) == list("abc")  # no process group: everything
    with pytest.raises(ValueError, match="weights"):
        sd.shard_balanced("abc", [1, 2])


def test_classify_under_torchrun_splits_files(tiles, tmp_path):
    """`torchrun --nproc_per_node 2 -m sparseconv.cli classify`: each file once, outputs as one process's."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), "-m", "sparseconv.cli", "classify", *tiles, "-o",
           str(ddp_out), "--quiet"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"{WORLD} processes: 3 files" in run.stdout
    assert run.stdout.count("[rank 0]") + run.stdout.count("[rank 1]") == 3
    assert main(["classify", *tiles, "-o", str(single_out), "--quiet"]) == 0
    for path in tiles:
        name = os.path.basename(path)
        a = np.asarray(laspy.read(ddp_out / name).classification)
        b = np.asarray(laspy.read(single_out / name).classification)
        assert np.array_equal(a, b), name
    assert sorted(os.listdir(ddp_out)) == sorted(os.path.basename(p) for p in tiles)
