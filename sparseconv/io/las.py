"""LAS 1.2-1.4 / LAZ in chunks, so files larger than memory stream.

Writing a classified copy keeps every point, every dimension, the header, the VLRs (CRS included) and extra bytes
of the input: only `classification` changes. The output is written to a temporary file beside the target and
renamed when complete; an existing output is kept unless overwrite=True; the input is never opened for writing.
"""
import os

import numpy as np

try:
    from .atomic import atomic_output
except ImportError:  # imported by raw.py run by path (the codec child): atomic.py lies beside this file
    from atomic import atomic_output

DEFAULT_CHUNK = 1_000_000


class LasError(Exception):
    """A file that cannot be read or written as LAS/LAZ; the message is one line, naming the file."""


def _laspy():
    try:
        import laspy
    except ImportError as e:  # the [las] extra
        raise LasError("reading LAS/LAZ needs laspy and lazrs: pip install 'sparseconv[las]'") from e
    return laspy


def laz_backend(parallel):
    """lazrs on several threads (one LAZ chunk of 50,000 points per task; RAYON_NUM_THREADS caps them) or on the
    calling thread: the same points and the same file bytes either way. None (laspy's choice) without lazrs."""
    laspy = _laspy()
    backend = laspy.LazBackend.LazrsParallel if parallel else laspy.LazBackend.Lazrs
    return backend if backend.is_available() else None


def _open(path, parallel=True):
    laspy = _laspy()
    if not os.path.isfile(path):
        raise LasError(f"{path}: no such file")
    try:
        reader = laspy.open(path, laz_backend=laz_backend(parallel))
    except Exception as e:  # laspy raises LaspyException, OSError, ValueError on bad headers
        raise LasError(f"{path}: not a readable LAS/LAZ file ({_first_line(e)})") from None
    if reader.header.point_count == 0:
        reader.close()
        raise LasError(f"{path}: the file holds no points")
    return reader


def _first_line(e):
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def read_chunks(path, chunk_size=DEFAULT_CHUNK, parallel=True):
    """Yields laspy point records of at most chunk_size points, in file order. A truncated or corrupt file raises
    LasError at the chunk where it fails. parallel: LAZ decoded on every core (see laz_backend)."""
    with _open(path, parallel) as reader:
        done = 0
        try:
            for points in reader.chunk_iterator(chunk_size):
                done += len(points)
                yield points
        except LasError:
            raise
        except Exception as e:
            raise LasError(f"{path}: unreadable after {done} of {reader.header.point_count} points "
                           f"({_first_line(e)})") from None
        if done != reader.header.point_count:
            raise LasError(f"{path}: truncated, {done} of {reader.header.point_count} points")


def las_info(path, chunk_size=DEFAULT_CHUNK):
    """Points, bounds, version, point format, dimensions and class histogram (one streaming pass)."""
    with _open(path) as reader:
        h = reader.header
        info = {
            "path": path,
            "points": int(h.point_count),
            "version": str(h.version),
            "point_format": int(h.point_format.id),
            "dimensions": list(h.point_format.dimension_names),
            "extra_dimensions": list(h.point_format.extra_dimension_names),
            "bounds_min": [float(v) for v in h.mins],
            "bounds_max": [float(v) for v in h.maxs],
            "crs": _crs_name(h),
            "compressed": path.lower().endswith(".laz"),
        }
    info["classes"] = class_histogram(path, chunk_size)
    return info


def _crs_name(header):
    try:
        crs = header.parse_crs()
    except Exception:
        return None
    return None if crs is None else crs.name


def class_histogram(path, chunk_size=DEFAULT_CHUNK):
    """{ASPRS code: count} over the whole file."""
    counts = np.zeros(256, np.int64)
    for points in read_chunks(path, chunk_size):
        counts += np.bincount(np.asarray(points.classification, dtype=np.int64), minlength=256)
    return {int(c): int(n) for c, n in enumerate(counts) if n}


def write_classified(src, dst, classify, overwrite=False, chunk_size=DEFAULT_CHUNK):
    """Copies src to dst with classification replaced, chunk by chunk.

    classify(points) -> integer array [len(points)] of ASPRS codes for one chunk (a laspy point record). Returns
    the class histogram written.
    """
    src_abs, dst_abs = os.path.abspath(src), os.path.abspath(dst)
    if src_abs == dst_abs:
        raise LasError(f"{dst}: is the input file; choose another output")
    if os.path.exists(dst) and not overwrite:
        raise LasError(f"{dst}: exists; pass overwrite=True (--overwrite) to replace it")
    laspy = _laspy()
    folder = os.path.dirname(dst_abs)
    if not os.path.isdir(folder):
        raise LasError(f"{dst}: folder {folder} does not exist")
    compress = dst.lower().endswith(".laz")
    counts = np.zeros(256, np.int64)
    with atomic_output(dst) as tmp, _open(src) as reader:
        max_code = max_class_code(reader.header.point_format.id)
        with laspy.open(tmp, mode="w", header=reader.header, do_compress=compress) as writer:
            for points in read_chunks(src, chunk_size):
                codes = np.asarray(classify(points))
                if codes.shape != (len(points),):
                    raise LasError(f"{src}: the classifier returned {codes.shape} codes for {len(points)} points")
                if codes.size and (codes.min() < 0 or codes.max() > max_code):
                    raise LasError(f"{dst}: class codes must lie in [0, {max_code}] for point format "
                                   f"{reader.header.point_format.id}, got [{codes.min()}, {codes.max()}]")
                points.classification = codes.astype(np.uint8)
                counts += np.bincount(codes.astype(np.int64), minlength=256)
                writer.write_points(points)
    return {int(c): int(n) for c, n in enumerate(counts) if n}


def max_class_code(point_format_id):
    """Largest classification a point format stores: 5 bits before LAS 1.4's formats 6-10, 8 bits from them."""
    return 255 if point_format_id >= 6 else 31
