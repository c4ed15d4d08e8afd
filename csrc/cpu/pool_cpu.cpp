// Sparse max and average pooling over a strided kernel map (output sites by SparseConv3d's rule).
//
// Max pooling keeps, per output site and channel, the input row that won (argmax) for backward; average pooling
// divides by the number of active inputs in the window (inactive sites are not zeros to average in). Both
// backward passes walk the transposed map, one input row per iteration, so they need no atomics and give the
// same result for any thread count. bfloat16/float16 features are compared and summed in float32 (sums are
// rounded once per output element).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "checks.h"

namespace sparseconv {
namespace {

// Calls fn(j) for every active input row j of window i; rows >= n_in (a map of other features) set `bad`.
template <typename F>
inline void for_window_inputs(const int32_t* nbr, int64_t K, int64_t M, int64_t i, int64_t n_in, bool& bad,
                              F&& fn) {
  for (int64_t k = 0; k < K; ++k) {
    const int32_t j = nbr[k * M + i];
    if (j < 0) continue;
    if (j >= n_in) {
      bad = true;
      continue;
    }
    fn(int64_t(j));
  }
}

template <typename T, typename S = at::opmath_type<T>>
void max_pool(const T* f, int64_t n_in, int64_t C, const int32_t* nbr, int64_t K, int64_t M, T* out, int32_t* arg,
              std::atomic<bool>& bad) {
  at::parallel_for(0, M, 256, [&](int64_t i0, int64_t i1) {
    bool local_bad = false;
    std::vector<S> best(C);
    for (int64_t i = i0; i < i1; ++i) {
      int32_t* a = arg + i * C;
      for (int64_t c = 0; c < C; ++c) {
        best[c] = -std::numeric_limits<S>::infinity();
        a[c] = -1;
      }
      for_window_inputs(nbr, K, M, i, n_in, local_bad, [&](int64_t j) {
        const T* row = f + j * C;
        for (int64_t c = 0; c < C; ++c) {
          const S v = S(row[c]);  // exact for every storage type
          // NaN wins and stays, as in torch.nn.functional.max_pool3d.
          if (v > best[c] || (std::isnan(v) && !std::isnan(best[c])) || a[c] < 0) {
            best[c] = v;
            a[c] = int32_t(j);
          }
        }
      });
      for (int64_t c = 0; c < C; ++c) out[i * C + c] = a[c] < 0 ? T(0) : T(best[c]);  // 0: no active input
    }
    if (local_bad) bad = true;
  });
}

std::tuple<at::Tensor, at::Tensor> sparse_max_pool_cpu(const at::Tensor& feats, const at::Tensor& nbr,
                                                       const at::Tensor& nbr_t) {
  check_pool_args(feats, nbr, nbr_t);
  const int64_t K = nbr.size(0), M = nbr.size(1), C = feats.size(1);
  at::Tensor out = at::empty({M, C}, feats.options());
  at::Tensor arg = at::empty({M, C}, nbr.options());
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, feats.scalar_type(), "sparse_max_pool", [&] {
    max_pool<scalar_t>(feats.data_ptr<scalar_t>(), feats.size(0), C, nbr.data_ptr<int32_t>(), K, M,
                       out.data_ptr<scalar_t>(), arg.data_ptr<int32_t>(), bad);
  });
  TORCH_CHECK_VALUE(!bad, "nbr: refers to input rows >= feats.size(0) (", feats.size(0), ")");
  return {out, arg};
}

at::Tensor sparse_max_pool_backward_cpu(const at::Tensor& grad_out, const at::Tensor& argmax,
                                        const at::Tensor& nbr_t) {
  check_max_pool_backward_args(grad_out, argmax, nbr_t);
  const int64_t K = nbr_t.size(0), n_in = nbr_t.size(1), M = grad_out.size(0), C = grad_out.size(1);
  at::Tensor grad_in = at::empty({n_in, C}, grad_out.options());
  const int32_t* nt = nbr_t.data_ptr<int32_t>();
  const int32_t* arg = argmax.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad_out.scalar_type(), "sparse_max_pool_backward", [&] {
    using S = at::opmath_type<scalar_t>;
    const scalar_t* go = grad_out.data_ptr<scalar_t>();
    scalar_t* gi = grad_in.data_ptr<scalar_t>();
    at::parallel_for(0, n_in, 256, [&](int64_t j0, int64_t j1) {
      std::vector<S> sum(C);
      for (int64_t j = j0; j < j1; ++j) {
        std::fill(sum.begin(), sum.end(), S(0));
        for (int64_t k = 0; k < K; ++k) {
          const int32_t i = nt[k * n_in + j];
          if (i < 0 || i >= M) continue;
          for (int64_t c = 0; c < C; ++c)
            if (arg[int64_t(i) * C + c] == j) sum[c] += S(go[int64_t(i) * C + c]);
        }
        for (int64_t c = 0; c < C; ++c) gi[j * C + c] = scalar_t(sum[c]);
      }
    });
  });
  return grad_in;
}

// Active inputs per output window.
at::Tensor window_counts(const at::Tensor& nbr) {
  const int64_t K = nbr.size(0), M = nbr.size(1);
  at::Tensor count = at::zeros({M}, nbr.options());
  const int32_t* m = nbr.data_ptr<int32_t>();
  int32_t* cnt = count.data_ptr<int32_t>();
  at::parallel_for(0, M, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t i = i0; i < i1; ++i) cnt[i] += m[k * M + i] >= 0;
  });
  return count;
}

at::Tensor sparse_avg_pool_cpu(const at::Tensor& feats, const at::Tensor& nbr, const at::Tensor& nbr_t) {
  check_pool_args(feats, nbr, nbr_t);
  const int64_t K = nbr.size(0), M = nbr.size(1), C = feats.size(1), n_in = feats.size(0);
  at::Tensor out = at::empty({M, C}, feats.options());
  const at::Tensor count = window_counts(nbr);
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, feats.scalar_type(), "sparse_avg_pool", [&] {
    using S = at::opmath_type<scalar_t>;
    const scalar_t* f = feats.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int32_t* m = nbr.data_ptr<int32_t>();
    const int32_t* cnt = count.data_ptr<int32_t>();
    at::parallel_for(0, M, 256, [&](int64_t i0, int64_t i1) {
      bool local_bad = false;
      std::vector<S> sum(C);
      for (int64_t i = i0; i < i1; ++i) {
        std::fill(sum.begin(), sum.end(), S(0));
        for_window_inputs(m, K, M, i, n_in, local_bad, [&](int64_t j) {
          for (int64_t c = 0; c < C; ++c) sum[c] += S(f[j * C + c]);
        });
        const S n = cnt[i] > 0 ? S(cnt[i]) : S(1);  // an empty window stays 0
        for (int64_t c = 0; c < C; ++c) o[i * C + c] = scalar_t(sum[c] / n);
      }
      if (local_bad) bad = true;
    });
  });
  TORCH_CHECK_VALUE(!bad, "nbr: refers to input rows >= feats.size(0) (", feats.size(0), ")");
  return out;
}

at::Tensor sparse_avg_pool_backward_cpu(const at::Tensor& grad_out, const at::Tensor& nbr, const at::Tensor& nbr_t) {
  check_avg_pool_backward_args(grad_out, nbr, nbr_t);
  const int64_t K = nbr_t.size(0), n_in = nbr_t.size(1), M = grad_out.size(0), C = grad_out.size(1);
  at::Tensor grad_in = at::empty({n_in, C}, grad_out.options());
  const at::Tensor count = window_counts(nbr);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad_out.scalar_type(), "sparse_avg_pool_backward", [&] {
    using S = at::opmath_type<scalar_t>;
    const scalar_t* go = grad_out.data_ptr<scalar_t>();
    scalar_t* gi = grad_in.data_ptr<scalar_t>();
    const int32_t* nt = nbr_t.data_ptr<int32_t>();
    const int32_t* cnt = count.data_ptr<int32_t>();
    at::parallel_for(0, n_in, 256, [&](int64_t j0, int64_t j1) {
      std::vector<S> sum(C);
      for (int64_t j = j0; j < j1; ++j) {
        std::fill(sum.begin(), sum.end(), S(0));
        for (int64_t k = 0; k < K; ++k) {
          const int32_t i = nt[k * n_in + j];
          if (i < 0 || i >= M) continue;
          const S scale = S(1) / S(cnt[i]);
          for (int64_t c = 0; c < C; ++c) sum[c] += S(go[int64_t(i) * C + c]) * scale;
        }
        for (int64_t c = 0; c < C; ++c) gi[j * C + c] = scalar_t(sum[c]);
      }
    });
  });
  return grad_in;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseconv, CPU, m) {
  m.impl("sparse_max_pool", &sparse_max_pool_cpu);
  m.impl("sparse_max_pool_backward", &sparse_max_pool_backward_cpu);
  m.impl("sparse_avg_pool", &sparse_avg_pool_cpu);
  m.impl("sparse_avg_pool_backward", &sparse_avg_pool_backward_cpu);
}

}  // namespace sparseconv
