"""Ready models: a sparse-to-dense voxel classifier and a sparse U-Net for per-voxel labels."""
from .classifier import VoxelClassifier
from .unet import SparseUNet

__all__ = ["VoxelClassifier", "SparseUNet"]
