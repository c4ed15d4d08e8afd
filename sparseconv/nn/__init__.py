"""Layers for sparse networks (spconv-style names and argument order)."""
from .bridge import ToDense, ToSparse
from .conv import SparseConv3d, SparseConvTranspose3d, SparseInverseConv3d, SubMConv3d
from .modules import (
    BatchNorm3d,
    SparseBatchNorm,
    SparseDropout,
    SparseELU,
    SparseFeatureWise,
    SparseGELU,
    SparseLeakyReLU,
    SparseReLU,
    SparseSequential,
    SparseSigmoid,
    SparseSiLU,
)
from .pool import GlobalAvgPool, GlobalMaxPool, SparseAvgPool3d, SparseMaxPool3d
from .topk import SparseTopK

__all__ = [
    "SubMConv3d", "SparseConv3d", "SparseInverseConv3d", "SparseConvTranspose3d",
    "SparseMaxPool3d", "SparseAvgPool3d", "GlobalMaxPool", "GlobalAvgPool",
    "SparseBatchNorm", "SparseReLU", "SparseLeakyReLU", "SparseELU", "SparseGELU", "SparseSiLU", "SparseSigmoid",
    "SparseDropout", "SparseFeatureWise", "SparseSequential",
    "SparseTopK", "ToDense", "ToSparse", "BatchNorm3d",
]
