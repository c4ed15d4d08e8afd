"""Data helpers: generated LiDAR scenes and generated scanned shapes (voxelization is sparseconv.voxelize)."""

from . import shapes
from .scenes import CLASS_NAMES, lidar_scene

__all__ = ["CLASS_NAMES", "lidar_scene", "shapes"]
