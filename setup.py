"""Builds the one extension, sparseconv._C, against the installed torch.

C++ (OpenMP) always; CUDA sources (csrc/cuda/*.cu, and the host-only csrc/cuda/*.cpp) when torch has CUDA and nvcc
is found, or FORCE_CUDA=1. FORCE_ONLY_CPU=1 skips CUDA, DEBUG=1 builds -O0 -g. MAX_JOBS is read by torch's
BuildExtension. TORCH_CUDA_ARCH_LIST picks the GPU architectures ("8.0;9.0", "9.0+PTX"); by default the
architectures of the visible GPUs, else 8.0;9.0. SPARSECONV_NATIVE=0 drops -march=native (for a binary that must
run on other CPUs).

tools/check_cuda_compile.py imports this file for nvcc_flags() and cuda_arch_list(), so the CI compile check
uses exactly these flags; setup() itself only runs when this file is executed (pip, python setup.py).
"""
import glob
import os

import setuptools
from setuptools import setup

# pyproject.toml states its licence as a PEP 639 string (license = "MIT"), which setuptools reads from 77 on;
# older ones stop with a schema error about `project.license` that does not say this. pip's isolated build
# installs setuptools>=77 (build-system.requires); --no-build-isolation uses whatever the environment has.
MIN_SETUPTOOLS = 77


def check_setuptools(version=setuptools.__version__):
    major = version.split(".")[0]
    if major.isdigit() and int(major) < MIN_SETUPTOOLS:
        raise SystemExit(f"sparseconv: building needs setuptools >= {MIN_SETUPTOOLS} (pyproject.toml's PEP 639 "
                         f"license field), this environment has setuptools {version}. Upgrade it, then build "
                         f'again: pip install "setuptools>={MIN_SETUPTOOLS}" (or build without '
                         "--no-build-isolation, which installs it for the build only).")


if __name__ == "__main__":
    check_setuptools()  # before torch: the message must come first, whatever else is missing

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

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


def cuda_arch_list():
    """TORCH_CUDA_ARCH_LIST when set; else the compute capabilities of the visible GPUs; else 8.0;9.0."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env:
        return env
    if torch.cuda.is_available():
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
        return ";".join(f"{major}.{minor}" for major, minor in sorted(caps))
    return "8.0;9.0"


def nvcc_flags(debug=False):
    """Flags for nvcc on top of what torch's BuildExtension adds (its COMMON_NVCC_FLAGS, -gencode per arch)."""
    flags = ["-O0", "-g", "-lineinfo"] if debug else ["-O3", "-lineinfo"]
    return flags + ["-std=c++20", "-DSPARSECONV_WITH_CUDA"]


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
        if torch.version.cuda is None:
            raise SystemExit(f"sparseconv: FORCE_CUDA=1, but the installed torch {torch.__version__} has "
                             "no CUDA (torch.version.cuda is None). Install a CUDA build of torch first, or "
                             "build the CPU extension (FORCE_ONLY_CPU=1).")
        archs = cuda_arch_list()
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs  # read by BuildExtension for the -gencode flags
        kwargs["sources"] += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        kwargs["extra_compile_args"]["cxx"] += ["-DSPARSECONV_WITH_CUDA", f'-DSPARSECONV_CUDA_ARCHS="{archs}"']
        kwargs["extra_compile_args"]["nvcc"] = nvcc_flags(debug)
        return CUDAExtension(**kwargs)
    return CppExtension(**kwargs)


if __name__ == "__main__":
    setup(
        version=VERSION,
        ext_modules=[extension()],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )
