"""Builds the one extension, sparseconv._C, against the installed torch.

C++ (OpenMP) always; CUDA sources (csrc/cuda/*.cu) when torch has CUDA and nvcc is found, or FORCE_CUDA=1.
FORCE_ONLY_CPU=1 skips CUDA, DEBUG=1 builds -O0 -g. MAX_JOBS and TORCH_CUDA_ARCH_LIST are read by torch's
BuildExtension. SPARSECONV_NATIVE=0 drops -march=native (for a binary that must run on other CPUs).
"""
import glob
import os

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"


def _flag(name):
    return os.environ.get(name, "0") == "1"


def _with_cuda():
    if _flag("FORCE_ONLY_CPU"):
        return False
    if _flag("FORCE_CUDA"):
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def extension():
    debug = _flag("DEBUG")
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    # Gathered rows are short: keep GCC from turning row-copy loops into memmove calls.
    cxx += ["-std=c++20", "-fopenmp", "-fno-tree-loop-distribute-patterns", f'-DSPARSECONV_VERSION="{VERSION}"']
    if os.environ.get("SPARSECONV_NATIVE", "1") == "1" and not debug:
        cxx.append("-march=native")
    kwargs = dict(
        name="sparseconv._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )
    if _with_cuda():
        kwargs["sources"] += sorted(glob.glob("csrc/cuda/*.cu"))
        kwargs["extra_compile_args"]["cxx"].append("-DSPARSECONV_WITH_CUDA")
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-std=c++20", "-DSPARSECONV_WITH_CUDA"]
        return CUDAExtension(**kwargs)
    return CppExtension(**kwargs)


setup(
    version=VERSION,
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
