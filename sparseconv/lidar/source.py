"""Point arrays from LAS/LAZ chunks, and the per-file statistics that features are normalised with."""
import numpy as np

from ..io import read_chunks
from .features import intensity_lut, rgb_scale

FIELDS = ("x", "y", "z", "intensity", "return_number", "number_of_returns")
RGB = ("red", "green", "blue")


def has_rgb(points):
    names = set(points.point_format.dimension_names)
    return all(c in names for c in RGB)


def record_arrays(points, labels=False):
    """A laspy point record -> dict of NumPy arrays (x, y, z in metres as float64; colour when present)."""
    out = {"x": np.asarray(points.x, np.float64), "y": np.asarray(points.y, np.float64),
           "z": np.asarray(points.z, np.float64), "intensity": np.asarray(points.intensity, np.uint16),
           "return_number": np.asarray(points.return_number, np.uint8),
           "number_of_returns": np.asarray(points.number_of_returns, np.uint8)}
    if has_rgb(points):
        for c in RGB:
            out[c] = np.asarray(points[c], np.uint16)
    if labels:
        out["classification"] = np.asarray(points.classification, np.uint8)
    return out


class FileStats:
    """Accumulates what a file's features are normalised with, chunk by chunk."""

    def __init__(self):
        self.hist = np.zeros(65536, np.int64)
        self.rgb_max = 0
        self.rgb = None
        self.count = 0
        self.lo = np.full(3, np.inf)
        self.hi = np.full(3, -np.inf)

    def add(self, pts):
        self.hist += np.bincount(pts["intensity"], minlength=65536)
        rgb = "red" in pts
        self.rgb = rgb if self.rgb is None else (self.rgb and rgb)
        if rgb:
            self.rgb_max = max(self.rgb_max, *(int(pts[c].max(initial=0)) for c in RGB))
        n = pts["x"].size
        self.count += n
        if n:
            xyz = [pts[k] for k in "xyz"]
            self.lo = np.minimum(self.lo, [a.min() for a in xyz])
            self.hi = np.maximum(self.hi, [a.max() for a in xyz])

    @property
    def lut(self):
        return intensity_lut(self.hist)

    @property
    def rgb_div(self):
        return rgb_scale(self.rgb_max)


def read_points(path, labels=True):
    """The whole file as one dict of arrays, with its FileStats (training reads its tiles this way)."""
    stats, parts = FileStats(), []
    for chunk in read_chunks(path):
        pts = record_arrays(chunk, labels)
        stats.add(pts)
        parts.append(pts)
    keys = set.intersection(*(set(p) for p in parts))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k in keys}, stats
