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
* ``red``, ``green``, ``blue``: colour scaled to 0..1 (8-bit or 16-bit storage detected per file), when present.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

BASE_FEATURES = ("hag", "intensity", "first", "last", "returns", "dz")
RGB_FEATURES = ("red", "green", "blue")
HAG_RANGE = (-10.0, 80.0)


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


def ground_grid(x, y, z, cell, windows_m=(3.0, 6.0, 12.0, 24.0, 48.0), slope=0.3, dh0=0.5, dh_max=6.0):
    """Ground elevation on a grid (simplified progressive morphological filter, after Zhang et al. 2003).

    Lowest point per cell, then openings with growing windows over the cells that hold points (empty cells
    neither pull the surface down nor up): a cell that rises above its opening by more than
    dh0 + slope * window (capped at dh_max) is an object (building, tree) and takes the opened value. Empty
    cells are filled at the end, for interpolation. Returns (grid [nx, ny] float32 tensor, x0, y0) with cell
    centres at x0 + (i + 0.5) * cell.
    """
    x0, y0 = float(x.min()), float(y.min())
    ix = ((x - x0) / cell).astype(np.int64)
    iy = ((y - y0) / cell).astype(np.int64)
    nx, ny = int(ix.max()) + 1, int(iy.max()) + 1
    zt = torch.from_numpy(np.ascontiguousarray(z, np.float32))
    flat = torch.full((nx * ny,), math.inf)
    flat.scatter_reduce_(0, torch.from_numpy(ix * ny + iy), zt, "amin")
    g = flat.view(1, 1, nx, ny)
    empty = torch.isinf(g)
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
        dh = min(dh0 + slope * (k * cell - prev_w), dh_max)
        g = torch.where(~empty & (g - opened > dh), opened, g)
        prev_w = k * cell
    return _fill_empty(g)[0, 0], x0, y0


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


def feature_names(has_rgb):
    return BASE_FEATURES + (RGB_FEATURES if has_rgb else ())


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
        elif name in RGB_FEATURES:
            if name not in pts:
                raise ValueError(f"feature '{name}': the points carry no colour, but the model expects RGB")
            out[:, j] = pts[name] / rgb_div
        else:
            raise ValueError(f"feature '{name}': unknown; expected one of {BASE_FEATURES + RGB_FEATURES}")
    return out
