"""SparseTensor: dense/from_dense, shape/batch inference, replace, to, sparse_collate, kernel-map cache."""

from __future__ import annotations

import pytest
import torch

import sparseconv
from conftest import (
    assert_close,
    dense_at,
    make_sparse,
    random_coords,
    random_feats,
    scatter_dense,
    set_params,
    sort_rows,
)
from sparseconv import SparseTensor
from sparseconv.nn import SparseConv3d, SubMConv3d

f64, f32 = torch.float64, torch.float32


@pytest.mark.parametrize("dtype", [f32, f64])
@pytest.mark.parametrize(
    "B,shape,density,C", [(1, (6, 7, 8), 0.3, 1), (3, (10, 5, 9), 0.05, 4), (2, 12, 0.01, 2)]
)
def test_dense_matches_scatter(B, shape, density, C, dtype):
    x = make_sparse(B, shape, density, C, dtype, seed=B * 10 + C)
    d = x.dense()
    shape = shape if isinstance(shape, tuple) else (shape,) * 3
    assert tuple(d.shape) == (B, C) + shape
    assert d.dtype == dtype
    assert torch.equal(d, scatter_dense(x.feats, x.coords, B, shape))


def test_dense_is_differentiable():
    x = make_sparse(2, 6, 0.2, 3, f64, seed=1)
    feats = x.feats.clone().requires_grad_(True)
    xs = SparseTensor(feats, x.coords, spatial_shape=x.spatial_shape, batch_size=2)
    g = torch.randn(2, 3, 6, 6, 6, dtype=f64)
    (xs.dense() * g).sum().backward()
    assert torch.equal(feats.grad, dense_at(g, x.coords))


@pytest.mark.parametrize("dtype", [f32, f64])
def test_from_dense(dtype):
    g = torch.Generator().manual_seed(3)
    t = torch.randn(2, 3, 5, 6, 7, generator=g, dtype=torch.float64).to(dtype)
    keep = torch.rand(2, 1, 5, 6, 7, generator=g) < 0.2
    t = t * keep
    t[0, 1, 0, 0, 0] = 1.5  # a site where only one channel is non-zero
    t[0, 0, 0, 0, 0] = 0.0
    t[0, 2, 0, 0, 0] = 0.0
    x = SparseTensor.from_dense(t)
    expected = torch.nonzero((t != 0).any(1)).to(torch.int32)
    assert x.coords.dtype == torch.int32
    assert torch.equal(sort_rows(x.coords), expected)
    assert tuple(x.spatial_shape) == (5, 6, 7)
    assert x.batch_size == 2
    assert x.feats.dtype == dtype
    assert torch.equal(x.feats, dense_at(t, x.coords))
    assert torch.equal(x.dense(), t)


def test_round_trip_from_dense_dense():
    x = make_sparse(3, (7, 8, 9), 0.15, 2, f64, seed=4)
    y = SparseTensor.from_dense(x.dense())
    assert torch.equal(sort_rows(y.coords), sort_rows(x.coords))
    assert torch.equal(y.dense(), x.dense())
    assert tuple(y.spatial_shape) == (7, 8, 9) and y.batch_size == 3


def test_from_dense_all_zero():
    x = SparseTensor.from_dense(torch.zeros(2, 3, 4, 5, 6))
    assert tuple(x.coords.shape) == (0, 4) and tuple(x.feats.shape) == (0, 3)
    assert tuple(x.spatial_shape) == (4, 5, 6) and x.batch_size == 2


def test_spatial_shape_and_batch_inference():
    coords = torch.tensor([[0, 1, 2, 3], [2, 4, 0, 1], [1, 0, 6, 0]], dtype=torch.int32)
    x = SparseTensor(torch.ones(3, 2), coords)
    assert tuple(x.spatial_shape) == (5, 7, 4)
    assert all(isinstance(v, int) for v in x.spatial_shape)
    assert x.batch_size == 3
    assert tuple(x.stride) == (1, 1, 1)
    assert tuple(x.dense().shape) == (3, 2, 5, 7, 4)


def test_explicit_attributes():
    coords = torch.tensor([[0, 1, 2, 3]], dtype=torch.int32)
    x = SparseTensor(torch.ones(1, 2), coords, spatial_shape=(8, 9, 10), batch_size=4, stride=2)
    assert tuple(x.spatial_shape) == (8, 9, 10)
    assert x.batch_size == 4
    assert tuple(x.stride) == (2, 2, 2)
    x = SparseTensor(torch.ones(1, 2), coords, spatial_shape=[8, 9, 10], stride=(1, 2, 4))
    assert tuple(x.spatial_shape) == (8, 9, 10)
    assert tuple(x.stride) == (1, 2, 4)


def test_replace():
    x = make_sparse(2, 8, 0.1, 3, f64, seed=5)
    new = random_feats(x.coords.shape[0], 7, f64, seed=6)
    y = x.replace(new)
    assert y.feats is new or torch.equal(y.feats, new)
    assert tuple(y.feats.shape) == (x.coords.shape[0], 7)
    assert torch.equal(y.coords, x.coords)
    assert tuple(y.spatial_shape) == tuple(x.spatial_shape)
    assert y.batch_size == x.batch_size and tuple(y.stride) == tuple(x.stride)
    assert x.feats.shape[1] == 3  # x untouched
    with pytest.raises(ValueError, match="feats"):
        x.replace(torch.zeros(x.coords.shape[0] + 1, 3, dtype=f64))


def test_replace_keeps_autograd():
    x = make_sparse(1, 6, 0.3, 2, f64, seed=7)
    f = x.feats.clone().requires_grad_(True)
    y = x.replace(f * 2)
    y.feats.sum().backward()
    assert torch.equal(f.grad, torch.full_like(f, 2.0))


def test_to_dtype():
    x = make_sparse(2, 6, 0.2, 3, f64, seed=8)
    y = x.to(torch.float32)
    assert y.feats.dtype == torch.float32
    assert y.coords.dtype == torch.int32
    assert torch.equal(y.coords, x.coords)
    assert torch.equal(y.feats, x.feats.float())
    assert tuple(y.spatial_shape) == tuple(x.spatial_shape) and y.batch_size == x.batch_size


def test_sparse_collate():
    parts = []
    for i, (shape, n) in enumerate([((6, 7, 8), 20), ((6, 7, 8), 1), ((6, 7, 8), 35)]):
        c = random_coords(1, shape, n=n, seed=i)
        parts.append(SparseTensor(random_feats(n, 3, f32, seed=i), c, spatial_shape=shape, batch_size=1))
    out = sparseconv.sparse_collate(parts)
    assert out.batch_size == 3
    assert tuple(out.spatial_shape) == (6, 7, 8)
    assert out.coords.shape[0] == 56 and out.feats.shape == (56, 3)
    for i, p in enumerate(parts):
        rows = out.coords[:, 0] == i
        exp = p.coords.clone()
        exp[:, 0] = i
        got_c, got_f = out.coords[rows], out.feats[rows]
        # Compare as sets of (coord, feature) rows.
        o1, o2 = _order(got_c), _order(exp)
        assert torch.equal(got_c[o1], exp[o2])
        assert torch.equal(got_f[o1], p.feats[o2])
    # Dense view: each batch entry is the part's dense view.
    d = out.dense()
    for i, p in enumerate(parts):
        assert torch.equal(d[i : i + 1], p.dense())


def test_sparse_collate_different_shapes():
    ca = torch.tensor([[0, 4, 1, 1]], dtype=torch.int32)
    cb = torch.tensor([[0, 1, 6, 1]], dtype=torch.int32)
    a = SparseTensor(torch.ones(1, 2), ca, spatial_shape=(5, 3, 3))
    b = SparseTensor(torch.ones(1, 2), cb, spatial_shape=(3, 7, 2))
    out = sparseconv.sparse_collate([a, b])
    assert out.batch_size == 2
    assert all(s >= m for s, m in zip(out.spatial_shape, (5, 7, 3)))
    assert torch.equal(sort_rows(out.coords), torch.tensor([[0, 4, 1, 1], [1, 1, 6, 1]], dtype=torch.int32))


def _order(coords):
    c = coords.long()
    return torch.argsort(((c[:, 0] * 1000 + c[:, 1]) * 1000 + c[:, 2]) * 1000 + c[:, 3])


def _cache_of(t):
    for name in ("kmaps", "cache", "_cache", "kmap_cache", "_kmaps", "indice_dict", "_indice_dict"):
        if hasattr(t, name):
            return getattr(t, name)
    return None


def test_kernel_map_cache_inherited():
    x = make_sparse(2, 10, 0.15, 4, f64, seed=9)
    a = set_params(SubMConv3d(4, 5, 3), f64, 1)
    b = set_params(SubMConv3d(5, 6, 3), f64, 2)
    with torch.no_grad():
        h = a(x)
        y = b(h)
        # Fresh tensors without a cache give the same result.
        h2 = a(SparseTensor(x.feats.clone(), x.coords.clone(), spatial_shape=x.spatial_shape, batch_size=2))
        y2 = b(SparseTensor(h2.feats.clone(), h2.coords.clone(), h2.spatial_shape, 2))
    assert torch.equal(y.coords, y2.coords)
    assert_close(y.feats, y2.feats, f64)
    cache_x, cache_h, cache_y = _cache_of(x), _cache_of(h), _cache_of(y)
    if cache_x is not None:
        # The output shares its input's cache object (same sites at the same stride).
        assert cache_h is cache_x and cache_y is cache_x
    # The strided conv's output lives at another stride; its cache must not hand it the input's maps.
    s = set_params(SparseConv3d(6, 6, 2, stride=2), f64, 3)
    c = set_params(SubMConv3d(6, 2, 3), f64, 4)
    with torch.no_grad():
        z = c(s(y))
        zs = s(y)
        z2 = c(SparseTensor(zs.feats.clone(), zs.coords.clone(), zs.spatial_shape, 2))
    assert torch.equal(z.coords, z2.coords)
    assert_close(z.feats, z2.feats, f64)


def test_stride_attribute_after_strided_conv():
    x = make_sparse(1, 12, 0.2, 1, f64, seed=10)
    y = SparseConv3d(1, 1, 2, stride=(2, 1, 3)).to(f64)(x)
    assert tuple(y.stride) == (2, 1, 3)
    z = SparseConv3d(1, 1, 2, stride=2).to(f64)(y)
    assert tuple(z.stride) == (4, 2, 6)
