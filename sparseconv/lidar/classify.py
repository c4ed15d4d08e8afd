"""Streaming classification of a LAS/LAZ file in bounded memory.

Three passes, none of which holds the whole file:

1. read in chunks: per-file statistics (intensity ranks, colour depth) and a spill of every point into the
   block of tiles it belongs to (plus the neighbouring blocks whose windows need it as context), on disk;
2. per block: ground estimate, tiles with overlap through the network in batches, softmax scores summed over
   every window that covers a point (its own block's windows), the winning class written to an on-disk label
   array at the point's position in the file;
3. read again in chunks and write the classified copy (io.write_classified: temporary file, then rename).

Peak memory is set by the block size (about `block_points` points) and the batch, not by the file.
"""
import math
import os
import tempfile
import time

import numpy as np
import torch

from ..io import LasError, read_chunks, write_classified
from ..io.las import _open
from .decide import decide
from .features import height_above_ground, shape_features
from .source import RGB, FileStats, record_arrays
from .windows import grid_shape, make_batch, split_by_id, tile_index, window_members

_BASE_DTYPE = [("row", "<i8"), ("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("intensity", "<u2"),
               ("return_number", "u1"), ("number_of_returns", "u1")]


def _bar(total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="pt", unit_scale=True, leave=False)


class _Spill:
    """Per-block files of point records (appended chunk by chunk)."""

    def __init__(self, folder, dtype):
        self.folder, self.dtype, self.counts = folder, dtype, {}

    def path(self, block):
        return os.path.join(self.folder, f"block_{block}.bin")

    def append(self, block, records):
        with open(self.path(block), "ab") as f:
            records.tofile(f)
        self.counts[block] = self.counts.get(block, 0) + records.size

    def load(self, block):
        return np.fromfile(self.path(block), self.dtype)


def _record(pts, rows, dtype):
    rec = np.empty(rows.size, dtype)
    rec["row"] = rows
    for name in dtype.names[1:]:
        rec[name] = pts[name]
    return rec


@torch.no_grad()
def _predict(model, batch, device):
    feats, p2v, coords, shape, nb = batch
    logits = model(feats.to(device), p2v.to(device), coords.to(device), shape, nb)
    return torch.softmax(logits.float(), 1).cpu()


def _in_square(ti, tj, square):
    x, y, side = square
    return (ti >= x) & (ti < x + side) & (tj >= y) & (tj < y + side)


def _classify_part(pts, rows, part, block, model, labels, codes, lo, tile, overlap, grid, batch_points, names,
                   voxel, lut, rgb_div, device):
    """Labels the points whose tile lies in `part` (a square of tiles inside `block`, both (first tile x,
    first tile y, side)); pts holds them plus every point within the overlap around the part, rows their
    rows in the file. Scores of every window covering a point are summed. Returns the points labelled."""
    ntx, nty = grid
    # The ground estimate sees the part and its margin: the same context the windows get.
    hag = height_above_ground(pts["x"], pts["y"], pts["z"])
    pts = {**pts, **shape_features(pts, names)}  # once per part, like the ground; the windows slice them
    win, ids = window_members(pts["x"], pts["y"], lo[0], lo[1], tile, overlap, ntx, nty)
    wi, wj = ids // nty, ids % nty
    mine = _in_square(wi, wj, block)
    if part != block:
        mine &= _in_square(wi, wj, part)
    score = torch.zeros(rows.size, codes.size)
    pending, pending_rows, n_pending = [], [], 0
    groups = split_by_id(win[mine], ids[mine])
    for g, (_, r) in enumerate(groups):
        pending.append(({name: v[r] for name, v in pts.items()}, hag[r], lut, rgb_div))
        pending_rows.append(r)
        n_pending += r.size
        if n_pending >= batch_points or g == len(groups) - 1:
            prob = _predict(model, make_batch(pending, names, voxel), device)
            score.index_add_(0, torch.from_numpy(np.concatenate(pending_rows)), prob)
            pending, pending_rows, n_pending = [], [], 0
    ti, tj = tile_index(pts["x"], lo[0], tile, ntx), tile_index(pts["y"], lo[1], tile, nty)
    own = _in_square(ti, tj, block)
    if part != block:
        own &= _in_square(ti, tj, part)
    labels[rows[own]] = decide(score[torch.from_numpy(own)], codes)
    return int(own.sum())


def classify_file(src, dst, model, config, overwrite=False, device="cpu", batch_points=300_000,
                  block_points=2_000_000, chunk_size=1_000_000, progress=True, tmp_dir=None, tile_size=128.0):
    """Classifies src into dst (LAS or LAZ by extension). Returns a dict: points, seconds per phase, class
    histogram written, parts (how many pieces ran through pass 2: one per block unless points cluster).

    tile_size: inference tiles in metres (None: the training tile). The network is convolutional, so larger
    tiles than in training only add context, and the overlap (config["overlap"] on every side) costs less."""
    src_abs, dst_abs = os.path.abspath(src), os.path.abspath(dst)
    if src_abs == dst_abs:
        raise LasError(f"{dst}: is the input file; choose another output")
    if os.path.exists(dst) and not overwrite:
        raise LasError(f"{dst}: exists; pass --overwrite to replace it")
    if not os.path.isdir(os.path.dirname(dst_abs)):
        raise LasError(f"{dst}: folder {os.path.dirname(dst_abs)} does not exist")
    with _open(src) as reader:
        h = reader.header
        n_total = int(h.point_count)
        lo, hi = np.asarray(h.mins, np.float64), np.asarray(h.maxs, np.float64)
        has_rgb = all(c in set(h.point_format.dimension_names) for c in RGB)
    names, codes = list(config["features"]), np.asarray(config["classes"], np.int64)
    tile = float(tile_size or config["tile_size"])
    overlap, voxel = float(config["overlap"]), float(config["voxel_size"])
    if not tile > 2 * overlap:
        raise ValueError(f"tile_size: expected more than twice the overlap ({2 * overlap} m), got {tile}")
    if any(c in names for c in RGB) and not has_rgb:
        raise LasError(f"{src}: the model uses colour (RGB) but the file's point format "
                       f"{h.point_format.id} has none")
    model = model.to(device).eval()
    # Blocks are whole numbers of tiles holding about block_points points at the file's mean density.
    area = max((hi[0] - lo[0]) * (hi[1] - lo[1]), 1.0)
    k = max(1, int(math.sqrt(block_points * area / max(n_total, 1)) / tile))
    block = k * tile
    nbx, nby = grid_shape(lo[0], lo[1], hi[0], hi[1], block)
    ntx, nty = nbx * k, nby * k
    dtype = np.dtype(_BASE_DTYPE + ([(c, "<u2") for c in RGB] if has_rgb else []))
    times, t0 = {}, time.perf_counter()
    with tempfile.TemporaryDirectory(dir=tmp_dir or os.path.dirname(dst_abs), prefix=".sparseconv-") as tmp:
        spill, stats = _Spill(tmp, dtype), FileStats()
        bar, start = _bar(n_total, "read", progress), 0
        for chunk in read_chunks(src, chunk_size):
            pts = record_arrays(chunk)
            stats.add(pts)
            rows, blocks = window_members(pts["x"], pts["y"], lo[0], lo[1], block, overlap, nbx, nby)
            for b, r in split_by_id(rows, blocks):
                spill.append(b, _record({k_: v[r] for k_, v in pts.items()}, r + start, dtype))
            start += pts["x"].size
            if bar:
                bar.update(pts["x"].size)
        if bar:
            bar.close()
        times["read"] = time.perf_counter() - t0
        lut, rgb_div = stats.lut, stats.rgb_div
        labels = np.lib.format.open_memmap(os.path.join(tmp, "labels.npy"), "w+", np.uint8, (n_total,))
        t1, bar = time.perf_counter(), _bar(n_total, "classify", progress)
        n_run = 0
        for b in sorted(spill.counts):
            rec = spill.load(b)
            pts = {name: rec[name] for name in dtype.names[1:]}
            bi, bj = divmod(b, nby)
            # Where points cluster, a block holds more than planned (the plan assumed the bounding box's mean
            # density). It then runs as parts of s x s tiles, s set by its densest tile so that a part holds
            # about block_points points: memory stays bounded. Otherwise the block is one part (s == k).
            s = k
            if rec.size > 2 * block_points:
                ti = tile_index(pts["x"], lo[0], tile, ntx) - bi * k
                tj = tile_index(pts["y"], lo[1], tile, nty) - bj * k
                inb = (ti >= 0) & (ti < k) & (tj >= 0) & (tj < k)
                densest = np.bincount(ti[inb] * k + tj[inb], minlength=k * k).max()
                s = max(1, min(k, int(math.sqrt(block_points / max(densest, 1)))))
            n_parts = -(-k // s)
            if s == k:
                parts = [(0, None)]  # the whole block
            else:  # each part's points and those within the overlap around it: all its windows need
                parts = split_by_id(*window_members(pts["x"], pts["y"], lo[0] + bi * k * tile, lo[1] + bj * k * tile,
                                                    s * tile, overlap, n_parts, n_parts))
            n_run += len(parts)
            for pid, sel in parts:
                part = (bi * k + (pid // n_parts) * s, bj * k + (pid % n_parts) * s, s)  # first tile x, y; side
                sub = pts if sel is None else {n_: v[sel] for n_, v in pts.items()}
                rows = rec["row"] if sel is None else rec["row"][sel]
                done = _classify_part(sub, rows, part, (bi * k, bj * k, k), model, labels, codes, lo,
                                      tile, overlap, (ntx, nty), batch_points, names, voxel, lut, rgb_div, device)
                if bar:
                    bar.update(done)
        if bar:
            bar.close()
        times["classify"] = time.perf_counter() - t1
        t2, done = time.perf_counter(), [0]

        def take(points):
            n = len(points)
            out = labels[done[0]:done[0] + n]
            done[0] += n
            return out

        histogram = write_classified(src, dst, take, overwrite=overwrite, chunk_size=chunk_size)
        times["write"] = time.perf_counter() - t2
        del labels
    times["total"] = time.perf_counter() - t0
    return {"points": n_total, "seconds": times, "classes": histogram, "parts": n_run}
