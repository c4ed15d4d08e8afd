"""Reading and writing point-cloud files (LAS/LAZ through laspy with the lazrs backend)."""
from .las import LasError, class_histogram, las_info, read_chunks, write_classified

__all__ = ["LasError", "class_histogram", "las_info", "read_chunks", "write_classified"]
