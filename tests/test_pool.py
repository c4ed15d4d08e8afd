"""Sparse max / average pooling against torch's dense pooling on the densified input, and gradcheck."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

import sparseconv
from conftest import assert_close, dense_at, make_sparse, occupancy, scatter_dense, sort_rows, triple
from sparseconv.nn import GlobalAvgPool, GlobalMaxPool, SparseAvgPool3d, SparseMaxPool3d

f64 = torch.float64

# (kernel, stride, padding, dilation, batch, channels, shape, density)
CASES = [
    (2, 2, 0, 1, 1, 3, 8, 0.2),
    (3, 2, 1, 1, 2, 4, (9, 10, 7), 0.1),
    (3, 1, 1, 1, 1, 2, 6, 0.3),
    (2, 1, 0, 2, 2, 5, 8, 0.15),
    ((3, 2, 1), (2, 1, 1), (1, 0, 0), 1, 3, 2, (8, 7, 6), 0.25),
    (3, 3, 0, 1, 1, 1, 12, 0.02),
]


def leaf(x):
    feats = x.feats.detach().clone().requires_grad_(True)
    return sparseconv.SparseTensor(feats, x.coords, x.spatial_shape, x.batch_size), feats


def expected_sites(x, k, s, p, d):
    occ = occupancy(x.coords, x.batch_size, x.spatial_shape)
    hit = F.conv3d(occ, torch.ones(1, 1, *k, dtype=f64), stride=s, padding=p, dilation=d)
    return torch.nonzero(hit[:, 0] > 0).to(torch.int32)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_max_pool_vs_dense(case):
    k, s, p, d, B, C, shape, density = case
    k, s, p, d, shape = triple(k), triple(s), triple(p), triple(d), triple(shape)
    x, feats = leaf(make_sparse(B, shape, density, C, f64, seed=sum(k) + B))
    out = SparseMaxPool3d(k, s, p, d)(x)
    assert torch.equal(sort_rows(out.coords), expected_sites(x, k, s, p, d))
    # Reference: inactive sites are -inf, so the dense max is the max over the active inputs.
    mask = occupancy(x.coords, B, shape) > 0
    dense = torch.where(mask, scatter_dense(feats, x.coords, B, shape), torch.tensor(-torch.inf, dtype=f64))
    ref = F.max_pool3d(dense, k, s, p, d)
    ref_at = dense_at(ref, out.coords)
    assert_close(out.feats, ref_at)
    g = torch.randn_like(out.feats)
    (gs,) = torch.autograd.grad(out.feats, feats, g)
    (gr,) = torch.autograd.grad(ref_at, feats, g)
    assert_close(gs, gr)


def test_max_pool_equals_dense_where_windows_are_full():
    """On a fully occupied grid, sparse max pooling is exactly F.max_pool3d of the densified input."""
    x = make_sparse(2, 6, 1.0, 3, f64, seed=3)
    out = SparseMaxPool3d(2, 2)(x)
    ref = F.max_pool3d(x.dense(), 2, 2)
    assert_close(out.dense(), ref)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_avg_pool_vs_dense(case):
    k, s, p, d, B, C, shape, density = case
    k, s, p, d, shape = triple(k), triple(s), triple(p), triple(d), triple(shape)
    x, feats = leaf(make_sparse(B, shape, density, C, f64, seed=sum(k) + 2 * B))
    out = SparseAvgPool3d(k, s, p, d)(x)
    assert torch.equal(sort_rows(out.coords), expected_sites(x, k, s, p, d))
    ones = torch.ones(C, 1, *k, dtype=f64)
    total = F.conv3d(scatter_dense(feats, x.coords, B, shape), ones, stride=s, padding=p, dilation=d, groups=C)
    count = F.conv3d(occupancy(x.coords, B, shape), ones[:1], stride=s, padding=p, dilation=d)
    ref_at = dense_at(total / count.clamp_min(1), out.coords)
    assert_close(out.feats, ref_at)
    g = torch.randn_like(out.feats)
    (gs,) = torch.autograd.grad(out.feats, feats, g)
    (gr,) = torch.autograd.grad(ref_at, feats, g)
    assert_close(gs, gr)


@pytest.mark.parametrize("pool", [SparseMaxPool3d, SparseAvgPool3d])
@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_pool_gradcheck(pool, k, s, p):
    x = make_sparse(1, 5, 0.3, 2, f64, seed=k * 10 + s)
    layer = pool(k, s, p)

    def f(feats):
        return layer(sparseconv.SparseTensor(feats, x.coords, x.spatial_shape, 1)).feats

    assert gradcheck(f, (x.feats.clone().requires_grad_(True),), eps=1e-6, atol=1e-7)


def test_pool_nan_propagates_and_empty_input():
    x = make_sparse(1, 6, 0.4, 2, f64, seed=9)
    feats = x.feats.clone()
    feats[0, 1] = float("nan")
    out = SparseMaxPool3d(2)(x.replace(feats))
    assert torch.isnan(out.feats[:, 1]).sum() == 1 and not torch.isnan(out.feats[:, 0]).any()
    empty = sparseconv.SparseTensor(torch.zeros(0, 2), torch.zeros(0, 4, dtype=torch.int32), (6, 6, 6), 2)
    for pool in (SparseMaxPool3d(2), SparseAvgPool3d(2)):
        y = pool(empty)
        assert tuple(y.feats.shape) == (0, 2) and tuple(y.spatial_shape) == (3, 3, 3)
    assert torch.equal(GlobalMaxPool()(empty), torch.zeros(2, 2))


def test_global_pools():
    x, feats = leaf(make_sparse(3, 6, 0.2, 4, f64, seed=11))
    dense = scatter_dense(feats, x.coords, 3, 6)
    mask = occupancy(x.coords, 3, 6) > 0
    ref_max = torch.where(mask, dense, torch.tensor(-torch.inf, dtype=f64)).amax((2, 3, 4))
    ref_avg = dense.sum((2, 3, 4)) / mask.sum((2, 3, 4))
    assert_close(GlobalMaxPool()(x), ref_max)
    assert_close(GlobalAvgPool()(x), ref_avg)
    assert gradcheck(lambda f: GlobalMaxPool()(x.replace(f)), (feats,), eps=1e-6, atol=1e-7)
    assert gradcheck(lambda f: GlobalAvgPool()(x.replace(f)), (feats,), eps=1e-6, atol=1e-7)
