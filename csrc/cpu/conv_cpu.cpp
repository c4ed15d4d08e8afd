// Sparse convolution as gather-multiply-accumulate over a kernel map, output-stationary.
//
// Outputs are cut into fixed tiles (independent of the thread count, so results are bitwise identical for any
// number of threads); a tile's rows stay in L1/L2 while every kernel offset adds its gathered input rows times
// that offset's weight matrix. The weight gradient is split by (offset, column block), each summed in a fixed
// order, so it is deterministic too. Input gradients reuse the forward kernel with the transposed map.
//
// bfloat16 and float16 features (torch.autocast("cpu")) are stored in that dtype and computed in float32: a
// tile's gathered input rows are widened into a float scratch block, its outputs accumulate in float and are
// rounded once at the end, and the weight (small) is widened once per call. So memory traffic and the tensors
// kept for backward halve, while every sum keeps float32 precision.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/microkernel.h"
#include "cpu/parallel.h"

namespace sparseconv {
namespace {

constexpr int kRows = 6;         // gathered rows per register block (6 x 16 floats = 12 AVX2 accumulators)
constexpr int64_t kTile = 256;     // output rows per tile
constexpr int64_t kPairTile = 256;  // gathered pairs per weight-gradient tile
constexpr int64_t kChunk = 2048;    // output rows per weight-gradient work item (at most)
constexpr int64_t kPartialElems = int64_t(1) << 22;  // bound on the weight gradient's partial sums

template <typename T, int NV>
void rows_block(int nr, const T* const* a, T* const* o, int64_t col, const T* w, int64_t cin, int64_t ldw) {
  switch (nr) {
    case 6: rows_times_w<T, 6, NV>(a, o, col, w, cin, ldw); break;
    case 5: rows_times_w<T, 5, NV>(a, o, col, w, cin, ldw); break;
    case 4: rows_times_w<T, 4, NV>(a, o, col, w, cin, ldw); break;
    case 3: rows_times_w<T, 3, NV>(a, o, col, w, cin, ldw); break;
    case 2: rows_times_w<T, 2, NV>(a, o, col, w, cin, ldw); break;
    default: rows_times_w<T, 1, NV>(a, o, col, w, cin, ldw); break;
  }
}

// o[r] += a[r] @ w for nr gathered rows, all columns.
template <typename T>
void gathered_rows_times_w(int nr, const T* const* a, T* const* o, const T* w, int64_t cin, int64_t cout) {
  constexpr int L = Vec<T>::lanes;
  int64_t col = 0;
  for (; col + 2 * L <= cout; col += 2 * L) rows_block<T, 2>(nr, a, o, col, w, cin, cout);
  if (col + L <= cout) {
    rows_block<T, 1>(nr, a, o, col, w, cin, cout);
    col += L;
  }
  for (; col < cout; ++col)
    for (int r = 0; r < nr; ++r) {
      T s = o[r][col];
      for (int64_t c = 0; c < cin; ++c) s += a[r][c] * w[c * cout + col];
      o[r][col] = s;
    }
}

// The (input, output) row pairs of one map row over outputs [i0, i1), without branches on the ~70% of empty
// entries. Entries >= n_in (a map that does not belong to these features) set `bad` and are skipped.
inline int64_t collect_pairs(const int32_t* row, int64_t i0, int64_t i1, int64_t n_in, int32_t* in, int32_t* out,
                             bool& bad) {
  int64_t m = 0;
  for (int64_t i = i0; i < i1; ++i) {
    const int32_t j = row[i];
    in[m] = j;
    out[m] = int32_t(i);
    m += uint32_t(j) < uint64_t(n_in);
    bad |= j >= n_in;
  }
  return m;
}

// A short row copy, inlined: a memmove call per gathered row costs more than the copy itself (setup.py builds
// with -fno-tree-loop-distribute-patterns so GCC does not turn this loop back into that call). Rows of a reduced
// dtype are widened to the compute type on the way.
template <typename Src, typename Dst>
inline void copy_row(const Src* __restrict__ src, int64_t n, Dst* __restrict__ dst) {
  if constexpr (std::is_same_v<Src, Dst>) {
    using V = typename Vec<Dst>::type;
    constexpr int L = Vec<Dst>::lanes;
    int64_t c = 0;
    for (; c + L <= n; c += L) *reinterpret_cast<V*>(dst + c) = *reinterpret_cast<const V*>(src + c);
    for (; c < n; ++c) dst[c] = src[c];
  } else {
    for (int64_t c = 0; c < n; ++c) dst[c] = Dst(src[c]);
  }
}

// T: the features' storage type; S = opmath(T): the compute type of the weight, bias and every sum.
template <typename T, typename S = at::opmath_type<T>>
void conv_forward(const T* feats, int64_t n_in, int64_t cin, const S* w, const S* bias, const int32_t* nbr,
                  int64_t K, int64_t n_out, int64_t cout, T* out, std::atomic<bool>& bad_map) {
  constexpr bool direct = std::is_same_v<T, S>;  // float32/float64: gather and accumulate in place
  const int64_t ntiles = (n_out + kTile - 1) / kTile;
  parallel_claim(ntiles, [&](auto&& claim) {
    const S* a[kTile];
    S* o[kTile];
    int32_t pair_in[kTile], pair_out[kTile];
    std::vector<S> rows(direct ? 0 : kTile * cin), acc(direct ? 0 : kTile * cout);
    bool bad = false;
    for (int64_t t = claim(); t >= 0; t = claim()) {
      const int64_t i0 = t * kTile, i1 = std::min(n_out, i0 + kTile);
      S* tile;
      if constexpr (direct) tile = out + i0 * cout;
      else tile = acc.data();
      for (int64_t i = 0; i < i1 - i0; ++i)
        for (int64_t c = 0; c < cout; ++c) tile[i * cout + c] = bias ? bias[c] : S(0);
      for (int64_t k = 0; k < K; ++k) {
        const int32_t* row = nbr + k * n_out;
        const int64_t m = collect_pairs(row, i0, i1, n_in, pair_in, pair_out, bad);
        for (int64_t p = 0; p < m; ++p) {
          if constexpr (direct) {
            a[p] = feats + int64_t(pair_in[p]) * cin;
          } else {
            copy_row(feats + int64_t(pair_in[p]) * cin, cin, rows.data() + p * cin);
            a[p] = rows.data() + p * cin;
          }
          o[p] = tile + (pair_out[p] - i0) * cout;
        }
        const S* wk = w + k * cin * cout;
        for (int64_t g = 0; g < m; g += kRows)
          gathered_rows_times_w<S>(int(std::min<int64_t>(kRows, m - g)), a + g, o + g, wk, cin, cout);
      }
      if constexpr (!direct) copy_row(tile, (i1 - i0) * cout, out + i0 * cout);
    }
    if (bad) bad_map = true;
  });
}

template <typename T, int NV>
void outer_block(int nr, const T* a, int64_t lda, const T* b, int64_t ldb, int64_t np, T* g, int64_t ldg) {
  switch (nr) {
    case 6: outer_accumulate<T, 6, NV>(a, lda, b, ldb, np, g, ldg); break;
    case 5: outer_accumulate<T, 5, NV>(a, lda, b, ldb, np, g, ldg); break;
    case 4: outer_accumulate<T, 4, NV>(a, lda, b, ldb, np, g, ldg); break;
    case 3: outer_accumulate<T, 3, NV>(a, lda, b, ldb, np, g, ldg); break;
    case 2: outer_accumulate<T, 2, NV>(a, lda, b, ldb, np, g, ldg); break;
    default: outer_accumulate<T, 1, NV>(a, lda, b, ldb, np, g, ldg); break;
  }
}

// g [cin, cout] += A^T B for np gathered pairs: A [np, cin], B [np, cout], both contiguous.
template <typename T>
void tile_outer(const T* A, int64_t cin, const T* B, int64_t cout, int64_t np, T* g) {
  constexpr int L = Vec<T>::lanes;
  // Rows in blocks of at most kRows, as even as possible (32 -> 6,6,5,5,5,5 rather than 6,6,6,6,6,2).
  const int64_t nblocks = (cin + kRows - 1) / kRows;
  for (int64_t blk = 0, r = 0; blk < nblocks; ++blk) {
    const int nr = int((cin - r) / (nblocks - blk));
    int64_t col = 0;
    for (; col + 2 * L <= cout; col += 2 * L) outer_block<T, 2>(nr, A + r, cin, B + col, cout, np, g + r * cout + col, cout);
    if (col + L <= cout) {
      outer_block<T, 1>(nr, A + r, cin, B + col, cout, np, g + r * cout + col, cout);
      col += L;
    }
    for (; col < cout; ++col)
      for (int rr = 0; rr < nr; ++rr) {
        T s = g[(r + rr) * cout + col];
        for (int64_t p = 0; p < np; ++p) s += A[p * cin + r + rr] * B[p * cout + col];
        g[(r + rr) * cout + col] = s;
      }
    r += nr;
  }
}

// Work items are fixed chunks of output rows; a chunk walks its rows in tiles and, per tile, every kernel offset,
// so the tile's gradient rows and the input rows around them stay in cache across all K offsets (offset-major
// order would stream all features from memory K times). Each chunk sums into its own [K, cin, cout] slot and
// the slots are added in chunk order, so the result does not depend on the thread count.
template <typename T, typename S = at::opmath_type<T>>
void conv_weight_grad(const T* feats, int64_t n_in, int64_t cin, const T* gout, int64_t cout, const int32_t* nbr,
                      int64_t K, int64_t n_out, T* gw, std::atomic<bool>& bad_map) {
  const int64_t block = cin * cout;
  // Enough chunks to balance the threads, but at most kPartialElems partial sums held at once.
  const int64_t max_chunks = std::max<int64_t>(1, kPartialElems / std::max<int64_t>(1, K * block));
  const int64_t nchunks = std::clamp<int64_t>((n_out + kChunk - 1) / kChunk, 1, max_chunks);
  const int64_t chunk_rows = (n_out + nchunks - 1) / nchunks;
  std::vector<S> partial(size_t(nchunks * K * block));
  parallel_claim(nchunks, [&](auto&& claim) {
    std::vector<S> A(kPairTile * cin), B(kPairTile * cout);
    int32_t pair_in[kPairTile], pair_out[kPairTile];
    bool bad = false;
    for (int64_t chunk = claim(); chunk >= 0; chunk = claim()) {
      S* g = partial.data() + chunk * K * block;
      std::fill(g, g + K * block, S(0));
      const int64_t end = std::min(n_out, (chunk + 1) * chunk_rows);
      for (int64_t i0 = chunk * chunk_rows; i0 < end; i0 += kPairTile) {
        for (int64_t k = 0; k < K; ++k) {
          const int64_t m =
              collect_pairs(nbr + k * n_out, i0, std::min(end, i0 + kPairTile), n_in, pair_in, pair_out, bad);
          if (m == 0) continue;
          for (int64_t p = 0; p < m; ++p) {
            copy_row(feats + int64_t(pair_in[p]) * cin, cin, A.data() + p * cin);
            copy_row(gout + int64_t(pair_out[p]) * cout, cout, B.data() + p * cout);
          }
          tile_outer<S>(A.data(), cin, B.data(), cout, m, g + k * block);
        }
      }
    }
    if (bad) bad_map = true;
  });
  // Chunk slots summed in chunk order (rounded once to T at the end).
  at::parallel_for(0, K * block, 4096, [&](int64_t e0, int64_t e1) {
    std::vector<S> sum(size_t(e1 - e0), S(0));
    for (int64_t c = 0; c < nchunks; ++c) {
      const S* src = partial.data() + c * K * block;
      for (int64_t e = e0; e < e1; ++e) sum[e - e0] += src[e];
    }
    copy_row(sum.data(), e1 - e0, gw + e0);
  });
}

at::Tensor sparse_conv_cpu(const at::Tensor& feats, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                           const at::Tensor& nbr, const c10::optional<at::Tensor>& nbr_t) {
  check_sparse_conv_args(feats, weight, bias, nbr, nbr_t);
  const int64_t cout = weight.size(2), n_out = nbr.size(1);
  // Weight and bias in the compute type (a no-op for float32/float64).
  const auto compute = at::toOpMathType(feats.scalar_type());
  const at::Tensor w = weight.to(compute);
  at::Tensor b;
  if (bias.has_value() && bias->defined()) b = bias->to(compute);
  at::Tensor out = at::empty({n_out, cout}, feats.options());
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, feats.scalar_type(), "sparse_conv", [&] {
    using S = at::opmath_type<scalar_t>;
    conv_forward<scalar_t>(feats.data_ptr<scalar_t>(), feats.size(0), feats.size(1), w.data_ptr<S>(),
                           b.defined() ? b.data_ptr<S>() : nullptr, nbr.data_ptr<int32_t>(), nbr.size(0), n_out,
                           cout, out.data_ptr<scalar_t>(), bad);
  });
  TORCH_CHECK_VALUE(!bad.load(), "nbr: refers to input rows >= feats.size(0) (", feats.size(0), ")");
  return out;
}

at::Tensor sparse_conv_weight_grad_cpu(const at::Tensor& feats, const at::Tensor& grad_out, const at::Tensor& nbr) {
  check_weight_grad_args(feats, grad_out, nbr);
  const int64_t K = nbr.size(0), cin = feats.size(1), cout = grad_out.size(1);
  at::Tensor gw = at::empty({K, cin, cout}, feats.options());
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, feats.scalar_type(), "sparse_conv_weight_grad", [&] {
    conv_weight_grad<scalar_t>(feats.data_ptr<scalar_t>(), feats.size(0), cin, grad_out.data_ptr<scalar_t>(), cout,
                               nbr.data_ptr<int32_t>(), K, nbr.size(1), gw.data_ptr<scalar_t>(), bad);
  });
  TORCH_CHECK_VALUE(!bad.load(), "nbr: refers to input rows >= feats.size(0) (", feats.size(0), ")");
  return gw;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseconv, CPU, m) {
  m.impl("sparse_conv", &sparse_conv_cpu);
  m.impl("sparse_conv_weight_grad", &sparse_conv_weight_grad_cpu);
}

}  // namespace sparseconv
