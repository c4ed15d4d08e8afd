"""Generated LiDAR-like outdoor scenes for demos, tests and benchmarks.

:func:`lidar_scene` ray-casts a street scene as a car-mounted spinning LiDAR (64 beams, 2048 azimuth steps per
turn, like a Velodyne HDL-64E) sees it while driving along the +x axis: flat ground whose points lie on rings
that thin out with range, parked and moving cars (oriented boxes), poles (vertical cylinders), buildings
(boxes: their walls are what the sensor sees), trees (trunk plus a porous ellipsoid crown that rays penetrate)
and bushes. Objects hide what is behind them, as in a real scan. Scans taken every ``pose_spacing`` metres
along the drive are merged and the result is cropped (to a disc around a single scan, or across the road at
the far end of the drive), so that voxelizing at ``voxel_size`` (origin at the points' minimum, as
:func:`sparseconv.voxelize` does by default) gives close to ``target_voxels`` active voxels.

Labels use ASPRS LAS classification codes (see :data:`CLASS_NAMES`): 1 unclassified (cars and poles), 2
ground, 3 low vegetation (bushes), 5 high vegetation (tree trunks and crowns), 6 building.

Everything is vectorized with NumPy over rays; Python loops only over scan poses and objects. The result
depends only on the arguments (the random generator is seeded per street segment and per scan).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "lidar_scene",
    "CLASS_NAMES",
    "UNCLASSIFIED",
    "GROUND",
    "LOW_VEGETATION",
    "HIGH_VEGETATION",
    "BUILDING",
]

UNCLASSIFIED = 1  # cars, poles
GROUND = 2
LOW_VEGETATION = 3  # bushes
HIGH_VEGETATION = 5  # trees (trunk and crown)
BUILDING = 6

CLASS_NAMES = {
    UNCLASSIFIED: "unclassified (cars, poles)",
    GROUND: "ground",
    LOW_VEGETATION: "low vegetation",
    HIGH_VEGETATION: "high vegetation",
    BUILDING: "building",
}

# Sensor model (HDL-64E-like).
_SENSOR_HEIGHT = 1.73
_N_BEAMS = 64
_N_AZIMUTH = 2048
_ELEV_MAX_DEG = 2.0
_ELEV_MIN_DEG = -24.8
_MIN_RANGE = 2.5
_MAX_RANGE = 80.0
_RANGE_NOISE = 0.015  # metres, 1 sigma
_DROPOUT = 0.03  # fraction of returns lost

# Street layout.
_SEGMENT = 20.0  # metres of street generated per random draw
_POSE_SPACING = 10.0
_CAPSULE_RADIUS = 40.0  # metres kept around the driven path
_MAX_POSES = 1000


# ------------------------------------------------------------------------------------------------------------
# Scene objects
# ------------------------------------------------------------------------------------------------------------


class _World:
    """Street objects, generated lazily per 20 m segment along x (deterministic in (seed, segment))."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.segments: dict[int, dict[str, list]] = {}

    def objects_near(self, x0: float, x1: float) -> dict[str, list]:
        out: dict[str, list] = {"box": [], "cyl": [], "ell": []}
        for k in range(math.floor(x0 / _SEGMENT), math.floor(x1 / _SEGMENT) + 1):
            if k not in self.segments:
                self.segments[k] = self._make_segment(k)
            for key, objs in self.segments[k].items():
                out[key].extend(objs)
        return out

    def _make_segment(self, k: int) -> dict[str, list]:
        # SeedSequence needs non-negative entries.
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, k + (1 << 30)])
        xs = k * _SEGMENT
        boxes, cyls, ells = [], [], []  # (params..., label)

        for side in (-1.0, 1.0):
            # Parked cars along the kerb.
            x = xs + rng.uniform(0.0, 3.0)
            while x < xs + _SEGMENT:
                length = rng.uniform(3.8, 4.9)
                if rng.random() < 0.7:
                    w, h = rng.uniform(1.7, 1.95), rng.uniform(1.4, 1.7)
                    cx = x + length / 2
                    cy = side * rng.uniform(4.9, 5.4)
                    yaw = rng.normal(0.0, 0.04)
                    boxes.append(
                        (cx, cy, h / 2 + 0.15, length / 2, w / 2, h / 2, yaw, UNCLASSIFIED)
                    )  # 15 cm clearance
                x += length + rng.uniform(0.8, 4.0)
            # Moving car in the lane, now and then.
            if rng.random() < 0.35:
                length, w, h = rng.uniform(4.0, 5.0), rng.uniform(1.7, 1.9), rng.uniform(1.4, 1.8)
                cx = xs + rng.uniform(0.0, _SEGMENT)
                cy = side * rng.uniform(
                    3.0, 3.6
                )  # the lanes beside the sensor car's (which runs along y = 0)
                boxes.append((cx, cy, h / 2, length / 2, w / 2, h / 2, rng.normal(0.0, 0.02), UNCLASSIFIED))
            # Street lights / sign poles.
            for px in np.arange(xs + rng.uniform(0.0, 12.0), xs + _SEGMENT, 12.0 + rng.uniform(0.0, 14.0)):
                r = rng.uniform(0.06, 0.14)
                cyls.append((px, side * rng.uniform(6.3, 6.8), r, 0.0, rng.uniform(3.0, 8.0), UNCLASSIFIED))
            # Street trees on the pavement.
            for tx in np.arange(xs + rng.uniform(0.0, 8.0), xs + _SEGMENT, rng.uniform(7.0, 14.0)):
                if rng.random() < 0.75:
                    self._tree(rng, tx, side * rng.uniform(7.5, 8.5), cyls, ells)

            # Either a row of buildings or a park.
            if rng.random() < 0.65:
                x = xs + rng.uniform(-2.0, 2.0)
                while x < xs + _SEGMENT:
                    length = rng.uniform(8.0, 24.0)
                    depth = rng.uniform(8.0, 18.0)
                    height = rng.uniform(4.0, 22.0)
                    setback = rng.uniform(10.0, 14.0)
                    boxes.append(
                        (
                            x + length / 2,
                            side * (setback + depth / 2),
                            height / 2,
                            length / 2,
                            depth / 2,
                            height / 2,
                            rng.normal(0.0, 0.02),
                            BUILDING,
                        )
                    )
                    gap = rng.uniform(0.0, 6.0) if rng.random() < 0.5 else 0.0
                    if gap > 2.5 and rng.random() < 0.7:  # hedge in the gap
                        ells.append(
                            (
                                x + length + gap / 2,
                                side * (setback + 0.5),
                                0.6,
                                gap / 2,
                                0.6,
                                0.7,
                                0.4,
                                LOW_VEGETATION,
                            )
                        )
                    x += length + gap
            else:
                for _ in range(rng.integers(2, 6)):
                    self._tree(
                        rng, xs + rng.uniform(0.0, _SEGMENT), side * rng.uniform(11.0, 40.0), cyls, ells
                    )
                for _ in range(rng.integers(2, 8)):
                    r = rng.uniform(0.5, 1.6)
                    ells.append(
                        (
                            xs + rng.uniform(0.0, _SEGMENT),
                            side * rng.uniform(10.0, 40.0),
                            r * 0.6,
                            r,
                            r * rng.uniform(0.7, 1.3),
                            r * 0.7,
                            0.3,
                            LOW_VEGETATION,
                        )
                    )
        return {"box": boxes, "cyl": cyls, "ell": ells}

    @staticmethod
    def _tree(rng, x, y, cyls, ells):
        trunk_h = rng.uniform(1.8, 3.5)
        cyls.append((x, y, rng.uniform(0.12, 0.25), 0.0, trunk_h + 0.5, HIGH_VEGETATION))
        rc = rng.uniform(1.5, 3.5)
        rz = rc * rng.uniform(0.8, 1.5)
        # crown: centre, semi-axes, mean penetration depth, label
        ells.append((x, y, trunk_h + rz * 0.9, rc, rc * rng.uniform(0.8, 1.2), rz, 0.6, HIGH_VEGETATION))


# ------------------------------------------------------------------------------------------------------------
# Ray casting
# ------------------------------------------------------------------------------------------------------------


def _ray_dirs():
    elev = np.deg2rad(np.linspace(_ELEV_MAX_DEG, _ELEV_MIN_DEG, _N_BEAMS))
    azim = np.arange(_N_AZIMUTH) * (2.0 * np.pi / _N_AZIMUTH)
    ce = np.cos(elev)[:, None]
    d = np.stack(
        [
            ce * np.cos(azim)[None, :],
            ce * np.sin(azim)[None, :],
            np.broadcast_to(np.sin(elev)[:, None], (_N_BEAMS, _N_AZIMUTH)),
        ],
        axis=-1,
    )
    return d  # [B, A, 3]


def _columns(origin, cx, cy, radius):
    """Azimuth columns whose rays can reach an object with xy bounding circle (cx, cy, radius), or None."""
    dx, dy = cx - origin[0], cy - origin[1]
    dist = math.hypot(dx, dy)
    if dist - radius > _MAX_RANGE:
        return None
    if dist <= radius * 1.05:
        return slice(None)
    half = math.asin(min(1.0, radius / dist)) + 1e-3
    step = 2.0 * math.pi / _N_AZIMUTH
    centre = math.atan2(dy, dx)
    lo = math.floor((centre - half) / step)
    hi = math.ceil((centre + half) / step)
    if hi - lo + 1 >= _N_AZIMUTH:
        return slice(None)
    return np.arange(lo, hi + 1) % _N_AZIMUTH


def _hit_box(o, d, c, h, yaw):
    cs, sn = math.cos(-yaw), math.sin(-yaw)
    ox, oy, oz = o[0] - c[0], o[1] - c[1], o[2] - c[2]
    lo = np.array([cs * ox - sn * oy, sn * ox + cs * oy, oz])
    dl = np.stack([cs * d[..., 0] - sn * d[..., 1], sn * d[..., 0] + cs * d[..., 1], d[..., 2]], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dl
        t1 = (-np.asarray(h) - lo) * inv
        t2 = (np.asarray(h) - lo) * inv
    tnear = np.nanmax(np.minimum(t1, t2), axis=-1)
    tfar = np.nanmin(np.maximum(t1, t2), axis=-1)
    ok = (tnear <= tfar) & (tnear > 0.0)
    return np.where(ok, tnear, np.inf)


def _hit_cylinder(o, d, cx, cy, r, z0, z1):
    ox, oy = o[0] - cx, o[1] - cy
    a = d[..., 0] ** 2 + d[..., 1] ** 2
    b = 2.0 * (ox * d[..., 0] + oy * d[..., 1])
    c = ox * ox + oy * oy - r * r
    disc = b * b - 4.0 * a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-b - np.sqrt(disc)) / (2.0 * a)
    z = o[2] + t * d[..., 2]
    ok = (disc >= 0.0) & (t > 0.0) & (z >= z0) & (z <= z1)
    return np.where(ok, t, np.inf)


def _hit_ellipsoid(o, d, c, s, depth, rng):
    """Porous crown: a ray entering it stops after an exponential depth (mean `depth`) or passes through."""
    s = np.asarray(s)
    lo = (np.asarray(o) - np.asarray(c)) / s
    dl = d / s
    A = np.einsum("...i,...i->...", dl, dl)
    B = 2.0 * dl @ lo
    C = float(lo @ lo) - 1.0
    disc = B * B - 4.0 * A * C
    sq = np.sqrt(np.maximum(disc, 0.0))
    t0 = (-B - sq) / (2.0 * A)
    t1 = (-B + sq) / (2.0 * A)
    t0 = np.maximum(t0, 0.0)
    stop = t0 + rng.exponential(depth, size=t0.shape)
    ok = (disc > 0.0) & (t1 > 0.0) & (stop < t1)  # rays that get through the whole crown see what is behind
    return np.where(ok, stop, np.inf)


def _scan(world: _World, origin: np.ndarray, dirs: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    t = np.full(dirs.shape[:2], np.inf)
    lab = np.zeros(dirs.shape[:2], dtype=np.int64)

    # Ground plane z = 0.
    dz = dirs[..., 2]
    with np.errstate(divide="ignore"):
        tg = np.where(dz < 0.0, -origin[2] / dz, np.inf)
    t = tg
    lab[np.isfinite(tg)] = GROUND

    def update(cols, th, label):
        nonlocal t
        cur = t[:, cols]
        m = th < cur
        if not m.any():
            return
        t[:, cols] = np.where(m, th, cur)
        sub = lab[:, cols]
        sub[m] = label
        lab[:, cols] = sub

    objs = world.objects_near(origin[0] - _MAX_RANGE - _SEGMENT, origin[0] + _MAX_RANGE + _SEGMENT)
    for cx, cy, cz, hx, hy, hz, yaw, label in objs["box"]:
        cols = _columns(origin, cx, cy, math.hypot(hx, hy))
        if cols is not None:
            update(cols, _hit_box(origin, dirs[:, cols], (cx, cy, cz), (hx, hy, hz), yaw), label)
    for cx, cy, r, z0, z1, label in objs["cyl"]:
        cols = _columns(origin, cx, cy, r)
        if cols is not None:
            update(cols, _hit_cylinder(origin, dirs[:, cols], cx, cy, r, z0, z1), label)
    for cx, cy, cz, sx, sy, sz, depth, label in objs["ell"]:
        cols = _columns(origin, cx, cy, max(sx, sy))
        if cols is not None:
            update(cols, _hit_ellipsoid(origin, dirs[:, cols], (cx, cy, cz), (sx, sy, sz), depth, rng), label)

    keep = (t >= _MIN_RANGE) & (t <= _MAX_RANGE) & (rng.random(t.shape) >= _DROPOUT)
    tk = t[keep] + rng.normal(0.0, _RANGE_NOISE, size=int(keep.sum()))
    pts = origin[None, :] + dirs[keep] * tk[:, None]
    return pts, lab[keep]


# ------------------------------------------------------------------------------------------------------------
# Public entry point
# ------------------------------------------------------------------------------------------------------------


def _voxel_keys(points: np.ndarray, voxel_size: float) -> np.ndarray:
    q = np.floor((points - points.min(0)) / voxel_size).astype(np.int64)
    dims = q.max(0) + 1
    return (q[:, 0] * dims[1] + q[:, 1]) * dims[2] + q[:, 2]


def _count_voxels(points: np.ndarray, voxel_size: float) -> int:
    if len(points) == 0:
        return 0
    return int(np.unique(_voxel_keys(points, voxel_size)).size)


def _capsule_dist(points: np.ndarray, x_end: float) -> np.ndarray:
    """Horizontal distance to the driven path, the segment from (0, 0) to (x_end, 0)."""
    dx = np.maximum(np.maximum(-points[:, 0], points[:, 0] - x_end), 0.0)
    return np.hypot(dx, points[:, 1])


def lidar_scene(target_voxels: int, voxel_size: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A LiDAR-like street scene that voxelizes to about ``target_voxels`` active voxels.

    Args:
        target_voxels: wanted number of occupied voxels at ``voxel_size`` (the result is usually within 1%).
        voxel_size: voxel edge in metres used to size the scene (points are in metres whatever it is).
        seed: random seed; the same arguments give the same scene.

    Returns:
        ``(points, labels)``: float32 ``[P, 3]`` coordinates in metres (x along the drive, z up, ground at
        z = 0, first sensor pose above the origin) and int64 ``[P]`` ASPRS class codes (see
        :data:`CLASS_NAMES`).
    """
    if (
        isinstance(target_voxels, bool)
        or not isinstance(target_voxels, (int, np.integer))
        or target_voxels <= 0
    ):
        raise ValueError(f"target_voxels: expected a positive int, got {target_voxels!r}")
    if not (
        isinstance(voxel_size, (int, float, np.floating)) and voxel_size > 0 and math.isfinite(voxel_size)
    ):
        raise ValueError(f"voxel_size: expected a positive finite number, got {voxel_size!r}")
    target = int(target_voxels)

    world = _World(seed)
    dirs = _ray_dirs()
    chunks_p, chunks_l = [], []
    n_poses = 0
    while True:
        x = n_poses * _POSE_SPACING
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, n_poses, 7])
        p, lab = _scan(world, np.array([x, 0.0, _SENSOR_HEIGHT]), dirs, rng)
        chunks_p.append(p.astype(np.float32))
        chunks_l.append(lab)
        n_poses += 1
        points = np.concatenate(chunks_p)
        inside = _capsule_dist(points, x) <= _CAPSULE_RADIUS
        if _count_voxels(points[inside], voxel_size) >= target:
            break
        if n_poses >= _MAX_POSES:
            raise ValueError(
                f"target_voxels: {target} is too many for a generated scene at voxel_size={voxel_size}"
            )
    labels = np.concatenate(chunks_l)[inside]
    points = points[inside]

    # Crop so that `target` voxels remain: one scan is cropped to a disc around the sensor (a shorter range),
    # several merged scans along the drive are cut across the road at the far end. The crop distance `key` is
    # monotone in what it removes; a voxel's key is that of its first point in key order. Cropping moves
    # points.min(0) (the voxel grid origin) a little, so correct the aim and repeat.
    pts64 = points.astype(np.float64)
    key = np.hypot(pts64[:, 0], pts64[:, 1]) if n_poses == 1 else pts64[:, 0]
    order = np.argsort(key, kind="stable")
    key_sorted = key[order]
    points_sorted = points[order]
    want, n = target, len(points)
    for _ in range(6):
        keys = _voxel_keys(points_sorted, voxel_size)
        _, first = np.unique(keys, return_index=True)  # first point (lowest key) of each voxel
        vkey = np.sort(key_sorted[first])
        n = int(np.searchsorted(key_sorted, vkey[min(want, len(vkey)) - 1], side="right"))
        got = _count_voxels(points_sorted[:n], voxel_size)
        if abs(got - target) <= max(1, target // 1000):
            break
        want = max(1, want + (target - got))
    sel = np.sort(order[:n])  # keep the scan order (ring by ring, frame by frame)
    return np.ascontiguousarray(points[sel], dtype=np.float32), labels[sel].astype(np.int64)
