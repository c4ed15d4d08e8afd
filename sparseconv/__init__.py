"""sparseconv: sparse 3D convolutional networks for point clouds, as a PyTorch extension.

Importing loads the compiled operators (``torch.ops.sparseconv.*``); nothing is compiled at import time.
"""
from . import _early

_early.start()  # `sparseconv classify` only: its first input starts decoding beside `import torch` (_early.py)

import torch  # noqa: E402, F401  (loads libtorch before the extension)

_REBUILD = ("rebuild sparseconv against the installed torch: pip install --no-build-isolation "
            "--force-reinstall --no-deps . (from the source tree; FORCE_CUDA=1 for CUDA with nvcc on PATH, "
            "FORCE_ONLY_CPU=1 for a CPU-only build)")

try:
    from . import _C
except ImportError as e:
    # A CUDA build imported under a CPU-only torch (or another torch than it was built with) fails here with
    # a missing libc10_cuda.so / undefined symbol; say what to do about it.
    raise ImportError(f"sparseconv: the compiled extension does not load with torch {torch.__version__} "
                      f"(CUDA {torch.version.cuda}): {e}. Probably it was built for another torch; "
                      f"{_REBUILD}") from e


def _check_cuda_build(info):
    """A CUDA build must match torch's CUDA major version (its kernels and torch's runtime: one toolkit)."""
    if not info.get("cuda"):
        return
    built = info.get("cuda_version") or ""
    if torch.version.cuda is None:
        raise RuntimeError(f"sparseconv: this build has CUDA {built} kernels, but torch {torch.__version__} "
                           f"has no CUDA; {_REBUILD}")
    if built.split(".")[0] != torch.version.cuda.split(".")[0]:
        raise RuntimeError(f"sparseconv: built with CUDA {built}, but torch {torch.__version__} uses CUDA "
                           f"{torch.version.cuda}; {_REBUILD}")


_check_cuda_build(_C.build_info())

from . import ops  # noqa: F401  (registers autograd and fake kernels)
from .data_loading import collate
from .determinism import is_deterministic, set_deterministic
from .tensor import SparseTensor, sparse_collate
from .voxelize import devoxelize, voxelize

__version__ = _C.build_info()["version"]


def build_info():
    """How this binary was built: version, torch it was built against, OpenMP threads, SIMD, CUDA yes/no and,
    for a CUDA build, the toolkit version (cuda_version) and GPU architectures (cuda_archs); plus the torch and
    torch CUDA version running now."""
    info = dict(_C.build_info())
    info["torch_runtime"] = torch.__version__
    info["torch_cuda_runtime"] = torch.version.cuda
    return info


from . import nn  # noqa: E402

__all__ = ["SparseTensor", "sparse_collate", "voxelize", "devoxelize", "build_info", "nn", "ops",
           "collate", "set_deterministic", "is_deterministic"]

# Public subpackages load on first attribute access (PEP 562), so `import sparseconv` stays light and
# `sparseconv.models.VoxelClassifier` works without `import sparseconv.models`; laspy, matplotlib and Open3D are
# imported only by the code that uses them.
_LAZY_SUBMODULES = ("data", "distributed", "io", "lidar", "metrics", "models", "spconv")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sparseconv' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
