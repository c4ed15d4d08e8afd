"""sparseconv: sparse 3D convolutional networks for point clouds, as a PyTorch extension.

Importing loads the compiled operators (``torch.ops.sparseconv.*``); nothing is compiled at import time.
"""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C
from . import ops  # noqa: F401  (registers autograd and fake kernels)
from .data_loading import collate
from .determinism import is_deterministic, set_deterministic
from .tensor import SparseTensor, sparse_collate
from .voxelize import devoxelize, voxelize

__version__ = _C.build_info()["version"]


def build_info():
    """How this binary was built: version, torch it was built against, OpenMP threads, CUDA yes/no, SIMD."""
    info = dict(_C.build_info())
    info["torch_runtime"] = torch.__version__
    return info


from . import nn  # noqa: E402

__all__ = ["SparseTensor", "sparse_collate", "voxelize", "devoxelize", "build_info", "nn", "ops",
           "collate", "set_deterministic", "is_deterministic"]
