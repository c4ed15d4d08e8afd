"""Generated scanned-shape dataset (sparseconv.data.shapes): determinism, formats, voxelization, class signal."""

from __future__ import annotations

import numpy as np
import pytest

from sparseconv.data.shapes import CLASS_NAMES, FEATURE_NAMES, make_split, sample_shape, voxelize_cloud

K = len(CLASS_NAMES)


@pytest.fixture(scope="module")
def split():
    return make_split(8, seed=3, n_points=512)


def _anisotropy(p):
    """Ratio of the largest to the smallest principal-axis standard deviation."""
    ev = np.linalg.eigvalsh(np.cov(p.astype(np.float64).T))
    return float(np.sqrt(ev[-1] / max(ev[0], 1e-12)))


def test_class_names():
    assert len(CLASS_NAMES) >= 6
    for name in ("box", "sphere", "cylinder", "cone", "torus", "plane"):
        assert name in CLASS_NAMES


def test_make_split_deterministic_by_seed():
    a, ya = make_split(2, seed=11, n_points=256)
    b, yb = make_split(2, seed=11, n_points=256)
    c, yc = make_split(2, seed=12, n_points=256)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(ya, yc)
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p, q)
    # Different seeds give different samples (sizes differ, or coordinates do).
    assert all(p.shape != q.shape or not np.array_equal(p, q) for p, q in zip(a, c))


def test_make_split_prefix_stable():
    """A split with more samples per class starts with the one with fewer."""
    a, ya = make_split(1, seed=5, n_points=256)
    b, yb = make_split(2, seed=5, n_points=256)
    np.testing.assert_array_equal(ya, yb[:K])
    for p, q in zip(a, b[:K]):
        np.testing.assert_array_equal(p, q)


def test_sample_shape_deterministic_by_generator():
    p = sample_shape(2, np.random.default_rng(7), 300)
    q = sample_shape(2, np.random.default_rng(7), 300)
    np.testing.assert_array_equal(p, q)


def test_split_shapes_dtypes_and_balance(split):
    clouds, labels = split
    assert labels.dtype == np.int64 and labels.shape == (8 * K,)
    assert len(clouds) == labels.shape[0]
    np.testing.assert_array_equal(np.bincount(labels, minlength=K), np.full(K, 8))
    assert set(labels.tolist()) == set(range(K))
    sizes = []
    for p in clouds:
        assert p.dtype == np.float32 and p.ndim == 2 and p.shape[1] == 3 and p.shape[0] > 0
        assert np.isfinite(p).all()
        # Centred, bounding radius 1.
        np.testing.assert_allclose(0.5 * (p.min(0) + p.max(0)), 0.0, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(p, axis=1).max(), 1.0, atol=1e-5)
        sizes.append(p.shape[0])
    # Random density: point counts vary, around n_points (0.5x..1.5x, occlusion aside).
    assert min(sizes) >= 0.125 * 0.5 * 512 and max(sizes) <= 1.5 * 512 + 1
    assert len(set(sizes)) > len(sizes) // 2


@pytest.mark.parametrize("cls", range(K))
def test_every_class_produced(cls):
    p = sample_shape(cls, np.random.default_rng(cls), 400)
    assert p.dtype == np.float32 and p.shape[1] == 3 and p.shape[0] >= 25


def test_bad_class():
    with pytest.raises(ValueError):
        sample_shape(K, np.random.default_rng(0))


def test_classes_differ(split):
    clouds, labels = split
    ratio = {c: np.mean([_anisotropy(p) for p, y in zip(clouds, labels) if y == c]) for c in range(K)}
    sphere, plane, torus = (CLASS_NAMES.index(n) for n in ("sphere", "plane", "torus"))
    # A plane is flat (tiny smallest axis, only noise); a sphere, even half of one, is not.
    assert ratio[plane] > 5 * ratio[sphere]
    assert ratio[sphere] < 3.0 < 10.0 < ratio[plane]
    # A torus is flatter than a sphere but far thicker than a plane.
    assert ratio[sphere] < ratio[torus] < ratio[plane]


@pytest.mark.parametrize("resolution", [1, 8, 32])
def test_voxelize_cloud(split, resolution):
    clouds, _ = split
    for p in clouds[: 2 * K]:
        coords, feats = voxelize_cloud(p, resolution)
        assert coords.dtype == np.int32 and coords.ndim == 2 and coords.shape[1] == 3
        assert feats.dtype == np.float32 and feats.shape == (coords.shape[0], len(FEATURE_NAMES))
        assert coords.shape[0] > 0
        assert coords.min() >= 0 and coords.max() < resolution
        assert np.unique(coords, axis=0).shape[0] == coords.shape[0]
        np.testing.assert_array_equal(feats[:, 0], 1.0)
        assert np.abs(feats[:, 1:]).max() <= 0.5 + 1e-6
        # Every point lands in one of the returned voxels.
        idx = np.clip(np.floor((p.astype(np.float64) + 1.0) * 0.5 * resolution), 0, resolution - 1)
        assert set(map(tuple, idx.astype(np.int32).tolist())) == set(map(tuple, coords.tolist()))


def test_voxelize_cloud_mean_offsets():
    """Two points in one voxel and one in another: the feature is the mean offset from the voxel centre."""
    res = 4  # voxel size 0.5; voxel 0 spans [-1, -0.5), its centre is -0.75
    p = np.array([[-0.9, -0.75, -0.75], [-0.7, -0.75, -0.6], [0.75, 0.75, 0.75]], np.float32)
    coords, feats = voxelize_cloud(p, res)
    np.testing.assert_array_equal(coords, [[0, 0, 0], [3, 3, 3]])
    # Offsets in voxel units: x (-0.15 + 0.05) / 2 / 0.5 = -0.1, z (0 + 0.15) / 2 / 0.5 = 0.15.
    np.testing.assert_allclose(feats[0], [1.0, -0.1, 0.0, 0.15], atol=1e-5)
    np.testing.assert_allclose(feats[1], [1.0, 0.0, 0.0, 0.0], atol=1e-5)


def test_voxelize_cloud_empty_and_bad_shape():
    coords, feats = voxelize_cloud(np.zeros((0, 3), np.float32), 16)
    assert coords.shape == (0, 3) and coords.dtype == np.int32
    assert feats.shape == (0, len(FEATURE_NAMES)) and feats.dtype == np.float32
    with pytest.raises(ValueError):
        voxelize_cloud(np.zeros((5, 2), np.float32), 16)
