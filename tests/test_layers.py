"""Feature-wise layers, SparseSequential and the sparse-to-dense bridge."""
from __future__ import annotations

import torch
from torch import nn

import sparseconv
from conftest import assert_close, make_sparse, sort_rows
from sparseconv.nn import (
    SparseBatchNorm,
    SparseConv3d,
    SparseDropout,
    SparseReLU,
    SparseSequential,
    SubMConv3d,
    ToDense,
    ToSparse,
)

f64 = torch.float64


def test_feature_wise_layers_keep_sites_and_cache():
    x = make_sparse(2, 8, 0.2, 4, f64, seed=1)
    for layer in (SparseReLU(), SparseBatchNorm(4).double(), SparseDropout(0.5)):
        y = layer(x)
        assert y.coords is x.coords and y.kmaps is x.kmaps and y.sites is x.sites
    bn = SparseBatchNorm(4).double()
    ref = nn.BatchNorm1d(4).double()
    assert_close(bn(x).feats, ref(x.feats))
    assert_close(bn.bn.running_mean, ref.running_mean)


def test_sync_batchnorm_conversion_keeps_wrapper():
    net = SparseSequential(SubMConv3d(2, 4, 3), SparseBatchNorm(4))
    conv = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert isinstance(conv[1], SparseBatchNorm) and isinstance(conv[1].bn, nn.SyncBatchNorm)


def test_sequential_accepts_plain_feature_modules_and_dense_head():
    x = make_sparse(2, 8, 0.3, 2, torch.float32, seed=2)
    net = SparseSequential(
        SubMConv3d(2, 4, 3), nn.BatchNorm1d(4), nn.ReLU(),
        SparseConv3d(4, 4, 2, stride=2), ToDense((4, 4, 4)), nn.Flatten(), nn.Linear(4 * 64, 3),
    )
    out = net(x)
    assert tuple(out.shape) == (2, 3)
    out.sum().backward()
    assert net[0].weight.grad is not None


def test_to_dense_crops_and_pads():
    x = make_sparse(2, (6, 5, 4), 0.4, 3, f64, seed=3)
    full = x.dense()
    crop = ToDense((4, 5, 3))(x)
    assert torch.equal(crop, full[:, :, :4, :5, :3])
    pad = ToDense((7, 6, 5))(x)
    assert tuple(pad.shape) == (2, 3, 7, 6, 5)
    assert torch.equal(pad[:, :, :6, :5, :4], full) and pad[:, :, 6:].abs().sum() == 0


def test_to_sparse_round_trip():
    x = make_sparse(2, 6, 0.3, 3, f64, seed=4)
    y = ToSparse()(x.dense())
    assert torch.equal(sort_rows(y.coords), sort_rows(x.coords))
    assert torch.equal(y.dense(), x.dense())
    assert isinstance(y, sparseconv.SparseTensor)
