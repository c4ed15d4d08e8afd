// Shared by the CUDA kernels: light includes, launch helpers, small device<->host reads, the algorithm switch.
//
// Includes are kept to ATen/core + c10/cuda on purpose. `torch/extension.h` and `ATen/cuda/CUDAContext.h` are
// avoided: the former costs about a minute of compile time per file, the latter pulls in cuBLAS/cuSPARSE
// headers that a CUDA toolkit without those libraries (and CI's compile-only check) does not have. cuBLAS is
// reached through ATen ops (at::mm_out), which run on the current stream and honour allow_tf32.
#pragma once
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "checks.h"
#include "coords.h"
#include "determinism.h"

namespace sparseconv {
namespace cuda {

constexpr int kThreads = 256;

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Blocks for n items at `threads` per block (n > 0; callers skip empty launches).
inline unsigned int blocks_for(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  TORCH_CHECK(b <= int64_t(0x7fffffff), "sparseconv: launch of ", n, " items is too large");
  return static_cast<unsigned int>(b);
}

// Grid-stride loop over [0, n).
#define SPARSECONV_KERNEL_LOOP(i, n)                                                                     \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += int64_t(blockDim.x) * gridDim.x)

// Blocks for a grid-stride loop: enough to fill the GPU, never more than the items need.
inline unsigned int loop_blocks(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned int>(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

// Copies `count` values from device memory to the host on the current stream and waits for them: the one
// synchronisation an operator does when it must know a size (or an error flag) to go on.
template <typename T>
std::vector<T> read_back(const T* device_ptr, int64_t count, cudaStream_t stream) {
  std::vector<T> host(static_cast<size_t>(count));
  if (count == 0) return host;
  C10_CUDA_CHECK(cudaMemcpyAsync(host.data(), device_ptr, sizeof(T) * count, cudaMemcpyDeviceToHost, stream));
  C10_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

// Which convolution path to take. SPARSECONV_CUDA_ALGO=gemm|fused|auto (default auto) overrides the size-based
// choice, for tests and benchmarks that want one path; read on every call.
enum class Algo { kAuto, kGemm, kFused };
inline Algo algo_override() {
  const char* v = std::getenv("SPARSECONV_CUDA_ALGO");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return Algo::kAuto;
  if (std::strcmp(v, "gemm") == 0) return Algo::kGemm;
  if (std::strcmp(v, "fused") == 0) return Algo::kFused;
  TORCH_CHECK_VALUE(false, "SPARSECONV_CUDA_ALGO: expected 'auto', 'gemm' or 'fused', got '", v, "'");
}

// SPARSECONV_CUDA_CHECKS=1: kernels that otherwise never synchronise (fused convolution, pooling) read back
// their "map entry out of range" flag and raise the CPU backend's ValueError. Off by default: entries outside
// [0, n_in) are then skipped (never read out of bounds), as -1 would be.
inline bool sync_checks() {
  const char* v = std::getenv("SPARSECONV_CUDA_CHECKS");
  return v != nullptr && v[0] == '1';
}

// Compute capability major of the current device (tensor-core paths need >= 8 for bfloat16 WMMA).
inline int device_major() {
  int dev = 0, major = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  return major;
}

// Raw 16-bit storage of c10::Half / c10::BFloat16, for the tensor-core kernels' shared-memory tiles.
template <typename T>
struct Is16Bit : std::false_type {};
template <>
struct Is16Bit<c10::Half> : std::true_type {};
template <>
struct Is16Bit<c10::BFloat16> : std::true_type {};

}  // namespace cuda
}  // namespace sparseconv
