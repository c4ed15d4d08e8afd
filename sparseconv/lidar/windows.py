"""Tiles with overlap, and a batch of point windows turned into the network's input.

A tile grid of side `tile` metres covers the data; each tile's window adds `overlap` metres of context on every
side, so a point near a tile border is seen by up to four windows (and votes from all of them count).
"""
import math

import numpy as np
import torch

from ..voxelize import voxelize
from .features import point_features


def tile_index(v, v0, tile, n):
    return np.clip(np.floor((v - v0) / tile).astype(np.int64), 0, n - 1)


def window_members(x, y, x0, y0, tile, overlap, nx, ny):
    """(rows, tile ids) of every (point, window) pair: tile (i, j) has id i * ny + j and its window spans
    [x0 + i * tile - overlap, x0 + (i + 1) * tile + overlap) in x (likewise y). Sorted by tile id."""
    ix, iy = tile_index(x, x0, tile, nx), tile_index(y, y0, tile, ny)
    fx, fy = x - (x0 + ix * tile), y - (y0 + iy * tile)  # position inside the core tile
    rows, ids = [], []
    for di in (-1, 0, 1):
        inx = (fx < overlap) if di < 0 else (fx >= tile - overlap) if di > 0 else np.ones(x.size, bool)
        inx &= (ix + di >= 0) & (ix + di < nx)
        for dj in (-1, 0, 1):
            iny = (fy < overlap) if dj < 0 else (fy >= tile - overlap) if dj > 0 else np.ones(y.size, bool)
            sel = np.flatnonzero(inx & iny & (iy + dj >= 0) & (iy + dj < ny))
            rows.append(sel)
            ids.append((ix[sel] + di) * ny + (iy[sel] + dj))
    rows, ids = np.concatenate(rows), np.concatenate(ids)
    order = np.argsort(ids, kind="stable")
    return rows[order], ids[order]


def split_by_id(rows, ids):
    """[(id, rows of that id)] for ids sorted ascending."""
    if ids.size == 0:
        return []
    cut = np.flatnonzero(np.diff(ids)) + 1
    starts = np.concatenate([[0], cut])
    return [(int(ids[s]), r) for s, r in zip(starts, np.split(rows, cut))]


def grid_shape(xmin, ymin, xmax, ymax, tile):
    return max(1, math.ceil((xmax - xmin) / tile + 1e-9)), max(1, math.ceil((ymax - ymin) / tile + 1e-9))


# Grid extent at least this per axis: each of the U-Net's stride-2 levels needs 2 cells of extent (a flat field
# is one voxel high, a narrow edge strip one voxel wide); the padding is empty, it costs nothing.
MIN_EXTENT = 64


def make_batch(windows, names, voxel_size):
    """windows: list of (pts, hag, lut, rgb_div) with pts a dict of arrays (one window each) -> the model's
    inputs (feats [P, F], p2v [P], coords [V, 4], spatial_shape, batch_size); rows follow the windows' order."""
    feats, p2v, coords = [], [], []
    n_vox, shape = 0, np.full(3, MIN_EXTENT, np.int64)
    for b, (pts, hag, lut, rgb_div) in enumerate(windows):
        xyz = np.stack([pts["x"], pts["y"], pts["z"]], 1)
        lo = np.floor(xyz.min(0) / voxel_size) * voxel_size
        # Coordinates relative to the window in float64 first: projected metres lose centimetres in float32.
        st, idx = voxelize(torch.from_numpy(xyz - lo).float(), None, voxel_size, (0.0, 0.0, 0.0))
        c = st.coords
        c[:, 0] = b
        shape = np.maximum(shape, np.asarray(st.spatial_shape))
        feats.append(torch.from_numpy(point_features(pts, names, lut, rgb_div, voxel_size, hag)))
        p2v.append(idx + n_vox)
        coords.append(c)
        n_vox += c.shape[0]
    return (torch.cat(feats), torch.cat(p2v), torch.cat(coords), tuple(int(s) for s in shape), len(windows))
