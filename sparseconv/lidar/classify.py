"""Streaming classification of LAS/LAZ files in bounded memory, on every core, several files overlapped.

Per file, three passes, none of which holds the whole file:

1. read: the file is decoded once (io.raw.Decoder: its records to a raw file on disk) and read back in chunks:
   per-file statistics (intensity ranks, colour depth) and a spill of every point into its block of tiles and
   the neighbouring blocks that need it as context (spill.py), chunks sorted out on the worker threads;
2. classify, per block: ground estimate, tiles with overlap through the network in batches on worker threads
   (runner.OrderedRunner; the next block is prepared meanwhile), softmax scores summed in batch order over
   every window that covers a point, the winning class written to an on-disk label array at the point's row;
3. write: io.raw.Encoder writes the classified copy from the raw records and the labels (temporary file, then
   rename).

LAZ is decoded and encoded here, with lazrs on every thread, while nothing else runs; beside other work it runs
in a child process (lazrs holds the GIL): over several files (classify_files) the next file is decoded while
this one's network runs, and this one is encoded while the next is read and classified; `sparseconv classify`
on 2+ threads starts decoding its first file in a child before it imports torch (first=, sparseconv/_early.py),
so that decoding overlaps the command's start-up. The labels do not depend on the threads: same bytes out. Peak
memory is set by the block size (about `block_points` points), the batch and the workers, not by the file.
"""
import ctypes
import math
import os
import tempfile
import time
from collections import deque
from functools import partial

import numpy as np
import torch

from ..io import LasError, is_open3d_file, open3d_to_las
from ..io.atomic import claim, temporary_name
from ..io.las import _open, max_class_code
from ..io.raw import Children, Decoder, Encoder, read_records
from .decide import decide
from .features import height_above_ground, shape_features
from .outliers import LOW_POINT, low_outliers
from .runner import OrderedRunner
from .source import RGB, FileStats, record_arrays
from .spill import BlockPlan, Spill
from .windows import make_batch, split_by_id, tile_index, window_members

# Points per forward. Which windows share a batch shows in the float rounding (the kernels' sizes and paths
# follow the batch): other batch sizes move a few labels (115 of 1.2M points at 1.5M), so the default stays
# the same on every device and thread count.
BATCH_POINTS = 300_000
MAX_WORKERS = 4  # worker threads on a CPU: beyond this, more torch threads per worker (memory per batch)


def _glibc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: its default allocator behaviour, nothing to tune
        return None


_LIBC = _glibc()


def _share_arenas():
    """glibc gives each thread that allocates its own arena and keeps what is freed there for reuse by that
    thread only: with batches on worker threads the RSS crept to 1.62 GB on a 5M-point file whose live arrays
    stay near 1 GB. Two arenas for the whole process, set once (new threads only; no measurable cost)."""
    if _LIBC is not None:
        _LIBC.mallopt(-8, 2)  # M_ARENA_MAX


def _trim():
    """Hands the pages freed with a part back to the system (glibc keeps them otherwise; a few ms)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _bar(total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="pt", unit_scale=True, leave=False)


@torch.no_grad()
def _predict(model, batch, device):
    feats, p2v, coords, shape, nb = batch
    logits = model(feats.to(device), p2v.to(device), coords.to(device), shape, nb)
    return torch.softmax(logits.float(), 1).cpu()


def _in_square(ti, tj, square):
    x, y, side = square
    return (ti >= x) & (ti < x + side) & (tj >= y) & (tj < y + side)


def workers_for(threads, device):
    """(network worker threads, torch threads each): none with one thread (all on the calling thread); on a
    GPU two, so that one prepares a batch (features, voxels on the CPU) while the other's runs."""
    if threads <= 1:
        return 0, 1
    workers = min(threads, MAX_WORKERS) if torch.device(device).type == "cpu" else 2
    return workers, max(1, threads // workers)


class _Part:
    """A square of tiles inside a block (both (first tile x, first tile y, side)) and every point within the
    overlap around it (pts, their rows in the file): its windows in batches, scores summed over every window
    covering a point (its own block's windows), labels for the points whose tile lies in the part."""

    def __init__(self, pts, rows, part, block, plan, batch_points, codes, names):
        ntx, nty = plan.ntx, plan.nty
        lo, tile = plan.lo, plan.tile
        # The ground estimate sees the part and its margin: the same context the windows get.
        self.hag = height_above_ground(pts["x"], pts["y"], pts["z"])
        # Low outliers (outliers.py) are labelled 7 and kept out of the windows when the model knows code 7 (a
        # model trained on other classes sees every point, as it was trained). The ground estimate needs no
        # second run without them: they lie 10 m or more below it (append-bug.laz: ground IoU within 0.001).
        self.low = np.zeros(rows.size, bool)
        if LOW_POINT in codes:
            self.low = low_outliers(pts["x"], pts["y"], pts["z"], self.hag)
        kept = ~self.low
        # Shape features once per part, like the ground (nothing for a model without them); windows slice them.
        self.pts, self.rows = {**pts, **shape_features(pts, names)}, rows
        win, ids = window_members(pts["x"], pts["y"], lo[0], lo[1], tile, plan.overlap, ntx, nty)
        wi, wj = ids // nty, ids % nty
        mine = _in_square(wi, wj, block) & kept[win]
        if part != block:
            mine &= _in_square(wi, wj, part)
        self.batches, pending, n_pending = [], [], 0
        groups = split_by_id(win[mine], ids[mine])
        for g, (_, r) in enumerate(groups):
            pending.append(r)
            n_pending += r.size
            if n_pending >= batch_points or g == len(groups) - 1:
                self.batches.append(pending)
                pending, n_pending = [], 0
        ti, tj = tile_index(pts["x"], lo[0], tile, ntx), tile_index(pts["y"], lo[1], tile, nty)
        self.own = _in_square(ti, tj, block)
        if part != block:
            self.own &= _in_square(ti, tj, part)
        self.score = torch.zeros(rows.size, len(codes))
        self.futures = []

    def submit(self, runner, model, device, names, voxel, lut, rgb_div):
        for windows in self.batches:
            compute = partial(self._compute, windows, model, device, names, voxel, lut, rgb_div)
            self.futures.append(runner.submit(compute, partial(self._commit, windows)))

    def _compute(self, windows, model, device, names, voxel, lut, rgb_div):
        # The windows' copies of their points are dropped before the forward (memory per worker).
        inputs = make_batch([({n: v[r] for n, v in self.pts.items()}, self.hag[r], lut, rgb_div) for r in windows],
                            names, voxel)
        return _predict(model, inputs, device)

    def _commit(self, windows, prob):
        self.score.index_add_(0, torch.from_numpy(np.concatenate(windows)), prob)

    def finish(self, labels, codes, roof_check=True):
        """Waits for the batches, writes the labels of the part's own points; returns their codes."""
        for f in self.futures:
            f.result()
        if roof_check:  # patches need their context: decided over the margin too, then the own points kept
            xyz = (self.pts["x"], self.pts["y"], self.pts["z"])
            out = decide(self.score, codes, xyz=xyz)[self.own]
        else:
            out = decide(self.score[torch.from_numpy(self.own)], codes)
        out[self.low[self.own]] = LOW_POINT
        labels[self.rows[self.own]] = out
        return out


class _File:
    """One input through the three passes; close() undoes whatever is left (child processes, temporary files).

    children: a raw.Children to decode in (the file is decoded ahead, beside another file's network), or None:
    decoded here when read, nothing else running (lazrs on every thread). early: a raw.EarlyDecode of this file
    (its decoding began before torch was imported): its folder and child are taken over, the child goes back to
    children after the read."""

    def __init__(self, src, dst, config, opts, children=None, early=None):
        src_abs, dst_abs = os.path.abspath(src), os.path.abspath(dst)
        if src_abs == dst_abs:
            raise LasError(f"{dst}: is the input file; choose another output")
        if os.path.exists(dst) and not opts["overwrite"]:
            raise LasError(f"{dst}: exists; pass --overwrite to replace it")
        if not os.path.isdir(os.path.dirname(dst_abs)):
            raise LasError(f"{dst}: folder {os.path.dirname(dst_abs)} does not exist")
        self.t0, self.times, self.opts = time.perf_counter(), {}, opts
        self.input = self.src = src
        self.dst, self.children, self.reader, self.writer, self.out_tmp = dst, children, None, None, None
        if early is not None:
            self.tmp, self.reader, self.decoder = early.take()
        else:
            self.tmp = tempfile.TemporaryDirectory(dir=opts["tmp_dir"] or os.path.dirname(dst_abs),
                                                   prefix=".sparseconv-")
        try:
            if is_open3d_file(src):  # PLY/PCD/XYZ/PTS: through a LAS copy
                self.src = open3d_to_las(src, self._path("input.las"))
            self._plan(config)
            if early is None:
                self.reader = children.take() if children is not None else None
                self.decoder = Decoder(self.src, self._path("points.raw"), opts["chunk_size"], self.reader,
                                       parallel=opts["threads"] > 1)
        except BaseException:
            self.close()
            raise

    def _path(self, name):
        return os.path.join(self.tmp.name, name)

    def _plan(self, config):
        with _open(self.src) as reader:
            h = self.header = reader.header
        self.n = int(h.point_count)
        lo, hi = np.asarray(h.mins, np.float64), np.asarray(h.maxs, np.float64)
        self.has_rgb = all(c in set(h.point_format.dimension_names) for c in RGB)
        tile = float(self.opts["tile_size"] or config["tile_size"])
        overlap = float(config["overlap"])
        if not tile > 2 * overlap:
            raise ValueError(f"tile_size: expected more than twice the overlap ({2 * overlap} m), got {tile}")
        if any(c in config["features"] for c in RGB) and not self.has_rgb:
            raise LasError(f"{self.src}: the model uses colour (RGB) but the file's point format "
                           f"{h.point_format.id} has none")
        self.plan = BlockPlan(lo, hi, self.n, tile, overlap, self.opts["block_points"])

    def read(self, runner):
        """Pass 1: the decoded records, chunk by chunk, into statistics and the block spill. A chunk's blocks are
        sorted out on a worker; statistics and block files take the chunks in file order."""
        t0 = time.perf_counter()
        self.spill, self.stats = Spill(self.tmp.name, self.plan, self.has_rgb), FileStats()
        bar, start, pending = _bar(self.n, "read", self.opts["progress"]), 0, deque()

        keep, self.kept = self.opts["keep"], []

        def sort_out(points, start):
            pts = record_arrays(points)
            kept = None
            if keep.size:
                codes = np.asarray(points.classification)
                rows = np.flatnonzero(np.isin(codes, keep))
                kept = (rows + start, codes[rows]) if rows.size else None
            return pts, self.spill.split(pts, start), kept

        def store(out):
            self.stats.add(out[0])
            self.spill.append(out[1])
            if out[2] is not None:
                self.kept.append(out[2])
            if bar:
                bar.update(out[0]["x"].size)

        with open(self._path("points.raw"), "rb") as f:
            for done in self.decoder.counts():  # chunk_size points each (the spill's order depends on it)
                pending.append(runner.submit(partial(sort_out, read_records(f, self.header, done - start), start),
                                             store))
                while len(pending) > max(runner.workers, 1):  # bounded: a chunk in memory per worker
                    pending.popleft().result()
                start = done
        while pending:
            pending.popleft().result()
        if start != self.n:  # decode() raises on a short file; this guards the hand-over itself
            raise LasError(f"{self.src}: {start} of {self.n} points decoded")
        if bar:
            bar.close()
        if self.reader is not None:
            self.children.give(self.reader)
            self.reader = None
        self.times["read"] = time.perf_counter() - t0

    def _parts(self, batch_points, codes, names):
        """The spilled blocks as parts in file order: for each, its points loaded and a function preparing it."""
        plan, k = self.plan, self.plan.k
        for b in sorted(self.spill.counts):
            rec = self.spill.load(b)
            pts = {name: rec[name] for name in self.spill.dtype.names[1:]}
            bi, bj = divmod(b, plan.nby)
            # Where points cluster, a block holds more than planned (the plan assumed the bounding box's mean
            # density). It then runs as parts of s x s tiles, s set by its densest tile so that a part holds
            # about block_points points: memory stays bounded. Otherwise the block is one part (s == k).
            s, block_points = k, self.opts["block_points"]
            if rec.size > 2 * block_points:
                ti = tile_index(pts["x"], plan.lo[0], plan.tile, plan.ntx) - bi * k
                tj = tile_index(pts["y"], plan.lo[1], plan.tile, plan.nty) - bj * k
                inb = (ti >= 0) & (ti < k) & (tj >= 0) & (tj < k)
                densest = np.bincount(ti[inb] * k + tj[inb], minlength=k * k).max()
                s = max(1, min(k, int(math.sqrt(block_points / max(densest, 1)))))
            n_parts = -(-k // s)
            if s == k:
                parts = [(0, None)]  # the whole block
            else:  # each part's points and those within the overlap around it: all its windows need
                parts = split_by_id(*window_members(pts["x"], pts["y"], plan.lo[0] + bi * k * plan.tile,
                                                    plan.lo[1] + bj * k * plan.tile, s * plan.tile, plan.overlap,
                                                    n_parts, n_parts))
            self.n_parts += len(parts)
            for pid, sel in parts:
                part = (bi * k + (pid // n_parts) * s, bj * k + (pid % n_parts) * s, s)  # first tile x, y; side
                sub = pts if sel is None else {n_: v[sel] for n_, v in pts.items()}
                rows = rec["row"] if sel is None else rec["row"][sel]
                yield partial(_Part, sub, rows, part, (bi * k, bj * k, k), plan, batch_points, codes, names)

    def classify(self, runner, model, config, device, children=None):
        """Pass 2: labels of every point into labels.npy. Part p + 1 is prepared while p's batches run.

        children: where to encode (the next file runs meanwhile), taken now so that its process has started
        when the labels are ready; None: encoded here, nothing else running."""
        t0, o = time.perf_counter(), self.opts
        if children is not None:
            self.children, self.writer = children, children.take()
        names, codes = list(config["features"]), np.asarray(config["classes"], np.int64)
        voxel, lut, rgb_div = float(config["voxel_size"]), self.stats.lut, self.stats.rgb_div
        labels = np.lib.format.open_memmap(self._path("labels.npy"), "w+", np.uint8, (self.n,))
        counts, running, self.n_parts = np.zeros(256, np.int64), deque(), 0
        bar = _bar(self.n, "classify", o["progress"])

        def finish(part):
            out = part.finish(labels, codes, o["roof_check"])
            counts[:] += np.bincount(out, minlength=256)
            if bar:
                bar.update(out.size)

        parts, second = self._parts(o["batch_points"], codes, names), None
        while True:
            with runner.beside():  # preparing the next part, while the batches before it run
                if second is not None:
                    part, second = second.result(), None
                else:
                    prepare = next(parts, None)
                    if prepare is not None and not running and runner.workers > 1:
                        # No batch runs beside the first part: the second is prepared meanwhile on another thread.
                        after = next(parts, None)
                        second = runner.aside(after) if after is not None else None
                    part = prepare() if prepare is not None else None
            if part is None:
                break
            part.submit(runner, model, device, names, voxel, lut, rgb_div)
            running.append(part)
            if len(running) > 1:
                finish(running.popleft())
                _trim()  # the part just finished is gone
        while running:
            finish(running.popleft())
        if bar:
            bar.close()
        for rows, kept in self.kept:  # codes kept from the input replace the network's
            counts[:] -= np.bincount(labels[rows], minlength=256)
            labels[rows] = kept
            counts[:] += np.bincount(kept, minlength=256)
        labels.flush()  # the encoder reads it
        self.spill.remove()
        self.counts = counts
        present = np.flatnonzero(counts)
        max_code, fmt = max_class_code(self.header.point_format.id), self.header.point_format.id
        if present.size and present.max() > max_code:
            raise LasError(f"{self.dst}: class codes must lie in [0, {max_code}] for point format {fmt}, "
                           f"got [{present.min()}, {present.max()}]")
        self.times["classify"] = time.perf_counter() - t0

    def start_write(self):
        """Pass 3 begins: the classified copy is encoded into a temporary file beside dst."""
        self.out_tmp = temporary_name(self.dst)  # stored before claim() creates it: close() removes it
        claim(self.out_tmp)
        self.encoder = Encoder(self.src, self._path("points.raw"), self._path("labels.npy"), self.out_tmp,
                               self.opts["chunk_size"], self.writer, parallel=self.opts["threads"] > 1)

    def finish(self):
        """Waits for the encoder, renames the output into place; returns (input, dst, result)."""
        try:
            self.times["write"] = self.encoder.wait()
            os.replace(self.out_tmp, os.path.abspath(self.dst))
            if self.writer is not None:
                self.children.give(self.writer)
                self.writer = None
        finally:
            self.close()
        self.times["total"] = time.perf_counter() - self.t0
        classes = {int(c): int(n) for c, n in enumerate(self.counts) if n}
        return self.input, self.dst, {"points": self.n, "seconds": self.times, "classes": classes,
                                      "parts": self.n_parts}

    def close(self):
        """Idempotent."""
        for child in (self.reader, self.writer):
            if child is not None:
                child.close()
        self.reader = self.writer = None
        if self.out_tmp and os.path.exists(self.out_tmp):
            os.remove(self.out_tmp)
        self.tmp.cleanup()


def classify_files(jobs, model, config, overwrite=False, device="cpu", batch_points=BATCH_POINTS,
                   block_points=2_000_000, chunk_size=1_000_000, progress=True, tmp_dir=None, tile_size=128.0,
                   threads=None, first=None, keep_classes=(12,), roof_check=True):
    """Classifies each (src, dst) of jobs (LAS or LAZ by dst's extension; PLY/PCD/XYZ/PTS inputs through Open3D);
    yields (src, dst, result) in order as each output is complete. result: points, seconds per phase, class
    histogram written, parts (how many pieces ran through pass 2: one per block unless points cluster).

    threads: cores to use (default torch's thread count); 1 runs everything on the calling thread.
    batch_points: points per forward; another value than the default moves a few labels (float rounding), a
    larger one may run faster on a GPU.
    tile_size: inference tiles in metres (None: the training tile). The network is convolutional, so larger
    tiles than in training only add context, and the overlap (config["overlap"] on every side) costs less.
    keep_classes: input codes written back unchanged (the network still sees those points as context): by
    default 12, overlap points (LAS formats 0-5), a flight-line designation no point's surroundings reveal; ()
    relabels every point.
    roof_check: building patches too rough for a roof become vegetation (roofs.py); False: the network's labels.
    first: a raw.EarlyDecode of jobs[0] already decoding (`sparseconv classify` starts it before importing torch),
    used with 2+ threads when it is that file's, with the same chunk_size and temporary folder; else ended here.
    A failing file raises after the outputs of the files before it are complete."""
    jobs = list(jobs)
    if isinstance(keep_classes, (str, bytes)) or not all(isinstance(c, (int, np.integer)) and 0 <= c <= 255
                                                         for c in keep_classes):
        raise ValueError(f"keep_classes: expected class codes in [0, 255], got {keep_classes!r}")
    keep = np.unique(np.asarray(list(keep_classes), np.int64))
    threads = max(1, int(threads or torch.get_num_threads()))
    if first is not None and not (threads > 1 and jobs and not is_open3d_file(jobs[0][0])
                                  and first.matches(*jobs[0], chunk_size, tmp_dir)):
        first.close()  # one thread: decoded here, one step after another, as without it
        first = None
    opts = {"overwrite": overwrite, "batch_points": batch_points, "block_points": block_points,
            "chunk_size": chunk_size, "progress": progress, "tmp_dir": tmp_dir, "tile_size": tile_size,
            "threads": threads, "keep": keep.astype(np.uint8), "roof_check": bool(roof_check)}
    model = model.to(device).eval()
    _share_arenas()
    runner = OrderedRunner(*workers_for(threads, device))
    # Codec processes for decoding and encoding beside other work; one thread: everything here, one after another.
    children = Children(threads) if threads > 1 else None
    writing = ahead = None  # the file being encoded; the next one, decoding ahead (or the error it raised)
    try:
        for i, (src, dst) in enumerate(jobs):
            try:
                if isinstance(ahead, Exception):
                    raise ahead
                if first is not None:  # jobs[0], its decoding started before torch was imported
                    ahead, first = _File(src, dst, config, opts, children, early=first), None
                cur, ahead = ahead or _File(src, dst, config, opts), None
                more = i + 1 < len(jobs)  # files after this one
                try:
                    cur.read(runner)
                    if more:  # the next one decoded in a child while this file's network runs
                        ahead = _ahead(*jobs[i + 1], config, opts, children)
                    cur.classify(runner, model, config, device, children if more else None)
                except BaseException:
                    cur.close()
                    raise
            except Exception:
                if writing is not None:  # the file before is fine: complete it, then report this one's error
                    yield writing.finish()
                    writing = None
                raise
            if writing is not None:
                yield writing.finish()
            writing = cur  # before start_write: an interrupt while it encodes here still removes its output
            cur.start_write()
        if writing is not None:
            yield writing.finish()
            writing = None
    finally:
        for f in (writing, ahead):
            if isinstance(f, _File):
                f.close()
        if first is not None:
            first.close()
        runner.close()
        if children is not None:
            children.close()


def _ahead(src, dst, config, opts, children):
    """The next file opened and its decoding started; an error is returned, to be raised at its turn (after the
    files before it are complete, as if it had not been opened early)."""
    try:
        return _File(src, dst, config, opts, children)
    except Exception as e:
        return e


def classify_file(src, dst, model, config, **kwargs):
    """Classifies src into dst (see classify_files for the options); returns the result dict."""
    for _, _, result in classify_files([(src, dst)], model, config, **kwargs):
        return result
