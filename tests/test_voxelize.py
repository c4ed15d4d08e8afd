"""voxelize / devoxelize against a dict-based pure-Python reference."""

from __future__ import annotations

import math

import pytest
import torch

import sparseconv
from conftest import is_sorted_rows

f32, f64 = torch.float32, torch.float64


def dyadic_points(P, seed, voxel_size=0.5, extent=6, offset=(0.0, 0.0, 0.0)):
    """Points whose coordinates, differences and quotients by voxel_size are all exact in float32."""
    g = torch.Generator().manual_seed(seed)
    cell = torch.randint(0, extent, (P, 3), generator=g).double()
    frac = torch.randint(1, 16, (P, 3), generator=g).double() / 16.0  # strictly inside a voxel
    return ((cell + frac) * voxel_size + torch.tensor(offset, dtype=f64)).float()


def reference(points, feats, voxel_size, origin, reduce):
    """dict-based reference: voxel coord -> point rows; returns (sorted coords [V,3], feats [V,C], p2v)."""
    p = points.double().tolist()
    vs = voxel_size if isinstance(voxel_size, (tuple, list)) else (voxel_size,) * 3
    vox = [tuple(math.floor((a - o) / v) for a, o, v in zip(row, origin, vs)) for row in p]
    groups = {}
    for i, v in enumerate(vox):
        groups.setdefault(v, []).append(i)
    keys = sorted(groups)
    index = {k: r for r, k in enumerate(keys)}
    p2v = torch.tensor([index[v] for v in vox], dtype=torch.int64)
    out = None
    if feats is not None:
        rows = []
        for k in keys:
            f = feats[groups[k]].double()
            if reduce == "sum":
                rows.append(f.sum(0))
            elif reduce == "mean":
                rows.append(f.sum(0) / len(groups[k]))
            else:
                rows.append(f.max(0).values)
        out = torch.stack(rows).to(feats.dtype) if rows else feats.new_zeros(0, feats.shape[1])
    coords = torch.tensor(keys, dtype=torch.int32).reshape(-1, 3)
    return coords, out, p2v


def _check_structure(x, p2v, P):
    assert p2v.dtype == torch.int64 and tuple(p2v.shape) == (P,)
    V = x.coords.shape[0]
    assert x.coords.dtype == torch.int32 and x.coords.shape[1] == 4
    assert x.feats.shape[0] == V
    if P:
        assert int(p2v.min()) >= 0 and int(p2v.max()) < V
        # Every voxel holds at least one point.
        assert torch.equal(torch.unique(p2v), torch.arange(V))
    assert torch.equal(x.coords[:, 0], torch.zeros(V, dtype=torch.int32))
    assert is_sorted_rows(x.coords)
    assert torch.unique(x.coords, dim=0).shape[0] == V, "voxel coords must be unique"
    if V:
        assert all(s >= int(m) + 1 for s, m in zip(x.spatial_shape, x.coords[:, 1:].max(0).values))


@pytest.mark.parametrize("reduce", ["mean", "sum", "max"])
@pytest.mark.parametrize("dtype", [f32, f64])
@pytest.mark.parametrize("P,C", [(1, 1), (50, 3), (400, 5)])
def test_voxelize_exact_default_origin(P, C, dtype, reduce):
    pts = dyadic_points(P, seed=P + C, offset=(-3.0, 1.25, 10.5))
    g = torch.Generator().manual_seed(P)
    feats = torch.randn(P, C, generator=g, dtype=f64).to(dtype)
    x, p2v = sparseconv.voxelize(pts, feats, 0.5, reduce=reduce)
    _check_structure(x, p2v, P)
    origin = pts.double().min(0).values.tolist()
    coords, ref, ref_p2v = reference(pts, feats, 0.5, origin, reduce)
    assert torch.equal(x.coords[:, 1:], coords)
    assert torch.equal(p2v, ref_p2v)
    assert x.feats.dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == f64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.feats, ref, **tol)


@pytest.mark.parametrize("origin", [(0.0, 0.0, 0.0), (-2.0, -1.5, -0.25)])
def test_voxelize_exact_explicit_origin(origin):
    pts = dyadic_points(300, seed=3, voxel_size=0.25)
    feats = torch.arange(300 * 2, dtype=f32).reshape(300, 2)
    x, p2v = sparseconv.voxelize(pts, feats, 0.25, origin=origin, reduce="sum")
    _check_structure(x, p2v, 300)
    coords, ref, ref_p2v = reference(pts, feats, 0.25, origin, "sum")
    assert torch.equal(x.coords[:, 1:], coords)
    assert torch.equal(p2v, ref_p2v)
    torch.testing.assert_close(x.feats, ref)


def test_point_voxel_coords_random_floats():
    """Arbitrary float32 points: coord == floor((p - origin) / voxel_size), except points within rounding of a
    voxel boundary (where float32 arithmetic may land on either side)."""
    g = torch.Generator().manual_seed(11)
    pts = (torch.rand(2000, 3, generator=g) * torch.tensor([20.0, 10.0, 3.0]) - 5.0).float()
    vs = 0.3
    x, p2v = sparseconv.voxelize(pts, None, vs)
    _check_structure(x, p2v, 2000)
    q = (pts.double() - pts.double().min(0).values) / vs
    expected = torch.floor(q).to(torch.int32)
    got = x.coords[p2v, 1:]
    near = (q - q.round()).abs() < 1e-4
    ok = (got == expected) | near
    assert ok.all(), f"{int((~ok).any(1).sum())} points in the wrong voxel"
    # Points sharing a voxel coordinate share a voxel row.
    assert torch.equal(x.coords[p2v, 1:], got)


def test_voxelize_feats_none():
    pts = dyadic_points(100, seed=5)
    x, p2v = sparseconv.voxelize(pts, None, 0.5)
    _check_structure(x, p2v, 100)
    assert x.feats.shape == (x.coords.shape[0], 1)
    assert x.feats.is_floating_point()


@pytest.mark.parametrize("C", [1, 4])
def test_devoxelize(C):
    pts = dyadic_points(120, seed=C)
    x, p2v = sparseconv.voxelize(pts, None, 0.5)
    V = x.coords.shape[0]
    vals = torch.randn(V, C, dtype=f64, requires_grad=True)
    out = sparseconv.devoxelize(vals, p2v)
    assert tuple(out.shape) == (120, C)
    assert torch.equal(out, vals[p2v])
    up = torch.randn(120, C, dtype=f64)
    (out * up).sum().backward()
    torch.testing.assert_close(vals.grad, torch.zeros(V, C, dtype=f64).index_add(0, p2v, up))


def test_round_trip_mean_is_projection():
    """devoxelize(voxelize(mean)) gives each point its voxel's mean; voxelizing that again changes nothing."""
    pts = dyadic_points(200, seed=8)
    feats = torch.randn(200, 3, dtype=f64)
    x, p2v = sparseconv.voxelize(pts, feats, 0.5, reduce="mean")
    back = sparseconv.devoxelize(x.feats, p2v)
    assert tuple(back.shape) == (200, 3)
    x2, p2v2 = sparseconv.voxelize(pts, back, 0.5, reduce="mean")
    assert torch.equal(p2v2, p2v)
    torch.testing.assert_close(x2.feats, x.feats, rtol=1e-12, atol=1e-12)


def test_all_points_in_one_voxel():
    pts = torch.full((7, 3), 1.0) + torch.arange(7).float()[:, None] * 0.01
    feats = torch.arange(7, dtype=f32)[:, None]
    for reduce, val in (("mean", 3.0), ("sum", 21.0), ("max", 6.0)):
        x, p2v = sparseconv.voxelize(pts, feats, 1.0, reduce=reduce)
        assert x.coords.tolist() == [[0, 0, 0, 0]]
        assert torch.equal(p2v, torch.zeros(7, dtype=torch.int64))
        assert x.feats.tolist() == [[val]]


def test_max_with_negative_values():
    pts = torch.tensor([[0.1, 0.1, 0.1], [0.2, 0.2, 0.2], [1.5, 0.1, 0.1]])
    feats = torch.tensor([[-3.0, -1.0], [-2.0, -5.0], [-7.0, -8.0]])
    x, p2v = sparseconv.voxelize(pts, feats, 1.0, origin=(0.0, 0.0, 0.0), reduce="max")
    assert x.coords.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0]]
    assert x.feats.tolist() == [[-2.0, -1.0], [-7.0, -8.0]]


@pytest.mark.parametrize("feats", [None, 3])
def test_voxelize_empty(feats):
    pts = torch.zeros(0, 3)
    f = None if feats is None else torch.zeros(0, feats)
    x, p2v = sparseconv.voxelize(pts, f, 0.5)
    assert tuple(p2v.shape) == (0,) and p2v.dtype == torch.int64
    assert tuple(x.coords.shape) == (0, 4)
    assert x.feats.shape[0] == 0
    assert x.feats.shape[1] == (1 if feats is None else feats)
    out = sparseconv.devoxelize(torch.zeros(0, 2), p2v)
    assert tuple(out.shape) == (0, 2)


def test_voxelize_bad_reduce():
    with pytest.raises(ValueError, match="reduce"):
        sparseconv.voxelize(dyadic_points(10, seed=1), None, 0.5, reduce="median")
