"""Pass 1 of classify: every point of a file spilled to disk into the block of tiles it belongs to, plus the
neighbouring blocks whose windows need it as context; pass 2 loads one block at a time."""
import math
import os

import numpy as np

from .source import RGB
from .windows import grid_shape, split_by_id, window_members

_BASE_DTYPE = [("row", "<i8"), ("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("intensity", "<u2"),
               ("return_number", "u1"), ("number_of_returns", "u1")]


class BlockPlan:
    """Blocks are whole numbers (k x k) of tiles holding about block_points points at the file's mean density
    (the bounding box's: where points cluster, a block holds more and runs in parts, see classify)."""

    def __init__(self, lo, hi, n_points, tile, overlap, block_points):
        self.lo, self.tile, self.overlap = lo, tile, overlap
        area = max((hi[0] - lo[0]) * (hi[1] - lo[1]), 1.0)
        self.k = max(1, int(math.sqrt(block_points * area / max(n_points, 1)) / tile))
        self.block = self.k * tile
        self.nbx, self.nby = grid_shape(lo[0], lo[1], hi[0], hi[1], self.block)
        self.ntx, self.nty = self.nbx * self.k, self.nby * self.k


class Spill:
    """Per-block files of point records (row in the file, x, y, z, intensity, returns, colour), appended chunk
    by chunk in file order."""

    def __init__(self, folder, plan, has_rgb):
        self.folder, self.plan, self.counts = folder, plan, {}
        self.dtype = np.dtype(_BASE_DTYPE + ([(c, "<u2") for c in RGB] if has_rgb else []))

    def path(self, block):
        return os.path.join(self.folder, f"block_{block}.bin")

    def split(self, pts, start):
        """A chunk's records per block: [(block, records)]. pts: the chunk's dict of arrays
        (source.record_arrays), its first row in the file at start. Thread-safe."""
        p, out = self.plan, []
        rows, blocks = window_members(pts["x"], pts["y"], p.lo[0], p.lo[1], p.block, p.overlap, p.nbx, p.nby)
        for b, r in split_by_id(rows, blocks):
            rec = np.empty(r.size, self.dtype)
            rec["row"] = r + start
            for name in self.dtype.names[1:]:
                rec[name] = pts[name][r]
            out.append((b, rec))
        return out

    def append(self, blocks):
        """split()'s output onto the block files (chunks in file order: the order the blocks' points load in)."""
        for b, rec in blocks:
            with open(self.path(b), "ab") as f:
                rec.tofile(f)
            self.counts[b] = self.counts.get(b, 0) + rec.size

    def load(self, block):
        return np.fromfile(self.path(block), self.dtype)

    def remove(self):
        for b in self.counts:
            os.remove(self.path(b))
        self.counts = {}
