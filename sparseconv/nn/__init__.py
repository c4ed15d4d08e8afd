"""Layers for sparse networks (spconv-style names and argument order)."""
from .conv import SparseConv3d, SparseInverseConv3d, SubMConv3d

__all__ = ["SubMConv3d", "SparseConv3d", "SparseInverseConv3d"]
