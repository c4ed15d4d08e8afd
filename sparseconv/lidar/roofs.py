"""Roofs are planar: a connected patch the network called building whose surface is rough is a canopy.

A single-return sensor sees a dense crown as one closed surface, which a network trained on voxels can take
for a roof (issue 16). Geometry tells them apart at a scale the 1 m voxels blur: within a 2 m cell a roof is one
plane (a few cm of ranging noise about it), a crown's surface curves and scatters. So, among the points labelled
building, each 2 m cell's roughness is sqrt of the least eigenvalue of its points' covariance. A ridge, hip or
eave that crosses a cell makes it rough too, so the grid is laid twice, the second shifted by half a cell along
x, y and z, and a point keeps the smaller value. A patch (building points connected through 1 m voxels,
26-neighbours) whose median roughness exceeds ROUGH_MAX is not a roof.

ROUGH_MAX was chosen on generated tiles only: 39 tiles of 100 m (seeds 881000-881008 of evaluate_generated's
multi, single, suburban single-return and forest conditions, 881000-881002 of farmland; apart from training's
and from evaluate_generated's; multi and single share their scenes), the shipped model's labels;
benchmarks/roof_check.py reproduces the sweep, the stress test and the noise figures below. Share of the
building points in building patches that the check relabels, and of the vegetation the model called building
that it recovers: 0.80% and 84% at 0.06 m, 0.35% and 83% at 0.07 m, 0.09% and 81% at 0.08 m, 0.09% and 76% at
0.09 m, 0.09% and 58% at 0.10 m. 0.08 m is the lowest value at which the loss of buildings levels off.

Variants measured the same way (scratch scripts) and not kept:
- patches connected in 2D (1 m columns): 76% at 0.08 m, because a crown over a roof joins its patch;
- four grids (half shifts in x or y alone too): 85% at 0.04 m for the same loss, but that threshold lies within
  1 cm of the generator's ranging noise (1.5-3.5 cm), where a noisier real sensor would lose its roofs;
- a threshold relative to each patch's own 10th percentile (k = 2): 19%.

Two grids at 0.08 m hold to about 6 cm of noise. With Gaussian noise added to the building points' heights,
the building loss reads 0.35% at 5 cm, 0.82% at 6.5 cm and 5.3% at 8 cm.

A roof that a larger crown (also called building) touches shares its patch and would go with it. So within a
rough patch, the cells under half the threshold that join into a roof facet's area (ROOF_MIN_AREA) stay
building. Stress test on the 18 suburban and single-return calibration tiles, with every high-vegetation point
called building, as the model shipped before issue 16 did on the hidden suburban tile:
- without the rescue, the check recovers 98.5% of the vegetation and relabels 13.6% of the building points;
- with it, at 5 / 10 / 20 / 40 m2, it relabels 4.1 / 4.1 / 4.4 / 5.1% of the building points and recovers
  98.1 / 98.3 / 98.4 / 98.5% of the vegetation;
- on the model's own labels the rescue changes nothing (0.09%, 81%).

20 m2 was taken over 10 m2 with an eye on the real single-return clump of append-bug.laz. Of the 3,495 of its
points that the check recovers, 20 m2 gives 283 back to building and 10 m2 gives back 493.

classify judges each part of a file (a block of tiles, about block_points points) with its 8 m margin, so a
patch that crosses a part's border is judged on each side from what that side sees: a long roof joined at one
end by a crown can be judged rough on the crown's side and planar on the other. Labels still do not depend on
the threads, only on block_points.

Patches too sparse to judge (fewer than MIN_JUDGED points in cells of MIN_CELL_POINTS or more: below about
2 points/m2) keep the network's label.
"""
import numpy as np
import torch

from .features import MIN_CELL_POINTS, _compact, _eigen_table, cell_moments

CELL = 2.0  # metres: a crown curves within it, a roof facet is flat across it
ROUGH_MAX = 0.08  # metres: median roughness above which a patch is not a roof
LINK = 1.0  # metres: grid on which building points connect into patches
MIN_JUDGED = 10  # points in cells with a roughness, per patch, before it is judged
SMOOTH_FRACTION = 0.5  # cells under this fraction of the threshold are a roof's, within a rough patch...
ROOF_MIN_AREA = 20.0  # m2: ...when they join into at least a small house's roof facet (5 x 4 m)
# 13 of the 26 neighbour offsets, one of each +-pair: (dx, dy, dz) after (0, 0, 0) in lexicographic order
FORWARD = [(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1) if (dx, dy, dz) > (0, 0, 0)]


def cell_roughness(x, y, z, cell=CELL):
    """[P] float32 roughness (m) of each point's cell, the smaller over the two grids; inf where neither of its
    cells holds MIN_CELL_POINTS points (no plane to speak of)."""
    c = [x - x.min(), y - y.min(), z - z.min()]
    best = np.full(x.size, np.inf, np.float32)
    for shift in (0.0, 0.5 * cell):
        k = [((a + shift) / cell).astype(np.int64) for a in c]
        span = [int(a.max()) + 1 for a in k]
        ids, n, _ = _compact((k[0] * span[1] + k[1]) * span[2] + k[2])
        moments = cell_moments(c, ids, n)
        rough = _eigen_table(moments)[:, 4]
        rough[moments[0] < MIN_CELL_POINTS] = np.inf
        np.minimum(best, rough[ids], out=best)
    return best


def patches(x, y, z, link=LINK):
    """([P] int64 patch id of each point, number of patches): points connected through occupied cells of a
    `link` m 3D grid, 26-neighbours (a crown over a roof joins it only where it reaches down to it). Label
    propagation with pointer jumping on the occupied cells' edges."""
    k = [((a - a.min()) / link).astype(np.int64) + 1 for a in (x, y, z)]
    sy, sz = int(k[1].max()) + 2, int(k[2].max()) + 2  # a free row on each side: no offset wraps into another
    cell, n, keys = _compact((k[0] * sy + k[1]) * sz + k[2])
    src, dst = [], []
    for dx, dy, dz in FORWARD:  # the other 13 neighbours are these edges' reverse
        off = (dx * sy + dy) * sz + dz
        j = np.searchsorted(keys, keys + off)
        hit = j < n
        hit[hit] = keys[j[hit]] == keys[hit] + off
        src.append(np.flatnonzero(hit))
        dst.append(j[hit])
    a, b = torch.from_numpy(np.concatenate(src)), torch.from_numpy(np.concatenate(dst))
    parent = torch.arange(n)
    while True:
        pa, pb = parent[a], parent[b]
        differ = pa != pb
        if not bool(differ.any()):
            break
        # hook the larger root under the smaller one, then flatten every chain to its root
        lo, hi = torch.minimum(pa[differ], pb[differ]), torch.maximum(pa[differ], pb[differ])
        parent.scatter_reduce_(0, hi, lo, "amin")
        while True:
            up = parent[parent]
            if torch.equal(up, parent):
                break
            parent = up
    ids, count, _ = _compact(parent.numpy())
    return ids[cell], count


def rough_patches(x, y, z, rough_max=ROUGH_MAX, min_area=ROOF_MIN_AREA):
    """[P] bool: the points (all labelled building) whose patch is rougher than a roof, less the smooth parts of
    at least min_area m2 (inf: none kept)."""
    if x.size == 0:
        return np.zeros(0, bool)
    rough = cell_roughness(x, y, z)
    patch, n = patches(x, y, z)
    judged = np.isfinite(rough)
    n_judged = np.bincount(patch[judged], minlength=n)
    # median per patch: sort the judged points by (patch, roughness) and take each patch's middle one
    rj = rough[judged]
    ranked = rj[np.lexsort((rj, patch[judged]))]
    start = np.concatenate([[0], np.cumsum(n_judged)[:-1]])
    mid = np.minimum(start + n_judged // 2, max(ranked.size - 1, 0))
    median = np.where(n_judged > 0, ranked[mid] if ranked.size else np.inf, np.inf)
    bad = ((n_judged >= MIN_JUDGED) & (median > rough_max))[patch]
    # A roof that touches a larger crown called building shares its patch: its smooth part, if it spans a roof
    # facet's area, stays building.
    smooth = np.flatnonzero(bad & (rough <= rough_max * SMOOTH_FRACTION))
    if smooth.size:
        part, n = patches(x[smooth], y[smooth], z[smooth])
        bad[smooth[(_area(x[smooth], y[smooth], part, n) >= min_area)[part]]] = False
    return bad


def _area(x, y, ids, n):
    """[n] m2 covered by each group of points (ids in 0..n-1): its occupied LINK m columns."""
    kx, ky = ((x - x.min()) / LINK).astype(np.int64), ((y - y.min()) / LINK).astype(np.int64)
    _, _, keys = _compact((ids * (int(kx.max()) + 1) + kx) * (int(ky.max()) + 1) + ky)
    return np.bincount(keys // ((int(kx.max()) + 1) * (int(ky.max()) + 1)), minlength=n) * LINK * LINK
