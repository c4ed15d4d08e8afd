#!/usr/bin/env python3
"""Compile-only check of the CUDA backend, for machines without a GPU (CI runs it from `make test`).

Every csrc/cuda/*.cu file goes through `nvcc -c` for one architecture (sm_90 by default: device code
through ptxas, host code through the host compiler), and every host-only csrc/cuda/*.cpp file (and
csrc/module.cpp, whose build facts differ in CUDA builds) through `c++ -fsyntax-only`, with the flags setup.py uses for a CUDA build
(setup.nvcc_flags(), torch's COMMON_NVCC_FLAGS, -DSPARSECONV_WITH_CUDA) against the include directories of the
torch that runs this script. Exits 1 and names the file on the first compile error (after finishing the files
already started); exits 0 with a message, and compiles nothing, when nvcc is not installed.

torch's CPU wheels ship the ATen/CUDA and c10/cuda headers but lack one generated header,
c10/cuda/impl/cuda_cmake_macros.h; when it is missing, this script writes a stand-in (the two lines a CUDA build
of torch generates for a shared-library build) into a temporary folder on the include path. Nothing else is
needed: the CUDA sources include no cuBLAS/cuSPARSE headers (ATen/cuda/CUDAContext.h), which toolkits without
those libraries lack.

Host code is held to warnings-as-errors (-Wall -Werror, through -Xcompiler for nvcc): a GPU-only bug in host code,
such as the argument check that called itself and overflowed the stack on every CUDA pooling call, then fails here,
on a machine without a GPU. Before the real files, a canary with that very bug must fail under these flags, so the
check cannot silently lose them.

Usage: python tools/check_cuda_compile.py [--arch 90] [--jobs N] [files...]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_nvcc():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda/bin/nvcc"
    return None


def find_cuda_include(nvcc):
    """The toolkit's include folder (for the host-only .cpp files; nvcc adds it by itself). nvcc may be a
    wrapper script (/usr/local/bin/nvcc here): then ask it where its toolkit is."""
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include")
    if os.path.exists(os.path.join(here, "cuda_runtime_api.h")):
        return here
    proc = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                          capture_output=True, text=True)
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("#$ TOP="):
            top = line.split("=", 1)[1].strip().strip('"')
            for cand in (os.path.join(top, "include"), os.path.join(top, "targets", "x86_64-linux", "include")):
                if os.path.exists(os.path.join(cand, "cuda_runtime_api.h")):
                    return cand
    return "/usr/local/cuda/include"


# Host-code warnings that fail the check (torch's and CUDA's headers come in through -isystem, so only our code
# is held to them).
HOST_WARNINGS = ["-Wall", "-Werror"]

# The bug that shipped (csrc/cuda/pool_cuda.cu before the fix), reduced: an argument check that calls itself.
CANARY = r"""
namespace {
void check_args(const int* a, const int* b) {
  check_args(a, b);
  if (a == b) throw 1;
}
__global__ void kernel(int* p) { p[threadIdx.x] = 0; }
}  // namespace
void run(int* p) { check_args(p, p); kernel<<<1, 1>>>(p); }
"""


def load_setup():
    """setup.py as a module (its setup() call only runs under __main__), for nvcc_flags()."""
    spec = importlib.util.spec_from_file_location("sparseconv_setup", os.path.join(ROOT, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        spec.loader.exec_module(mod)
    finally:
        os.chdir(cwd)
    return mod


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="90", help="SM architecture to compile for (default 90: sm_90)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")), help="parallel compiles")
    ap.add_argument("files", nargs="*", help="files to check (default: csrc/cuda/*.cu, csrc/cuda/*.cpp, "
                                               "csrc/module.cpp)")
    args = ap.parse_args()

    nvcc = find_nvcc()
    if nvcc is None:
        print("check_cuda_compile: SKIPPED - nvcc not found (CUDA_HOME, PATH, /usr/local/cuda); "
              "the CUDA sources were not compile-checked")
        return 0

    import torch
    from torch.utils import cpp_extension

    setup_mod = load_setup()
    cuda_include = find_cuda_include(nvcc)
    torch_includes = cpp_extension.include_paths()
    tmp = tempfile.mkdtemp(prefix="sparseconv_cudacheck_")
    includes = [f"-I{os.path.join(ROOT, 'csrc')}"]
    for p in torch_includes:
        includes += ["-isystem", p]
    macros = "c10/cuda/impl/cuda_cmake_macros.h"
    if not any(os.path.exists(os.path.join(p, macros)) for p in torch_includes):
        shim = os.path.join(tmp, "shim")
        os.makedirs(os.path.join(shim, os.path.dirname(macros)))
        with open(os.path.join(shim, macros), "w") as fh:
            fh.write("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        includes += ["-isystem", shim]
        shim_note = f" (stand-in for {macros}, missing from this torch)"
    else:
        shim_note = ""
    includes += ["-isystem", cuda_include, "-isystem", sysconfig.get_paths()["include"]]  # Python.h: module.cpp
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    ext_defs = ["-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C", abi]

    nvcc_cmd = ([nvcc, "-c"] + list(cpp_extension.COMMON_NVCC_FLAGS) + setup_mod.nvcc_flags(False)
                + [f"-gencode=arch=compute_{args.arch},code=sm_{args.arch}", "-Xcompiler",
                   ",".join(["-fPIC"] + HOST_WARNINGS)]
                + ext_defs + includes)
    cxx = os.environ.get("CXX", "c++")
    cxx_cmd = ([cxx, "-fsyntax-only", "-std=c++20", "-fPIC", "-fopenmp", "-DSPARSECONV_WITH_CUDA"] + HOST_WARNINGS
               + [f'-DSPARSECONV_CUDA_ARCHS="{args.arch[:-1]}.{args.arch[-1]}"', '-DSPARSECONV_VERSION="check"']
               + ext_defs + includes)

    files = args.files or (sorted(glob.glob(os.path.join(ROOT, "csrc/cuda/*.cu")))
                           + sorted(glob.glob(os.path.join(ROOT, "csrc/cuda/*.cpp")))
                           + [os.path.join(ROOT, "csrc/module.cpp")])
    files = [os.path.abspath(f) for f in files]
    print(f"check_cuda_compile: {len(files)} files for sm_{args.arch} with {nvcc} and torch {torch.__version__} "
          f"headers{shim_note}, {args.jobs} at a time", flush=True)

    def compile_one(path):
        rel = os.path.relpath(path, ROOT)
        if path.endswith(".cu"):
            cmd = nvcc_cmd + [path, "-o", os.path.join(tmp, os.path.basename(path) + ".o")]
        else:
            cmd = cxx_cmd + [path]
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        return rel, proc.returncode, time.time() - t0, proc.stdout + proc.stderr, cmd

    t_start = time.time()
    failed = []
    try:
        canary = os.path.join(tmp, "canary.cu")
        with open(canary, "w") as fh:
            fh.write(CANARY)
        proc = subprocess.run(nvcc_cmd + [canary, "-o", canary + ".o"], capture_output=True, text=True)
        if proc.returncode == 0 or "infinite-recursion" not in proc.stdout + proc.stderr:
            print("check_cuda_compile: FAILED - the canary (an argument check that calls itself, the bug that "
                  f"crashed every CUDA pooling call) was not rejected by {' '.join(HOST_WARNINGS)} through nvcc "
                  f"(rc {proc.returncode}); a host compiler with -Winfinite-recursion (GCC >= 12) is needed\n"
                  + proc.stdout + proc.stderr)
            return 1
        print("  ok      canary with infinite recursion rejected", flush=True)
        with cf.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [pool.submit(compile_one, f) for f in files]
            for fut in cf.as_completed(futures):
                if fut.cancelled():
                    continue
                rel, rc, secs, output, cmd = fut.result()
                if rc == 0:
                    print(f"  ok      {rel}  ({secs:.0f} s)", flush=True)
                    csrc = os.path.join(ROOT, "csrc")
                    ours = [ln for ln in output.splitlines() if "warning" in ln and csrc in ln]
                    for ln in ours:  # warnings in our sources (not torch's headers) are shown, not fatal
                        print(f"    {ln}", flush=True)
                    continue
                failed.append(rel)
                print(f"  FAILED  {rel}  ({secs:.0f} s)\n    command: {' '.join(cmd)}\n{output}", flush=True)
                for other in futures:  # finish what is running, start nothing new
                    other.cancel()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = time.time() - t_start
    if failed:
        print(f"check_cuda_compile: FAILED in {total:.0f} s: {', '.join(failed)}")
        return 1
    print(f"check_cuda_compile: all {len(files)} files compile for sm_{args.arch} ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
