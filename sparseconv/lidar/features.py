"""Per-point input features of the LiDAR classifier, computed from what LAS files carry.

A point set is a dict of NumPy arrays: x, y, z (float64 metres), intensity (uint16), return_number,
number_of_returns (uint8), optionally red, green, blue (uint16) and classification (uint8).

Features (names stored in a model's checkpoint, in this order):

* ``hag``: height above a local ground estimate (progressive morphological filter on a grid of lowest points),
  clipped to [-10, 80] m; the strongest cue for ground / vegetation / building and independent of terrain slope;
* ``intensity``: the intensity's rank within its file (empirical CDF, 0..1), so 8-bit, 12-bit and 16-bit sensors
  and per-flight gains land on one scale;
* ``first``, ``last``, ``returns``: return_number == 1, return_number == number_of_returns, and
  min(number_of_returns, 5) / 5 (vegetation gives several returns per pulse, roofs and ground one);
* ``dz``: the point's height within its voxel (0..1), so that points sharing a voxel can still differ;
* ``red``, ``green``, ``blue``: colour scaled to 0..1 (8-bit or 16-bit storage detected per file), when present;
* shape features (models trained since issue 16; older checkpoints list only the names above and get exactly
  the inputs they were trained with): for each scale s in SHAPE_SCALES (metres), the eigenvalues
  l1 >= l2 >= l3 of the covariance of the points sharing the point's s-metre 3D cell give ``lin{s}``
  (l1 - l2) / l1, ``pla{s}`` (l2 - l3) / l1, ``sca{s}`` l3 / l1, ``ver{s}`` 1 - |n_z| of the normal (the l3
  eigenvector) and ``rough{s}`` sqrt(l3) in metres: a roof is planar and smooth at both scales, a canopy seen
  by a single-return sensor is rough and scattered, a wall vertical. Cells of fewer than MIN_CELL_POINTS
  points give 0: three points are always a perfect plane, four or five a line or a plane by chance.
  ``top{s}``, ``relief{s}``: the point's depth below the highest point, and the height above the lowest,
  of its s-metre column (clipped to 0..40 m): height above ground at more than one scale, without the filter.
  They depend only on geometry, so they hold for single-return, intensity-free and colour-free files.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

BASE_FEATURES = ("hag", "intensity", "first", "last", "returns", "dz")
RGB_FEATURES = ("red", "green", "blue")
SHAPE_SCALES = (2, 4)  # nested (the coarse cells are 2 x 2 x 2 fine ones): the coarse scale costs no pass over points
SHAPE_FEATURES = tuple(f"{k}{s}" for s in SHAPE_SCALES for k in ("lin", "pla", "sca", "ver", "rough", "top", "relief"))
HAG_RANGE = (-10.0, 80.0)
COLUMN_RANGE = (0.0, 40.0)
MIN_CELL_POINTS = 6  # fewer: the covariance's shape is chance (sparse vegetation would look like wires)


def intensity_lut(hist):
    """65536-entry lookup table from an intensity histogram: each value's mid-rank in the file (0..1)."""
    hist = np.asarray(hist, np.float64)
    total = max(hist.sum(), 1.0)
    cdf = np.cumsum(hist)
    return ((cdf - 0.5 * hist) / total).astype(np.float32)


def rgb_scale(max_value):
    """Divisor for colour channels: files store 8-bit colour either as is or scaled to 16 bits."""
    return 255.0 if max_value <= 255 else 65535.0


def _pool_max(g, k):
    # Separable: a k x k max is a k x 1 max of a 1 x k max (identical result, 2k instead of k^2 compares).
    g = F.max_pool2d(g, (k, 1), stride=1, padding=(k // 2, 0))
    return F.max_pool2d(g, (1, k), stride=1, padding=(0, k // 2))


def _pool_min(g, k):
    return -_pool_max(-g, k)


def _odd(n):
    n = max(int(round(n)), 1)
    return n if n % 2 else n + 1


def local_density(x, y, cell=5.0):
    """Points per m2 over the occupied cells of a cell x cell grid: a thinned strip or a tile with a corner of
    data has the density of where its points are, not of its bounding box."""
    if x.size == 0:
        return 0.0
    key = np.floor((x - x.min()) / cell).astype(np.int64) * (1 << 32) + np.floor((y - y.min()) / cell).astype(np.int64)
    return x.size / (np.unique(key).size * cell * cell)


def ground_cell_size(density, min_cell=1.0):
    """Grid cell of the ground estimate: about 2 points per cell where there are points, at least min_cell m."""
    return float(min(max(min_cell, math.sqrt(2.0 / max(density, 1e-6))), 20.0))


def _fill_empty(g):
    """Empty cells (inf) take the mean of the data cells in the smallest coarser cell (2x, 4x, ...) that holds
    any: O(cells), where growing the data ring by ring is O(cells x width) (minutes on a thin strip in a 1 km
    block). Only for interpolation: the filter itself never sees filled cells."""
    empty = torch.isinf(g)
    if not bool(empty.any()) or g.shape[-2] * g.shape[-1] == 1:
        return g
    total = F.avg_pool2d(torch.where(empty, 0.0, g), 2, 2, ceil_mode=True)
    count = F.avg_pool2d((~empty).to(g.dtype), 2, 2, ceil_mode=True)
    coarse = _fill_empty(torch.where(count > 0, total / count.clamp_min(1e-12), math.inf))
    up = coarse.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., : g.shape[-2], : g.shape[-1]]
    return torch.where(empty, up, g)


def _dilate(g, k):
    """k x k max over data cells only (empty = inf on input and output)."""
    out = _pool_max(torch.where(torch.isinf(g), -math.inf, g), k)
    return torch.where(torch.isneginf(out), math.inf, out)


def _open_by_slope(g, empty, cell, windows_m, slope, dh0, dh_max):
    """Progressive morphological filter over the data cells of g (empty = inf). slope: a number, or a grid of
    per-cell allowances (then the dh_max cap rises with it: a 40-degree flank climbs more than dh_max within
    one window)."""
    nx, ny = g.shape[-2:]
    # A 3x3 closing fills one-cell pits: low outliers (multipath noise) would otherwise pull the ground down.
    g = torch.where(empty, math.inf, _pool_min(_dilate(g, 3), 3))
    prev_w = 0.0
    for w in windows_m:
        k = _odd(w / cell)
        if k < 3:
            continue
        if k > 2 * max(nx, ny) + 1:
            break
        opened = _dilate(_pool_min(g, k), k)
        if torch.is_tensor(slope):
            dh = torch.minimum(dh0 + slope * (k * cell - prev_w), dh_max + (slope - slope.min()) * k * cell)
        else:
            dh = min(dh0 + slope * (k * cell - prev_w), dh_max)
        g = torch.where(~empty & (g - opened > dh), opened, g)
        prev_w = k * cell
    return g


def _terrain_slope(g, cell, open_m=24.0, mean_m=12.0, reach_m=48.0):
    """|gradient| of a filled ground grid [1, 1, nx, ny]: opened over open_m first (what the first pass left
    of an object must not read as terrain), central differences, the mean over mean_m, then the max over
    reach_m: a ridge keeps the slope of its flanks, and the uphill rim of the data, which every opening of a
    slope cuts flat (by up to slope x half the window), the slope just inside it."""
    k = _odd(open_m / cell)
    g = _pool_max(_pool_min(g, k), k)
    p = F.pad(g, (1, 1, 1, 1), mode="replicate")
    gx = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) / (2 * cell)
    gy = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) / (2 * cell)
    k = _odd(mean_m / cell)
    s = F.avg_pool2d(torch.hypot(gx, gy), k, 1, k // 2, count_include_pad=False)
    return _pool_max(s, _odd(reach_m / cell))


def ground_grid(x, y, z, cell, windows_m=(3.0, 6.0, 12.0, 24.0, 48.0), slope=0.3, dh0=0.5, dh_max=6.0,
                near_m=0.5):
    """Ground elevation on a grid (progressive morphological filter after Zhang et al. 2003, slope-adaptive).

    Lowest point per cell, then openings with growing windows over the cells that hold points (empty cells
    neither pull the surface down nor up): a cell that rises above its opening by more than
    dh0 + slope * window (capped at dh_max) is an object (building, tree) and takes the opened value. A fixed
    slope of 0.3 cuts the convex parts of mountain flanks (tens of metres of terrain called object on a real
    IGN tile), so the filter runs twice: the terrain slope measured on the first surface (_terrain_slope)
    sets each cell's allowance in the second, at least `slope`. Flat terrain keeps the first result.
    Finally each cell takes the mean of its points within near_m of the surface: on a slope the lowest point
    lies at the cell's downhill edge, up to slope x cell below its centre. Empty cells are filled at the end,
    for interpolation. Returns (grid [nx, ny] float32 tensor, x0, y0) with cell centres at
    x0 + (i + 0.5) * cell.
    """
    x0, y0 = float(x.min()), float(y.min())
    ix = ((x - x0) / cell).astype(np.int64)
    iy = ((y - y0) / cell).astype(np.int64)
    nx, ny = int(ix.max()) + 1, int(iy.max()) + 1
    zt = torch.from_numpy(np.ascontiguousarray(z, np.float32))
    flat = torch.full((nx * ny,), math.inf)
    key = ix * ny + iy
    flat.scatter_reduce_(0, torch.from_numpy(key), zt, "amin")
    lowest = flat.view(1, 1, nx, ny)
    empty = torch.isinf(lowest)
    g = _open_by_slope(lowest, empty, cell, windows_m, slope, dh0, dh_max)
    # 1.2: the mean over 12 m understates the steepest stretches within it
    allowance = (1.2 * _terrain_slope(_fill_empty(g), cell)).clamp_min(slope)
    if bool((allowance > slope).any()):
        g = _open_by_slope(lowest, empty, cell, windows_m, allowance, dh0, dh_max)
    g = _fill_empty(g)[0, 0]
    h = z - sample_grid(g, x0, y0, cell, x, y)
    near = np.abs(h) < near_m
    n = np.bincount(key[near], minlength=nx * ny)
    mean = np.bincount(key[near], h[near], minlength=nx * ny) / np.maximum(n, 1)
    shift = torch.from_numpy(np.where(n > 0, mean, np.inf).astype(np.float32).reshape(1, 1, nx, ny))
    return g + _fill_empty(shift)[0, 0], x0, y0


def sample_grid(grid, x0, y0, cell, x, y):
    """Bilinear interpolation of grid (cell centres) at the points, clamped at the borders."""
    nx, ny = grid.shape
    u = np.clip((x - x0) / cell - 0.5, 0, nx - 1)
    v = np.clip((y - y0) / cell - 0.5, 0, ny - 1)
    i0 = np.minimum(u.astype(np.int64), max(nx - 2, 0))
    j0 = np.minimum(v.astype(np.int64), max(ny - 2, 0))
    i1, j1 = np.minimum(i0 + 1, nx - 1), np.minimum(j0 + 1, ny - 1)
    fu, fv = (u - i0).astype(np.float32), (v - j0).astype(np.float32)
    g = grid.numpy()
    return ((g[i0, j0] * (1 - fu) + g[i1, j0] * fu) * (1 - fv) + (g[i0, j1] * (1 - fu) + g[i1, j1] * fu) * fv)


def height_above_ground(x, y, z, min_cell=1.0):
    """hag [P] float32 for one window of points (the estimate uses only these points)."""
    if x.size == 0:
        return np.zeros(0, np.float32)
    cell = ground_cell_size(local_density(x, y), min_cell)
    grid, x0, y0 = ground_grid(x, y, z, cell)
    return (z - sample_grid(grid, x0, y0, cell, x, y)).astype(np.float32)


def feature_names(has_rgb, shape=True):
    return BASE_FEATURES + (SHAPE_FEATURES if shape else ()) + (RGB_FEATURES if has_rgb else ())


def _compact(keys):
    """(dense ids 0..n-1 of integer keys >= 0, n, the keys of the ids): a bincount over the key range when it is
    small enough (several times faster than sorting), else np.unique."""
    if keys.size and int(keys.max()) < max(8 * keys.size, 1 << 22):
        occupied = np.bincount(keys) > 0
        ids = np.cumsum(occupied) - 1
        return ids[keys], int(ids[-1]) + 1, np.flatnonzero(occupied)
    uniq, inv = np.unique(keys, return_inverse=True)
    return inv.ravel(), uniq.size, uniq


def _sym3_eigen(a00, a01, a02, a11, a12, a22):
    """Eigenvalues l1 >= l2 >= l3 of symmetric 3x3 matrices (closed form, Smith 1961) and |n_z| of the unit
    eigenvector of l3 (largest cross product of two rows of A - l3 I): vectorised, about 5x torch's eigh."""
    q = (a00 + a11 + a22) / 3.0
    p1 = a01 * a01 + a02 * a02 + a12 * a12
    b00, b11, b22 = a00 - q, a11 - q, a22 - q
    p = np.sqrt(np.maximum((b00 * b00 + b11 * b11 + b22 * b22 + 2.0 * p1) / 6.0, 1e-30))
    det = b00 * (b11 * b22 - a12 * a12) - a01 * (a01 * b22 - a12 * a02) + a02 * (a01 * a12 - b11 * a02)
    phi = np.arccos(np.clip(det / (2.0 * p ** 3), -1.0, 1.0)) / 3.0
    l1 = q + 2.0 * p * np.cos(phi)
    l3 = q + 2.0 * p * np.cos(phi + 2.0 * math.pi / 3.0)
    l2 = 3.0 * q - l1 - l3
    r0 = np.stack([a00 - l3, a01, a02])
    r1 = np.stack([a01, a11 - l3, a12])
    r2 = np.stack([a02, a12, a22 - l3])
    best, best_norm = None, None
    for u, v in ((r0, r1), (r0, r2), (r1, r2)):
        c = np.cross(u, v, axis=0)
        nrm = (c * c).sum(0)
        if best is None:
            best, best_norm = c, nrm
        else:
            take = nrm > best_norm
            best, best_norm = np.where(take, c, best), np.maximum(nrm, best_norm)
    nz = np.abs(best[2]) / np.sqrt(np.maximum(best_norm, 1e-300))
    nz = np.where(best_norm > 1e-300, nz, 1.0)  # isotropic: no direction; call it level
    return np.maximum(l1, 0.0), np.maximum(l2, 0.0), np.maximum(l3, 0.0), nz


def cell_moments(c, cell, n):
    """[10, n] float64 moments of the points of each cell (see _eigen_table): c the x, y, z arrays from a corner,
    cell [P] the cell id of each point in 0..n-1."""
    return np.stack([np.bincount(cell, w, n) if w is not None else np.bincount(cell, minlength=n)
                     for w in (None, c[0], c[1], c[2], c[0] * c[0], c[0] * c[1], c[0] * c[2], c[1] * c[1],
                               c[1] * c[2], c[2] * c[2])]).astype(np.float64)


def _eigen_table(m):
    """[C, 5] float32 (lin, pla, sca, ver, rough) from per-cell moments m [10, C]: n, sums of x, y, z, and of
    xx, xy, xz, yy, yz, zz (coordinates from the block's corner: float64 keeps centimetres of variance)."""
    n = m[0]
    big = np.flatnonzero(n >= MIN_CELL_POINTS)
    nb = n[big]
    mean = m[1:4, big] / nb
    cov = [m[4 + r, big] / nb - mean[a] * mean[b]
           for r, (a, b) in enumerate(((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)))]
    l1, l2, l3, nz = _sym3_eigen(*cov)
    d = np.maximum(l1, 1e-12)
    table = np.zeros((n.size, 5), np.float32)
    spread = l1 > 1e-8  # all points at one spot: no shape
    table[big] = np.where(spread[:, None], np.stack(
        [(l1 - l2) / d, (l2 - l3) / d, l3 / d, 1.0 - nz, np.minimum(np.sqrt(l3), 2.0)], 1), 0.0)
    return table


def _reduce(ids, n, values, how):
    init = -math.inf if how == "amax" else math.inf
    return torch.full((n,), init).scatter_reduce_(0, torch.from_numpy(ids), torch.from_numpy(values), how)


def shape_features(pts, names):
    """{name: [P] float32} for the shape features among names (see the module docstring), from pts' own
    points. classify computes them once per block (as it does the ground) and carries them in pts, so that
    overlapping windows reuse them. One pass over the points at the fine scale (moments by bincount, column
    extremes by scatter_reduce); the coarse scale aggregates fine cells."""
    wanted = [k for k in names if k in SHAPE_FEATURES]
    if not wanted or pts["x"].size == 0:  # a model without them (older checkpoints) pays nothing
        return {k: np.zeros(pts["x"].size, np.float32) for k in wanted}
    fine, coarse = SHAPE_SCALES
    c = [pts[k] - pts[k].min() for k in ("x", "y", "z")]
    k = [(a / fine).astype(np.int64) for a in c]
    span = [int(a.max()) + 1 for a in k]
    cell, nc, keys = _compact((k[0] * span[1] + k[1]) * span[2] + k[2])
    moments = cell_moments(c, cell, nc)
    z32 = np.ascontiguousarray(c[2], np.float32)
    ztop, zlow = _reduce(cell, nc, z32, "amax").numpy(), _reduce(cell, nc, z32, "amin").numpy()
    kz = keys % span[2]
    kxy = keys // span[2]
    kx, ky = kxy // span[1], kxy % span[1]
    r = coarse // fine
    ccell, ncc, _ = _compact(((kx // r) * (span[1] // r + 1) + ky // r) * (span[2] // r + 1) + kz // r)
    cmoments = np.stack([np.bincount(ccell, m, ncc) for m in moments])
    out = {}
    for s, table, of_point in ((fine, _eigen_table(moments), cell), (coarse, _eigen_table(cmoments), ccell[cell])):
        per_point = table[of_point]
        out.update({f"{key}{s}": per_point[:, i] for i, key in enumerate(_SHAPE_KEYS)})
    # columns: fine 3D cells -> fine columns -> coarse columns (each a reduction over the previous level's cells)
    col, ncol, colkeys = _compact(kxy)
    ccol, nccol, _ = _compact((colkeys // span[1] // r) * (span[1] // r + 1) + (colkeys % span[1]) // r)
    hi, lo = _reduce(col, ncol, ztop, "amax"), _reduce(col, ncol, zlow, "amin")
    chi, clo = _reduce(ccol, nccol, hi.numpy(), "amax"), _reduce(ccol, nccol, lo.numpy(), "amin")
    zt, pcol = torch.from_numpy(z32), torch.from_numpy(col[cell])
    pccol = torch.from_numpy(ccol)[pcol]
    for s, h, l, ids in ((fine, hi, lo, pcol), (coarse, chi, clo, pccol)):
        out[f"top{s}"] = (h[ids] - zt).clamp_(*COLUMN_RANGE).numpy()
        out[f"relief{s}"] = (zt - l[ids]).clamp_(*COLUMN_RANGE).numpy()
    return {key: v for key, v in out.items() if key in names}


_SHAPE_KEYS = ("lin", "pla", "sca", "ver", "rough")


def point_features(pts, names, lut, rgb_div, voxel_size, hag=None):
    """[P, len(names)] float32 features of one window of points (a dict of arrays, see the module docstring).

    lut: intensity_lut of the points' file; rgb_div: rgb_scale of the file; hag: precomputed heights (else
    estimated from these points). The window's own points give the ground estimate, so a window must carry
    context around the points that are classified (tiles overlap).
    """
    n = pts["x"].size
    out = np.empty((n, len(names)), np.float32)
    rn = pts["return_number"].astype(np.int16)
    nr = np.maximum(pts["number_of_returns"].astype(np.int16), 1)
    missing = [nm for nm in names if nm in SHAPE_FEATURES and nm not in pts]
    shape = shape_features(pts, missing) if missing else {}
    for j, name in enumerate(names):
        if name == "hag":
            h = height_above_ground(pts["x"], pts["y"], pts["z"]) if hag is None else hag
            out[:, j] = np.clip(h, *HAG_RANGE)
        elif name == "intensity":
            out[:, j] = lut[pts["intensity"]]
        elif name == "first":
            out[:, j] = rn <= 1
        elif name == "last":
            out[:, j] = rn >= nr
        elif name == "returns":
            out[:, j] = np.minimum(nr, 5) / 5.0
        elif name == "dz":
            zv = pts["z"] / voxel_size
            out[:, j] = zv - np.floor(zv)
        elif name in SHAPE_FEATURES:
            out[:, j] = pts[name] if name in pts else shape[name]
        elif name in RGB_FEATURES:
            if name not in pts:
                raise ValueError(f"feature '{name}': the points carry no colour, but the model expects RGB")
            out[:, j] = pts[name] / rgb_div
        else:
            raise ValueError(f"feature '{name}': unknown; expected one of "
                             f"{BASE_FEATURES + SHAPE_FEATURES + RGB_FEATURES}")
    return out
