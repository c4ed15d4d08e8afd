"""PLY, PCD, XYZ/PTS point clouds through Open3D (the [open3d] extra: open3d-cpu, which needs Debian's
libusb-1.0-0), converted to LAS so that the LAS pipeline (classify, info, evaluate) takes them too.

These formats carry no LAS attributes: the LAS copy gets intensity 0, one return per pulse and colour when the
cloud has colours; classification starts at 0 (never classified).
"""
import os

import numpy as np

from .atomic import atomic_output
from .las import LasError

OPEN3D_SUFFIXES = (".ply", ".pcd", ".xyz", ".xyzn", ".xyzrgb", ".pts")


def is_open3d_file(path):
    return str(path).lower().endswith(OPEN3D_SUFFIXES)


def read_open3d(path):
    """(xyz float64 [P, 3], rgb float [P, 3] in 0..1 or None)."""
    try:
        import open3d as o3d
    except (ImportError, OSError) as e:  # OSError: libusb-1.0 missing
        raise LasError(f"{path}: reading {os.path.splitext(path)[1]} needs Open3D: pip install "
                       f"'sparseconv[open3d]' (and Debian's libusb-1.0-0) ({type(e).__name__})") from None
    if not os.path.isfile(path):
        raise LasError(f"{path}: no such file")
    cloud = o3d.io.read_point_cloud(str(path))
    xyz = np.asarray(cloud.points, np.float64)
    if xyz.shape[0] == 0:
        raise LasError(f"{path}: Open3D read no points (not a readable point cloud, or an empty one)")
    rgb = np.asarray(cloud.colors, np.float64) if cloud.has_colors() else None
    return xyz, rgb


def open3d_to_las(path, las_path, scale=0.001):
    """Writes the cloud at path as LAS 1.4 (point format 7 with colour, else 6) at las_path (atomically)."""
    import laspy

    xyz, rgb = read_open3d(path)
    header = laspy.LasHeader(point_format=7 if rgb is not None else 6, version="1.4")
    header.scales = np.array([scale] * 3)
    header.offsets = np.floor(xyz.min(0))
    las = laspy.LasData(header)
    las.x, las.y, las.z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    las.return_number = np.ones(len(xyz), np.uint8)
    las.number_of_returns = np.ones(len(xyz), np.uint8)
    if rgb is not None:
        c = np.clip(np.round(rgb * 65535), 0, 65535).astype(np.uint16)
        las.red, las.green, las.blue = c[:, 0], c[:, 1], c[:, 2]
    with atomic_output(las_path) as tmp:
        las.write(tmp)
    return las_path
