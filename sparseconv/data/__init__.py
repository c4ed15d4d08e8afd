"""Data helpers: generated LiDAR scenes (and, from sparseconv's core, voxelization)."""

from .scenes import CLASS_NAMES, lidar_scene

__all__ = ["CLASS_NAMES", "lidar_scene"]
