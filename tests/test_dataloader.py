"""Pickling / torch.save of SparseTensor and models; DataLoader with sparseconv.collate, worker processes and
pin_memory."""
from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import sparseconv
from conftest import make_sparse
from sparseconv import nn as snn
from sparseconv.models import SparseUNet, VoxelClassifier


def _same(a, b):
    assert torch.equal(a.feats, b.feats) and torch.equal(a.coords, b.coords)
    assert (a.spatial_shape, a.batch_size, a.stride) == (b.spatial_shape, b.batch_size, b.stride)


def test_pickle_and_torch_save_sparse_tensor():
    x = make_sparse(2, 8, 0.3, 3, torch.float32)
    y = snn.SparseConv3d(3, 4, 2, stride=2)(x)  # strided: stride (2, 2, 2), a filled cache
    for t in (x, y):
        back = pickle.loads(pickle.dumps(t))
        _same(back, t)
        assert back.kmaps == {} and back.sites == 0  # the cache stays behind
        buf = io.BytesIO()
        torch.save({"cloud": t, "label": 3}, buf)
        buf.seek(0)
        loaded = torch.load(buf)  # weights_only=True, torch's default: SparseTensor is an allowed global
        _same(loaded["cloud"], t)
    assert snn.SubMConv3d(4, 2, 3)(back).feats.shape == (len(y), 2)  # a loaded tensor works (maps rebuilt)


@pytest.mark.parametrize("make", [lambda: VoxelClassifier(4, 3, 16, channels=(8, 16)),
                                  lambda: SparseUNet(4, 3, channels=(8, 16))], ids=["classifier", "unet"])
def test_save_models(make):
    torch.manual_seed(0)
    model = make().eval()
    x = make_sparse(2, 16, 0.1, 4, torch.float32)
    expected = model(x)
    expected = expected if isinstance(expected, torch.Tensor) else expected.feats
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = make().eval()
    fresh.load_state_dict(torch.load(buf))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    for other in (fresh, torch.load(buf, weights_only=False), pickle.loads(pickle.dumps(model)),
                  copy.deepcopy(model)):
        out = other(x)
        torch.testing.assert_close(out if isinstance(out, torch.Tensor) else out.feats, expected, rtol=0, atol=0)


class Clouds(Dataset):
    """(SparseTensor of one cloud, label, {"id": i}) per item, made on demand (in the worker)."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return make_sparse(1, 8, 0.1 + 0.02 * i, 2, torch.float32, seed=i), i % 3, {"id": i}


def test_dataloader_workers_and_pin_memory():
    data = Clouds()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pin_memory without an accelerator: torch warns and skips pinning
        batches = list(DataLoader(data, batch_size=4, collate_fn=sparseconv.collate, num_workers=2,
                                  pin_memory=True))
    assert len(batches) == 3
    for b, (cloud, label, meta) in enumerate(batches):
        items = [data[i] for i in range(4 * b, min(4 * b + 4, len(data)))]
        _same(cloud, sparseconv.sparse_collate([c for c, _, _ in items]))
        assert torch.equal(label, torch.tensor([lab for _, lab, _ in items]))
        assert torch.equal(meta["id"], torch.tensor([m["id"] for _, _, m in items]))
        assert cloud.batch_size == len(items) and cloud.coords[:, 0].max() == len(items) - 1
        snn.SubMConv3d(2, 3, 3)(cloud)  # usable as is


def test_sparse_collate_is_a_collate_fn():
    data = Clouds()
    loader = DataLoader([data[i][0] for i in range(len(data))], batch_size=5, collate_fn=sparseconv.sparse_collate)
    assert [b.batch_size for b in loader] == [5, 5]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs an accelerator build")
def test_pin_memory():
    x = make_sparse(2, 8, 0.3, 3, torch.float32)
    pinned = x.pin_memory()
    assert pinned.feats.is_pinned() and pinned.coords.is_pinned()
    _same(pinned, x)
