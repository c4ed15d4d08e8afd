// The pybind11 module sparseconv._C: importing it loads the operator registrations; it also reports how this
// binary was built, so bug reports and benchmarks can say what ran.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "determinism.h"

#ifdef SPARSECONV_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef SPARSECONV_VERSION
#define SPARSECONV_VERSION "unknown"
#endif
#ifndef SPARSECONV_CUDA_ARCHS
#define SPARSECONV_CUDA_ARCHS ""
#endif

namespace {

py::dict build_info() {
  py::dict d;
  d["version"] = SPARSECONV_VERSION;
  d["torch"] = TORCH_VERSION;
#ifdef _OPENMP
  d["openmp"] = true;
  d["openmp_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
  d["openmp_threads"] = 1;
#endif
  d["torch_threads"] = at::get_num_threads();
#ifdef SPARSECONV_WITH_CUDA
  d["cuda"] = true;
  // The toolkit this binary was compiled with ("13.0") and the architectures it holds code for ("8.0;9.0").
  d["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
  d["cuda_archs"] = SPARSECONV_CUDA_ARCHS;
#else
  d["cuda"] = false;
  d["cuda_version"] = py::none();
  d["cuda_archs"] = "";
#endif
#if defined(__AVX512F__)
  d["simd"] = "avx512";
#elif defined(__AVX2__)
  d["simd"] = "avx2";
#else
  d["simd"] = "generic";
#endif
  d["compiler"] = __VERSION__;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "sparseconv C++/CUDA operators (registered under torch.ops.sparseconv)";
  m.def("build_info", &build_info, "How this binary was built: version, torch, OpenMP threads, CUDA, SIMD");
  // sparseconv.set_deterministic() mirrors its switch here, where the CUDA kernels read it (csrc/determinism.h).
  m.def("_set_deterministic", [](bool on) { sparseconv::deterministic_flag().store(on); },
        "Internal: sparseconv's deterministic-mode switch, as the C++ kernels see it");
}
