// The pybind11 module sparseconv._C: importing it loads the operator registrations; it also reports how this
// binary was built, so bug reports and benchmarks can say what ran.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef SPARSECONV_VERSION
#define SPARSECONV_VERSION "unknown"
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
#else
  d["cuda"] = false;
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
}
