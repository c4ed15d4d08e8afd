"""Reading and writing point-cloud files: LAS/LAZ through laspy (lazrs backend); PLY, PCD, XYZ/PTS through
Open3D, converted to LAS."""
from .las import LasError, class_histogram, las_info, read_chunks, write_classified
from .pointcloud import OPEN3D_SUFFIXES, is_open3d_file, open3d_to_las, read_open3d

__all__ = ["LasError", "OPEN3D_SUFFIXES", "class_histogram", "is_open3d_file", "las_info", "open3d_to_las",
           "read_chunks", "read_open3d", "write_classified"]
