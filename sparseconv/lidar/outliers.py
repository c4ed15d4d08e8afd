"""Low outliers: returns far below the terrain (multipath, IGN's artefact code 65), found before the network.

A few points tens of metres under a flat field are not terrain, but to a network that reads context they look
like the ground beside a roof: a model fine-tuned on generated tiles, where such points are rare, called 4,750
ground points of a real IGN tile "building" because of about 190 artefacts below its edge. Practitioners remove them
first (PDAL's outlier filter before a ground filter; the CSF baseline in examples/evaluate_pretrained.py does the
same with this function); `classify` labels them 7 (low point) and keeps them out of the network's windows.
"""
import numpy as np

from .features import height_above_ground

LOW_POINT = 7  # ASPRS "low point (noise)"
LOW_OUTLIER_CELL = 10.0  # metres: the column whose median height a point is compared with
LOW_OUTLIER_MIN_DEPTH = 10.0  # metres below that median, at least (and 2 IQR): terraces and ditches stay


def low_outliers(x, y, z, hag=None, cell=LOW_OUTLIER_CELL, min_depth=LOW_OUTLIER_MIN_DEPTH):
    """[P] bool: points far below their cell's median height, z < median - max(min_depth, 2 IQR) (2 IQR is
    4 MAD for a normal spread), and also min_depth below the ground estimate (hag: features.
    height_above_ground of these points, computed when None). The median alone would flag the ground under
    a tall forest, whose cells hold mostly crown returns; the ground estimate follows the lowest points but
    closes one-cell pits, so isolated returns under the terrain stay below it. One sort of (cell, centimetre
    height) packed into int64, only when some point lies min_depth under the ground estimate."""
    if x.size == 0:
        return np.zeros(0, bool)
    if hag is None:
        hag = height_above_ground(x, y, z)
    deep = hag < -min_depth
    if not deep.any():  # most parts: no point that deep, no sort
        return deep
    ix = np.floor((x - x.min()) / cell).astype(np.int64)
    iy = np.floor((y - y.min()) / cell).astype(np.int64)
    key = ix * (int(iy.max()) + 1) + iy
    zq = np.round((z - z.min()) * 100.0).astype(np.int64)
    if int(zq.max()) >= 1 << 31 or int(key.max()) >= 1 << 31:
        raise ValueError(f"points: a part spans {float(z.max() - z.min()):.0f} m in height or "
                         f"{int(key.max()) + 1} cells of {cell} m; expected a tile or a block")
    s = np.sort((key << 31) | zq)
    ks, zs = s >> 31, s & ((1 << 31) - 1)
    start = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    count = np.diff(np.r_[start, s.size])
    med = zs[start + count // 2]
    iqr = zs[start + (3 * count) // 4] - zs[start + count // 4]
    limit = med - np.maximum(min_depth * 100.0, 2.0 * iqr)
    return (zq < limit[np.searchsorted(ks[start], key)]) & deep
