"""Generated scans of simple objects for a ModelNet-like classification task.

:func:`sample_shape` draws points on the surface of one object of a class in :data:`CLASS_NAMES`, as a 3D
scanner sees it: random proportions (within per-class ranges chosen so that the classes stay distinguishable),
random pose, random point density, Gaussian range noise and, for a random half of the samples, self-occlusion
(only the side facing one random view direction is kept). Clouds are centred at the origin with a bounding
sphere of radius 1. :func:`make_split` builds a balanced labelled split; :func:`voxelize_cloud` turns a cloud
into sparse voxel coordinates and features for a ``resolution``^3 grid.

Everything is vectorized with NumPy; Python loops only over samples and classes.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["CLASS_NAMES", "sample_shape", "make_split", "voxelize_cloud", "FEATURE_NAMES"]

CLASS_NAMES = ("box", "sphere", "cylinder", "cone", "torus", "plane")

#: Channels of the features returned by :func:`voxelize_cloud`.
FEATURE_NAMES = ("occupancy", "offset_x", "offset_y", "offset_z")

# Sampling ranges. Cylinders are at least twice as tall as their radius, cones at most 1.6 times, so the two
# tall round classes do not overlap in proportions; boxes are at most 2:1 so they never look like a plane.
_DENSITY = (0.5, 1.5)  # factor on n_points
_NOISE = (0.01, 0.02)  # Gaussian sigma, as a fraction of the bounding radius
_OCCLUDED_FRACTION = 0.5
_MIN_VISIBLE = 0.125  # an occluded scan keeping fewer than this share of n is kept whole instead


def _unit_vectors(rng, n):
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _random_rotation(rng):
    """Uniformly distributed rotation matrix (from a random unit quaternion)."""
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def _normalize(v):
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------------------------------------
# Canonical surfaces: each returns (points [n, 3], outward normals [n, 3]), sampled uniformly over the area
# ------------------------------------------------------------------------------------------------------------


def _box(rng, n):
    e = rng.uniform(0.5, 1.0, 3)  # half extents, at most 2:1
    # Faces perpendicular to axis a have area 4 * (product of the other two half extents).
    face_area = np.prod(e) / e
    axis = rng.choice(3, size=n, p=face_area / face_area.sum())
    sign = rng.choice(np.array([-1.0, 1.0]), size=n)
    p = rng.uniform(-1.0, 1.0, (n, 3)) * e
    rows = np.arange(n)
    p[rows, axis] = sign * e[axis]
    normal = np.zeros((n, 3))
    normal[rows, axis] = sign
    return p, normal


def _sphere(rng, n):
    radii = rng.uniform(0.9, 1.1, 3)  # slightly ellipsoidal: still round
    d = _unit_vectors(rng, n)
    p = d * radii
    return p, _normalize(p / radii**2)  # gradient of sum((p / radii)^2)


def _elliptic_disc(rng, n, rx, ry, z, nz):
    t = rng.uniform(0.0, 2 * math.pi, n)
    rho = np.sqrt(rng.uniform(0.0, 1.0, n))  # sqrt: uniform over the disc's area
    p = np.stack([rho * rx * np.cos(t), rho * ry * np.sin(t), np.full(n, z)], 1)
    normal = np.zeros((n, 3))
    normal[:, 2] = nz
    return p, normal


def _cylinder(rng, n):
    rx, ry = rng.uniform(0.9, 1.1, 2)
    h = rng.uniform(1.0, 2.0)  # half height: height / radius in [2, 4]
    side, cap = 2 * math.pi * 0.5 * (rx + ry) * 2 * h, math.pi * rx * ry
    part = rng.choice(3, size=n, p=np.array([side, cap, cap]) / (side + 2 * cap))
    t = rng.uniform(0.0, 2 * math.pi, n)
    p = np.stack([rx * np.cos(t), ry * np.sin(t), rng.uniform(-h, h, n)], 1)
    normal = _normalize(np.stack([np.cos(t) / rx, np.sin(t) / ry, np.zeros(n)], 1))
    for k, (z, nz) in ((1, (h, 1.0)), (2, (-h, -1.0))):
        m = part == k
        p[m], normal[m] = _elliptic_disc(rng, int(m.sum()), rx, ry, z, nz)
    return p, normal


def _cone(rng, n):
    rx, ry = rng.uniform(0.9, 1.1, 2)
    height = rng.uniform(0.8, 1.6)  # height / radius in [0.8, 1.6]
    r = 0.5 * (rx + ry)
    side, base = math.pi * r * math.hypot(r, height), math.pi * rx * ry
    on_base = rng.uniform(0.0, 1.0, n) < base / (side + base)
    t = rng.uniform(0.0, 2 * math.pi, n)
    s = np.sqrt(rng.uniform(0.0, 1.0, n))  # fraction of the way from apex to base; sqrt: area-uniform
    p = np.stack([s * rx * np.cos(t), s * ry * np.sin(t), height * (1.0 - s)], 1)
    # Gradient of sqrt((x/rx)^2 + (y/ry)^2) + z/height - 1.
    normal = _normalize(np.stack([np.cos(t) / rx, np.sin(t) / ry, np.full(n, 1.0 / height)], 1))
    p[on_base], normal[on_base] = _elliptic_disc(rng, int(on_base.sum()), rx, ry, 0.0, -1.0)
    return p, normal


def _torus(rng, n):
    big, small = 1.0, rng.uniform(0.2, 0.45)
    # Area element is proportional to (big + small * cos v): rejection-sample v, in batches (not per point).
    v = np.empty(0)
    while v.size < n:
        c = rng.uniform(0.0, 2 * math.pi, 2 * n)
        keep = rng.uniform(0.0, big + small, 2 * n) < big + small * np.cos(c)
        v = np.concatenate([v, c[keep]])
    v = v[:n]
    u = rng.uniform(0.0, 2 * math.pi, n)
    normal = np.stack([np.cos(v) * np.cos(u), np.cos(v) * np.sin(u), np.sin(v)], 1)
    p = np.stack([big * np.cos(u), big * np.sin(u), np.zeros(n)], 1) + small * normal
    return p, normal


def _plane(rng, n):
    b = rng.uniform(0.4, 1.0)  # half extents 1 x b, zero thickness (the noise gives it some)
    p = np.stack([rng.uniform(-1.0, 1.0, n), rng.uniform(-b, b, n), np.zeros(n)], 1)
    normal = np.zeros((n, 3))
    normal[:, 2] = 1.0
    return p, normal


_SURFACES = (_box, _sphere, _cylinder, _cone, _torus, _plane)
# A plane is seen from whichever side faces the scanner: occlusion removes nothing from it.
_TWO_SIDED = (False, False, False, False, False, True)
assert len(_SURFACES) == len(_TWO_SIDED) == len(CLASS_NAMES)


# ------------------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------------------


def sample_shape(cls: int, rng: np.random.Generator, n_points: int = 2048) -> np.ndarray:
    """Scanned surface points [P, 3] float32 of one random object of class ``cls`` (index into CLASS_NAMES).

    P is about ``n_points`` times a random density factor in [0.5, 1.5]. The cloud is centred (bounding-box
    centre at the origin) and scaled so that its farthest point is at distance 1.
    """
    cls = int(cls)
    if not 0 <= cls < len(CLASS_NAMES):
        raise ValueError(f"cls: expected 0 <= cls < {len(CLASS_NAMES)}, got {cls}")
    if n_points < 1:
        raise ValueError(f"n_points: expected >= 1, got {n_points}")
    n = max(1, int(round(n_points * rng.uniform(*_DENSITY))))
    occlude = rng.uniform() < _OCCLUDED_FRACTION and not _TWO_SIDED[cls]
    # An occluded scan sees about half the surface: draw twice as many so that P does not depend on it.
    p, normal = _SURFACES[cls](rng, 2 * n if occlude else n)
    rot = _random_rotation(rng)
    p, normal = p @ rot.T, normal @ rot.T
    if occlude:
        view = _unit_vectors(rng, 1)[0]  # direction the scanner's rays travel
        visible = normal @ view < 0.0
        if visible.sum() >= max(1, _MIN_VISIBLE * n):
            p = p[visible]
        else:
            p = p[:n]
    p = p - 0.5 * (p.min(0) + p.max(0))
    p /= max(np.linalg.norm(p, axis=1).max(), 1e-12)
    p = p + rng.normal(0.0, rng.uniform(*_NOISE), p.shape)
    # Re-centre and re-scale after the noise so the bounding radius is exactly 1 (voxelize_cloud's grid).
    p = p - 0.5 * (p.min(0) + p.max(0))
    p /= max(np.linalg.norm(p, axis=1).max(), 1e-12)
    return np.ascontiguousarray(p, dtype=np.float32)


def make_split(n_per_class: int, seed: int, n_points: int = 2048):
    """Balanced labelled split: (list of clouds [P_i, 3] float32, labels int64 [n_per_class * K]).

    K = len(CLASS_NAMES). Classes are interleaved (0, 1, ..., K-1, 0, 1, ...), so any prefix is close to
    balanced. Sample i of class c has its own generator seeded by (seed, c, i): the result depends only on the
    arguments, a split with more samples per class extends one with fewer, and different seeds (train/val/
    test) give different samples. ``seed`` must be a non-negative integer.
    """
    if n_per_class < 0:
        raise ValueError(f"n_per_class: expected >= 0, got {n_per_class}")
    if int(seed) < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed}")
    clouds, labels = [], []
    for i in range(n_per_class):
        for cls in range(len(CLASS_NAMES)):
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), cls, i]))
            clouds.append(sample_shape(cls, rng, n_points))
            labels.append(cls)
    return clouds, np.asarray(labels, dtype=np.int64)


def voxelize_cloud(points: np.ndarray, resolution: int):
    """Sparse voxels of a cloud within the unit ball: (coords int32 [V, 3], feats float32 [V, 4]).

    The cube [-1, 1]^3 is split into ``resolution``^3 voxels; points outside it are clamped into the border
    voxels. Coords are unique, in [0, resolution), sorted lexicographically. Feats (see FEATURE_NAMES):
    occupancy 1.0, then the mean offset of the voxel's points from the voxel centre, in voxel units
    ([-0.5, 0.5]): sub-voxel detail that occupancy alone loses.
    """
    resolution = int(resolution)
    if resolution < 1:
        raise ValueError(f"resolution: expected >= 1, got {resolution}")
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points: expected shape [P, 3], got {list(p.shape)}")
    if p.shape[0] == 0:
        return np.zeros((0, 3), np.int32), np.zeros((0, len(FEATURE_NAMES)), np.float32)
    u = (p + 1.0) * (0.5 * resolution)  # grid units
    idx = np.clip(np.floor(u), 0, resolution - 1).astype(np.int64)
    offset = np.clip(u - idx - 0.5, -0.5, 0.5)
    key = (idx[:, 0] * resolution + idx[:, 1]) * resolution + idx[:, 2]
    uniq, inverse = np.unique(key, return_inverse=True)
    inverse = inverse.reshape(-1)  # NumPy 2.0.x returns it with the input's shape
    counts = np.bincount(inverse, minlength=uniq.size).astype(np.float64)
    mean = np.stack([np.bincount(inverse, weights=offset[:, d], minlength=uniq.size) for d in range(3)], 1)
    mean /= counts[:, None]
    coords = np.stack([uniq // resolution**2, (uniq // resolution) % resolution, uniq % resolution], 1)
    feats = np.concatenate([np.ones((uniq.size, 1)), mean], 1)
    return np.ascontiguousarray(coords, dtype=np.int32), np.ascontiguousarray(feats, dtype=np.float32)
