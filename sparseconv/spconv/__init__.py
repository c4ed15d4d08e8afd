"""spconv 2.x's Python API on sparseconv's operators (CPU and CUDA; spconv itself is never imported):

    import sparseconv.spconv.pytorch as spconv     # was: import spconv.pytorch as spconv
    import sparseconv.spconv as spconv             # the same module contents

SparseConvTensor, the 2D and 3D convolutions (SubMConv, SparseConv, SparseInverseConv, SparseConvTranspose),
SparseMaxPool / SparseAvgPool, SparseSequential, SparseModule, ToDense, SparseBatchNorm, SparseReLU,
SparseIdentity, ConvAlgo, with spconv's constructor signatures, state_dict keys and weight layout, so a model
written against spconv runs with only the import changed and loads spconv checkpoints with strict=True. What is
left out raises an error that names it (README, "Coming from spconv").
"""
from .conv import (
    SparseConv2d,
    SparseConv3d,
    SparseConvolution,
    SparseConvTranspose2d,
    SparseConvTranspose3d,
    SparseInverseConv2d,
    SparseInverseConv3d,
    SubMConv2d,
    SubMConv3d,
)
from .modules import SparseBatchNorm, SparseIdentity, SparseModule, SparseReLU, SparseSequential, ToDense
from .options import ConvAlgo
from .pool import SparseAvgPool2d, SparseAvgPool3d, SparseMaxPool2d, SparseMaxPool3d
from .tensor import IndiceData, SparseConvTensor

__all__ = [
    "SparseConvTensor", "IndiceData", "ConvAlgo",
    "SubMConv2d", "SubMConv3d", "SparseConv2d", "SparseConv3d", "SparseInverseConv2d", "SparseInverseConv3d",
    "SparseConvTranspose2d", "SparseConvTranspose3d", "SparseConvolution",
    "SparseMaxPool2d", "SparseMaxPool3d", "SparseAvgPool2d", "SparseAvgPool3d",
    "SparseModule", "SparseSequential", "ToDense", "SparseBatchNorm", "SparseReLU", "SparseIdentity",
]

# spconv.pytorch names that are not here, with what to do instead.
_OTHER_NDIM = "only the 2D and 3D layers are provided"
_MISSING = {
    **{f"{kind}{n}d": _OTHER_NDIM for n in (1, 4) for kind in (
        "SubMConv", "SparseConv", "SparseInverseConv", "SparseConvTranspose", "SparseMaxPool", "SparseAvgPool")},
    "SparseGlobalMaxPool": "use sparseconv.nn.GlobalMaxPool()(x.sparse_tensor) ([B, C])",
    "SparseGlobalAvgPool": "use sparseconv.nn.GlobalAvgPool()(x.sparse_tensor) ([B, C])",
    "AddTable": "add features: x.replace_feature(x.features + y.features)",
    "ConcatTable": "call each module on the tensor and keep the list",
    "JoinTable": "concatenate features: x.replace_feature(torch.cat([x.features, y.features], 1))",
    "RemoveGrid": "there is no grid buffer to remove",
    "functional": "spconv's functional ops and pair tensors are not exposed; use the layers",
    "ops": "spconv's ops and pair tensors are not exposed; use the layers",
    "utils": "PointToVoxel: use sparseconv.voxelize(points, feats, voxel_size)",
}


def __getattr__(name):
    if name == "pytorch":
        import importlib

        return importlib.import_module(".pytorch", __name__)
    if name in _MISSING:
        raise AttributeError(f"sparseconv.spconv: spconv's {name} is not supported: {_MISSING[name]}")
    raise AttributeError(f"module 'sparseconv.spconv' has no attribute {name!r} (it covers: {', '.join(__all__)})")
