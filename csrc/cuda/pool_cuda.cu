// Sparse max and average pooling over a strided kernel map on the GPU (csrc/cpu/pool_cpu.cpp's semantics).
//
// One thread per (output row, channel) in forward, per (input row, channel) in backward: backward walks the
// transposed map, so every gradient element is summed by one thread in offset order: no atomics, deterministic.
// Half-precision values are compared and summed in float32. Map entries outside [0, n_in) are skipped (never
// read out of bounds); with SPARSECONV_CUDA_CHECKS=1 they raise the CPU's ValueError.
//
// HARDWARE STATUS: compile-checked for sm_90, not yet run on a GPU.
#include "cuda/cuda_utils.cuh"

namespace sparseconv {
namespace cuda {
namespace {

template <typename T, typename AccT>
__global__ void max_pool_kernel(const T* __restrict__ f, int64_t n_in, int64_t C, const int32_t* __restrict__ nbr,
                                int64_t K, int64_t M, T* __restrict__ out, int32_t* __restrict__ arg, int* bad) {
  SPARSECONV_KERNEL_LOOP(e, M * C) {
    const int64_t i = e / C, c = e - i * C;
    AccT best = AccT(0);
    int32_t a = -1;
    bool local_bad = false;
    for (int64_t k = 0; k < K; ++k) {
      const int32_t j = nbr[k * M + i];
      if (j < 0) continue;
      if (j >= n_in) {
        local_bad = true;
        continue;
      }
      const AccT v = static_cast<AccT>(f[int64_t(j) * C + c]);
      // NaN wins and stays, as in torch.nn.functional.max_pool3d.
      if (a < 0 || v > best || (isnan(v) && !isnan(best))) {
        best = v;
        a = j;
      }
    }
    if (local_bad) *bad = 1;
    out[e] = a < 0 ? T(0) : static_cast<T>(best);  // no active input in the window: 0
    arg[e] = a;
  }
}

// grad_in[j, c] = sum over offsets k with i = nbr_t[k, j] (a valid output) and argmax[i, c] == j of grad_out[i, c].
template <typename T, typename AccT>
__global__ void max_pool_backward_kernel(const T* __restrict__ go, const int32_t* __restrict__ arg,
                                         const int32_t* __restrict__ nt, int64_t K, int64_t n_in, int64_t M, int64_t C,
                                         T* __restrict__ gi) {
  SPARSECONV_KERNEL_LOOP(e, n_in * C) {
    const int64_t j = e / C, c = e - j * C;
    AccT s = AccT(0);
    for (int64_t k = 0; k < K; ++k) {
      const int32_t i = nt[k * n_in + j];
      if (i < 0 || i >= M) continue;
      if (arg[int64_t(i) * C + c] == j) s += static_cast<AccT>(go[int64_t(i) * C + c]);
    }
    gi[e] = static_cast<T>(s);
  }
}

// Active inputs per output window (every entry >= 0, as the CPU's window_counts).
__global__ void window_counts_kernel(const int32_t* __restrict__ nbr, int64_t K, int64_t M, int32_t* __restrict__ cnt) {
  SPARSECONV_KERNEL_LOOP(i, M) {
    int32_t n = 0;
    for (int64_t k = 0; k < K; ++k) n += nbr[k * M + i] >= 0;
    cnt[i] = n;
  }
}

template <typename T, typename AccT>
__global__ void avg_pool_kernel(const T* __restrict__ f, int64_t n_in, int64_t C, const int32_t* __restrict__ nbr,
                                int64_t K, int64_t M, const int32_t* __restrict__ cnt, T* __restrict__ out, int* bad) {
  SPARSECONV_KERNEL_LOOP(e, M * C) {
    const int64_t i = e / C, c = e - i * C;
    AccT s = AccT(0);
    bool local_bad = false;
    for (int64_t k = 0; k < K; ++k) {
      const int32_t j = nbr[k * M + i];
      if (j < 0) continue;
      if (j >= n_in) {
        local_bad = true;
        continue;
      }
      s += static_cast<AccT>(f[int64_t(j) * C + c]);
    }
    if (local_bad) *bad = 1;
    if (cnt[i] > 0) s /= static_cast<AccT>(cnt[i]);
    out[e] = static_cast<T>(s);
  }
}

template <typename T, typename AccT>
__global__ void avg_pool_backward_kernel(const T* __restrict__ go, const int32_t* __restrict__ nt,
                                         const int32_t* __restrict__ cnt, int64_t K, int64_t n_in, int64_t M, int64_t C,
                                         T* __restrict__ gi) {
  SPARSECONV_KERNEL_LOOP(e, n_in * C) {
    const int64_t j = e / C, c = e - j * C;
    AccT s = AccT(0);
    for (int64_t k = 0; k < K; ++k) {
      const int32_t i = nt[k * n_in + j];
      if (i < 0 || i >= M) continue;
      const AccT scale = AccT(1) / static_cast<AccT>(cnt[i]);
      s += static_cast<AccT>(go[int64_t(i) * C + c]) * scale;
    }
    gi[e] = static_cast<T>(s);
  }
}

void finish_checks(const at::Tensor& bad, const at::Tensor& feats) {
  if (!sync_checks()) return;
  const auto b = read_back(bad.data_ptr<int32_t>(), 1, current_stream());
  TORCH_CHECK_VALUE(b[0] == 0, "nbr: refers to input rows >= feats.size(0) (", feats.size(0), ")");
}

at::Tensor window_counts(const at::Tensor& nbr, cudaStream_t stream) {
  const int64_t K = nbr.size(0), M = nbr.size(1);
  at::Tensor count = at::empty({M}, nbr.options());
  if (M == 0) return count;
  window_counts_kernel<<<loop_blocks(M), kThreads, 0, stream>>>(nbr.data_ptr<int32_t>(), K, M,
                                                                 count.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return count;
}

std::tuple<at::Tensor, at::Tensor> sparse_max_pool_cuda(const at::Tensor& feats, const at::Tensor& nbr,
                                                        const at::Tensor& nbr_t) {
  check_pool_args(feats, nbr, nbr_t);
  c10::cuda::CUDAGuard guard(feats.device());
  auto stream = current_stream();
  const int64_t K = nbr.size(0), M = nbr.size(1), C = feats.size(1);
  at::Tensor out = at::empty({M, C}, feats.options());
  at::Tensor arg = at::empty({M, C}, nbr.options());
  if (M * C == 0) return {out, arg};
  at::Tensor bad = at::zeros({1}, nbr.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "sparse_max_pool_cuda", [&] {
    using AccT = at::acc_type<scalar_t, true>;
    max_pool_kernel<scalar_t, AccT><<<loop_blocks(M * C), kThreads, 0, stream>>>(
        feats.data_ptr<scalar_t>(), feats.size(0), C, nbr.data_ptr<int32_t>(), K, M, out.data_ptr<scalar_t>(),
        arg.data_ptr<int32_t>(), bad.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  finish_checks(bad, feats);
  return {out, arg};
}

at::Tensor sparse_max_pool_backward_cuda(const at::Tensor& grad_out, const at::Tensor& argmax,
                                         const at::Tensor& nbr_t) {
  check_max_pool_backward_args(grad_out, argmax, nbr_t);
  c10::cuda::CUDAGuard guard(grad_out.device());
  auto stream = current_stream();
  const int64_t K = nbr_t.size(0), n_in = nbr_t.size(1), M = grad_out.size(0), C = grad_out.size(1);
  at::Tensor grad_in = at::empty({n_in, C}, grad_out.options());
  if (n_in * C == 0) return grad_in;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "sparse_max_pool_backward_cuda",
                                  [&] {
    using AccT = at::acc_type<scalar_t, true>;
    max_pool_backward_kernel<scalar_t, AccT><<<loop_blocks(n_in * C), kThreads, 0, stream>>>(
        grad_out.data_ptr<scalar_t>(), argmax.data_ptr<int32_t>(), nbr_t.data_ptr<int32_t>(), K, n_in, M, C,
        grad_in.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_in;
}

at::Tensor sparse_avg_pool_cuda(const at::Tensor& feats, const at::Tensor& nbr, const at::Tensor& nbr_t) {
  check_pool_args(feats, nbr, nbr_t);
  c10::cuda::CUDAGuard guard(feats.device());
  auto stream = current_stream();
  const int64_t K = nbr.size(0), M = nbr.size(1), C = feats.size(1);
  at::Tensor out = at::empty({M, C}, feats.options());
  if (M * C == 0) return out;
  const at::Tensor count = window_counts(nbr, stream);
  at::Tensor bad = at::zeros({1}, nbr.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "sparse_avg_pool_cuda", [&] {
    using AccT = at::acc_type<scalar_t, true>;
    avg_pool_kernel<scalar_t, AccT><<<loop_blocks(M * C), kThreads, 0, stream>>>(
        feats.data_ptr<scalar_t>(), feats.size(0), C, nbr.data_ptr<int32_t>(), K, M, count.data_ptr<int32_t>(),
        out.data_ptr<scalar_t>(), bad.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  finish_checks(bad, feats);
  return out;
}

at::Tensor sparse_avg_pool_backward_cuda(const at::Tensor& grad_out, const at::Tensor& nbr, const at::Tensor& nbr_t) {
  check_avg_pool_backward_args(grad_out, nbr, nbr_t);
  c10::cuda::CUDAGuard guard(grad_out.device());
  auto stream = current_stream();
  const int64_t K = nbr_t.size(0), n_in = nbr_t.size(1), M = grad_out.size(0), C = grad_out.size(1);
  at::Tensor grad_in = at::empty({n_in, C}, grad_out.options());
  if (n_in * C == 0) return grad_in;
  const at::Tensor count = window_counts(nbr, stream);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "sparse_avg_pool_backward_cuda",
                                  [&] {
    using AccT = at::acc_type<scalar_t, true>;
    avg_pool_backward_kernel<scalar_t, AccT><<<loop_blocks(n_in * C), kThreads, 0, stream>>>(
        grad_out.data_ptr<scalar_t>(), nbr_t.data_ptr<int32_t>(), count.data_ptr<int32_t>(), K, n_in, M, C,
        grad_in.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_in;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(sparseconv, CUDA, m) {
  m.impl("sparse_max_pool", &cuda::sparse_max_pool_cuda);
  m.impl("sparse_max_pool_backward", &cuda::sparse_max_pool_backward_cuda);
  m.impl("sparse_avg_pool", &cuda::sparse_avg_pool_cuda);
  m.impl("sparse_avg_pool_backward", &cuda::sparse_avg_pool_backward_cuda);
}

}  // namespace sparseconv
