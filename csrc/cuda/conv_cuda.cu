// Sparse convolution on the GPU: out[i] = bias + sum_k feats[nbr[k, i]] @ weight[k], and its weight gradient.
// (The input gradient is this same operator on the transposed map; see sparseconv/ops.py.)
//
// Two paths, chosen per call by size (SPARSECONV_CUDA_ALGO=gemm|fused overrides the choice):
//
//  gemm   Gather-GEMM-scatter per kernel offset. The map's valid (input, output) pairs are compacted per offset,
//         in output order (one read back of K + 2 counts), then for each offset: gather the input rows, multiply
//         by weight[k] with at::mm_out (cuBLAS on the current stream; TF32 for float32 only when
//         torch.backends.cuda.matmul.allow_tf32 says so; tensor cores for float16/bfloat16), and add the rows to
//         their outputs. Outputs are distinct within one offset, so the scatter needs no atomics and the sum
//         over offsets is taken in offset order: deterministic. Half-precision outputs accumulate in float32
//         (each offset's product too, from torch 2.8 on: mm with a float32 result) and are rounded once.
//  fused  One kernel, output-stationary: a block owns a 64 x 64 tile of outputs, walks the kernel offsets,
//         gathers the tile's input rows into shared memory and multiplies them by weight[k] there; no pairs, no
//         read back, no atomics, a fixed summation order (bias, then offsets, then input channels, as the CPU;
//         the tensor-core kernel adds the bias to its float32 sums last).
//         float16/bfloat16 use tensor cores (WMMA 16x16x16, float32 accumulators) on sm_80 and newer;
//         float32/float64 (and half precision on older GPUs) use a register-tiled SIMT kernel.
//
// Weight gradient: per-offset at::mm on gathered blocks (gemm), or a fused SIMT kernel over (offset, row chunk,
// 16 x 16 channel tile) that either adds its partial sums with float atomics (fast, not bitwise reproducible) or,
// in deterministic mode (sparseconv.set_deterministic / torch.use_deterministic_algorithms), writes them to a
// buffer reduced in chunk order afterwards.
//
// HARDWARE STATUS: this file is compile-checked for sm_90 (tools/check_cuda_compile.py) but has NOT yet run on
// a GPU. Unverified on hardware: every kernel here; the size thresholds of the automatic choice are untuned
// guesses; the WMMA kernel (conv_fused_wmma_kernel) is the riskiest part (fragment layouts, alignment).
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_scan.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <array>
#include <atomic>

#include <ATen/ops/mm.h>
#include <torch/version.h>

#include "cuda/cuda_utils.cuh"

namespace sparseconv {
namespace cuda {
namespace {

// ------------------------------------------------------------------------------------------------------------
// Pairs: the valid entries of a map, grouped by offset, in output order within an offset.
// ------------------------------------------------------------------------------------------------------------

constexpr int kPairThreads = 256;

__global__ void pair_count_kernel(const int32_t* __restrict__ nbr, int64_t n_out, int64_t n_in, int64_t nblk,
                                  int64_t* __restrict__ counts, int* bad) {
  const int64_t k = blockIdx.y;
  const int64_t i = int64_t(blockIdx.x) * kPairThreads + threadIdx.x;
  int valid = 0;
  if (i < n_out) {
    const int32_t j = nbr[k * n_out + i];
    valid = j >= 0 && j < n_in;
    if (j >= n_in) *bad = 1;
  }
  using Reduce = cub::BlockReduce<int, kPairThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int total = Reduce(tmp).Sum(valid);
  if (threadIdx.x == 0) counts[k * nblk + blockIdx.x] = total;
}

// seg[k] = first pair of offset k, seg[K] = number of pairs, seg[K + 1] = the bad-entry flag.
__global__ void pair_segments_kernel(const int64_t* __restrict__ counts, const int64_t* __restrict__ starts,
                                     int64_t K, int64_t nblk, const int* bad, int64_t* __restrict__ seg) {
  SPARSECONV_KERNEL_LOOP(k, K + 2) {
    if (k < K) seg[k] = starts[k * nblk];
    else if (k == K) seg[k] = starts[K * nblk - 1] + counts[K * nblk - 1];
    else seg[k] = *bad;
  }
}

__global__ void pair_write_kernel(const int32_t* __restrict__ nbr, int64_t n_out, int64_t n_in, int64_t nblk,
                                  const int64_t* __restrict__ starts, int32_t* __restrict__ in_idx,
                                  int32_t* __restrict__ out_idx) {
  const int64_t k = blockIdx.y;
  const int64_t i = int64_t(blockIdx.x) * kPairThreads + threadIdx.x;
  int32_t j = -1;
  if (i < n_out) j = nbr[k * n_out + i];
  const int valid = j >= 0 && j < n_in;
  using Scan = cub::BlockScan<int, kPairThreads>;
  __shared__ typename Scan::TempStorage tmp;
  int local = 0;
  Scan(tmp).ExclusiveSum(valid, local);
  if (valid) {
    const int64_t p = starts[k * nblk + blockIdx.x] + local;
    in_idx[p] = j;
    out_idx[p] = int32_t(i);
  }
}

struct Pairs {
  at::Tensor in_idx, out_idx;  // int32 [P]
  std::vector<int64_t> seg;    // K + 1 offsets into the pair arrays
  bool bad = false;            // the map names input rows >= n_in
  int64_t max_count = 0;       // largest pair count of one offset
};

Pairs build_pairs(const at::Tensor& nbr, int64_t n_in) {
  const int64_t K = nbr.size(0), n_out = nbr.size(1);
  auto stream = current_stream();
  auto opts = nbr.options();
  Pairs pr;
  const int64_t nblk = (n_out + kPairThreads - 1) / kPairThreads;
  at::Tensor counts = at::empty({K * nblk}, opts.dtype(at::kLong));
  at::Tensor starts = at::empty({K * nblk}, opts.dtype(at::kLong));
  at::Tensor bad = at::zeros({1}, opts);
  at::Tensor seg = at::empty({K + 2}, opts.dtype(at::kLong));
  const dim3 grid{unsigned(nblk), unsigned(K)};
  pair_count_kernel<<<grid, kPairThreads, 0, stream>>>(nbr.data_ptr<int32_t>(), n_out, n_in, nblk,
                                                        counts.data_ptr<int64_t>(), bad.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  size_t bytes = 0;
  C10_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, bytes, counts.data_ptr<int64_t>(),
                                               starts.data_ptr<int64_t>(), K * nblk, stream));
  at::Tensor tmp = at::empty({int64_t(bytes) + 1}, opts.dtype(at::kByte));
  C10_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(tmp.data_ptr(), bytes, counts.data_ptr<int64_t>(),
                                               starts.data_ptr<int64_t>(), K * nblk, stream));
  pair_segments_kernel<<<1, kThreads, 0, stream>>>(counts.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), K, nblk,
                                                   bad.data_ptr<int32_t>(), seg.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto s = read_back(seg.data_ptr<int64_t>(), K + 2, stream);
  pr.seg.assign(s.begin(), s.begin() + K + 1);
  pr.bad = s[K + 1] != 0;
  for (int64_t k = 0; k < K; ++k) pr.max_count = std::max(pr.max_count, s[k + 1] - s[k]);
  const int64_t P = s[K];
  pr.in_idx = at::empty({P}, opts);
  pr.out_idx = at::empty({P}, opts);
  if (P > 0) {
    pair_write_kernel<<<grid, kPairThreads, 0, stream>>>(nbr.data_ptr<int32_t>(), n_out, n_in, nblk,
                                                          starts.data_ptr<int64_t>(), pr.in_idx.data_ptr<int32_t>(),
                                                          pr.out_idx.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return pr;
}

// ------------------------------------------------------------------------------------------------------------
// Gather / scatter for the gemm path.
// ------------------------------------------------------------------------------------------------------------

template <typename T>
__global__ void gather_rows_kernel(const T* __restrict__ src, const int32_t* __restrict__ idx, int64_t P, int64_t C,
                                   T* __restrict__ dst) {
  SPARSECONV_KERNEL_LOOP(e, P * C) {
    const int64_t p = e / C, c = e - p * C;
    dst[e] = src[int64_t(idx[p]) * C + c];
  }
}

template <typename T>
void gather_rows(const T* src, const int32_t* idx, int64_t P, int64_t C, T* dst, cudaStream_t stream) {
  if (P * C == 0) return;
  gather_rows_kernel<T><<<loop_blocks(P * C), kThreads, 0, stream>>>(src, idx, P, C, dst);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// acc[idx[p]] += src[p]: rows of idx are distinct within one call (one kernel offset), so no atomics.
template <typename T, typename AccT>
__global__ void scatter_add_rows_kernel(const T* __restrict__ src, const int32_t* __restrict__ idx, int64_t P,
                                        int64_t C, AccT* __restrict__ acc) {
  SPARSECONV_KERNEL_LOOP(e, P * C) {
    const int64_t p = e / C, c = e - p * C;
    AccT* o = acc + int64_t(idx[p]) * C + c;
    *o = *o + static_cast<AccT>(src[e]);
  }
}

template <typename T, typename AccT>
__global__ void init_rows_kernel(AccT* __restrict__ acc, const T* __restrict__ bias, int64_t n, int64_t C) {
  SPARSECONV_KERNEL_LOOP(e, n * C) { acc[e] = bias ? static_cast<AccT>(bias[e % C]) : AccT(0); }
}

// The input row of each of a tile's BM outputs for offset k into rows[] (-1: none; entries >= n_in set `bad` and
// count as none). Every thread of the block must call it (it ends in a barrier); true when any row is valid.
template <int BM>
__device__ __forceinline__ bool load_tile_rows(const int32_t* __restrict__ nbr, int k, int64_t i0, int64_t n_out,
                                               int64_t n_in, int tid, int32_t* rows, bool& bad) {
  int valid = 0;
  if (tid < BM) {
    const int64_t i = i0 + tid;
    int32_t j = -1;
    if (i < n_out) {
      j = nbr[int64_t(k) * n_out + i];
      if (j >= n_in) {
        bad = true;
        j = -1;
      }
      if (j < 0) j = -1;
    }
    rows[tid] = j;
    valid = j >= 0;
  }
  return __syncthreads_or(valid);
}

// ------------------------------------------------------------------------------------------------------------
// Fused forward, SIMT: 64 x 64 output tile per block of 256 threads, 4 x 4 outputs per thread.
// ------------------------------------------------------------------------------------------------------------

constexpr int kSimtBM = 64, kSimtBN = 64, kSimtBK = 16;

template <typename T, typename AccT>
__global__ void __launch_bounds__(256)
    conv_fused_simt_kernel(const T* __restrict__ feats, int64_t n_in, int cin, const T* __restrict__ w,
                           const T* __restrict__ bias, const int32_t* __restrict__ nbr, int K, int64_t n_out, int cout,
                           T* __restrict__ out, int* bad) {
  constexpr int BM = kSimtBM, BN = kSimtBN, BK = kSimtBK;
  __shared__ AccT As[BK][BM + 1];
  __shared__ AccT Bs[BK][BN];
  __shared__ int32_t rows[BM];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int64_t i0 = int64_t(blockIdx.x) * BM;
  const int n0 = blockIdx.y * BN;
  AccT acc[4][4];
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int col = n0 + tx + 16 * c;
    const AccT b0 = (bias != nullptr && col < cout) ? static_cast<AccT>(bias[col]) : AccT(0);
#pragma unroll
    for (int r = 0; r < 4; ++r) acc[r][c] = b0;
  }
  bool local_bad = false;
  for (int k = 0; k < K; ++k) {
    if (!load_tile_rows<BM>(nbr, k, i0, n_out, n_in, tid, rows, local_bad)) continue;  // none for offset k
    const T* wk = w + int64_t(k) * cin * cout;
    for (int c0 = 0; c0 < cin; c0 += BK) {
      for (int e = tid; e < BM * BK; e += 256) {
        const int r = e / BK, kk = e % BK;
        const int32_t j = rows[r];
        AccT v = AccT(0);
        if (j >= 0 && c0 + kk < cin) v = static_cast<AccT>(feats[int64_t(j) * cin + c0 + kk]);
        As[kk][r] = v;
      }
      for (int e = tid; e < BK * BN; e += 256) {
        const int kk = e / BN, col = e % BN;
        AccT v = AccT(0);
        if (c0 + kk < cin && n0 + col < cout) v = static_cast<AccT>(wk[int64_t(c0 + kk) * cout + n0 + col]);
        Bs[kk][col] = v;
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) {
        AccT a[4], b[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) a[r] = As[kk][ty + 16 * r];
#pragma unroll
        for (int c = 0; c < 4; ++c) b[c] = Bs[kk][tx + 16 * c];
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[r][c] += a[r] * b[c];
      }
      __syncthreads();
    }
  }
  if (local_bad) *bad = 1;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int64_t i = i0 + ty + 16 * r;
    if (i >= n_out) continue;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int col = n0 + tx + 16 * c;
      if (col < cout) out[i * cout + col] = static_cast<T>(acc[r][c]);
    }
  }
}

// ------------------------------------------------------------------------------------------------------------
// Fused forward, tensor cores (float16 / bfloat16, sm_80+). UNVERIFIED ON HARDWARE.
// 128 threads = 4 warps in a 2 x 2 grid, each warp a 32 x 32 quarter of the 64 x 64 tile (2 x 2 fragments).
// Shared tiles hold raw 16-bit values; leading dimensions are padded (multiples of 8 elements, 16-byte rows)
// and every fragment pointer is 32-byte aligned, as wmma::load_matrix_sync requires.
// ------------------------------------------------------------------------------------------------------------

template <typename T>
struct WmmaType;
template <>
struct WmmaType<c10::Half> {
  using type = __half;
};
template <>
struct WmmaType<c10::BFloat16> {
  using type = __nv_bfloat16;
};

constexpr int kTcBM = 64, kTcBN = 64, kTcBK = 32;
constexpr int kTcLDA = kTcBK + 8, kTcLDB = kTcBN + 8, kTcLDC = kTcBN + 4;

// VA: feats rows can be read as 16-byte vectors (cin % 8 == 0, aligned); VB: the same for weight rows.
template <typename T, bool VA, bool VB>
__global__ void __launch_bounds__(128)
    conv_fused_wmma_kernel(const T* __restrict__ feats, int64_t n_in, int cin, const T* __restrict__ w,
                           const T* __restrict__ bias, const int32_t* __restrict__ nbr, int K, int64_t n_out, int cout,
                           T* __restrict__ out, int* bad) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  using WT = typename WmmaType<T>::type;
  constexpr int BM = kTcBM, BN = kTcBN, BK = kTcBK, LDA = kTcLDA, LDB = kTcLDB, LDC = kTcLDC;
  __shared__ __align__(128) uint16_t As[BM * LDA];
  __shared__ __align__(128) uint16_t Bs[BK * LDB];
  __shared__ __align__(128) float Cs[BM * LDC];
  __shared__ int32_t rows[BM];
  const int tid = threadIdx.x, warp = tid >> 5, wm = warp >> 1, wn = warp & 1;
  const int64_t i0 = int64_t(blockIdx.x) * BM;
  const int n0 = blockIdx.y * BN;
  const uint16_t* f16 = reinterpret_cast<const uint16_t*>(feats);
  const uint16_t* w16 = reinterpret_cast<const uint16_t*>(w);

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int x = 0; x < 2; ++x)
#pragma unroll
    for (int y = 0; y < 2; ++y) wmma::fill_fragment(acc[x][y], 0.0f);

  bool local_bad = false;
  for (int k = 0; k < K; ++k) {
    if (!load_tile_rows<BM>(nbr, k, i0, n_out, n_in, tid, rows, local_bad)) continue;
    const uint16_t* wk = w16 + int64_t(k) * cin * cout;
    for (int c0 = 0; c0 < cin; c0 += BK) {
      if (VA) {
        for (int e = tid; e < BM * BK / 8; e += 128) {
          const int r = e / (BK / 8), q = (e % (BK / 8)) * 8;
          const int32_t j = rows[r];
          uint4 v = make_uint4(0, 0, 0, 0);
          if (j >= 0 && c0 + q < cin) v = *reinterpret_cast<const uint4*>(f16 + int64_t(j) * cin + c0 + q);
          *reinterpret_cast<uint4*>(As + r * LDA + q) = v;
        }
      } else {
        for (int e = tid; e < BM * BK; e += 128) {
          const int r = e / BK, kk = e % BK;
          const int32_t j = rows[r];
          As[r * LDA + kk] = (j >= 0 && c0 + kk < cin) ? f16[int64_t(j) * cin + c0 + kk] : uint16_t(0);
        }
      }
      if (VB) {
        for (int e = tid; e < BK * BN / 8; e += 128) {
          const int kk = e / (BN / 8), q = (e % (BN / 8)) * 8;
          uint4 v = make_uint4(0, 0, 0, 0);
          if (c0 + kk < cin && n0 + q < cout) v = *reinterpret_cast<const uint4*>(wk + int64_t(c0 + kk) * cout + n0 + q);
          *reinterpret_cast<uint4*>(Bs + kk * LDB + q) = v;
        }
      } else {
        for (int e = tid; e < BK * BN; e += 128) {
          const int kk = e / BN, col = e % BN;
          Bs[kk * LDB + col] =
              (c0 + kk < cin && n0 + col < cout) ? wk[int64_t(c0 + kk) * cout + n0 + col] : uint16_t(0);
        }
      }
      __syncthreads();
#pragma unroll
      for (int ks = 0; ks < BK; ks += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, WT, wmma::row_major> a[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, WT, wmma::row_major> b[2];
#pragma unroll
        for (int x = 0; x < 2; ++x)
          wmma::load_matrix_sync(a[x], reinterpret_cast<const WT*>(As) + (wm * 32 + 16 * x) * LDA + ks, LDA);
#pragma unroll
        for (int y = 0; y < 2; ++y)
          wmma::load_matrix_sync(b[y], reinterpret_cast<const WT*>(Bs) + ks * LDB + wn * 32 + 16 * y, LDB);
#pragma unroll
        for (int x = 0; x < 2; ++x)
#pragma unroll
          for (int y = 0; y < 2; ++y) wmma::mma_sync(acc[x][y], a[x], b[y], acc[x][y]);
      }
      __syncthreads();
    }
  }
  if (local_bad) *bad = 1;
#pragma unroll
  for (int x = 0; x < 2; ++x)
#pragma unroll
    for (int y = 0; y < 2; ++y)
      wmma::store_matrix_sync(Cs + (wm * 32 + 16 * x) * LDC + wn * 32 + 16 * y, acc[x][y], LDC, wmma::mem_row_major);
  __syncthreads();
  for (int e = tid; e < BM * BN; e += 128) {
    const int r = e / BN, col = e % BN;
    const int64_t i = i0 + r;
    const int cc = n0 + col;
    if (i < n_out && cc < cout) {
      float v = Cs[r * LDC + col];
      if (bias != nullptr) v += static_cast<float>(bias[cc]);
      out[i * cout + cc] = static_cast<T>(v);
    }
  }
#else
  // Compiled for an architecture without these tensor-core shapes; never launched (wmma_runs_here), but fail
  // loudly rather than leave `out` unwritten should that check ever be bypassed.
  __trap();
#endif
}

// ------------------------------------------------------------------------------------------------------------
// Fused weight gradient, SIMT: block = (row chunk, offset k, 16 x 16 tile of (cin, cout)).
// ATOMIC: add the block's partial sums to gw with float atomics; otherwise write them to
// partial[chunk][k][ci][co], reduced in chunk order by wgrad_reduce_kernel (deterministic).
// ------------------------------------------------------------------------------------------------------------

constexpr int kWgRows = 32;  // rows per shared-memory step

template <typename T, typename AccT, bool ATOMIC>
__global__ void __launch_bounds__(256)
    wgrad_fused_kernel(const T* __restrict__ feats, int64_t n_in, int cin, const T* __restrict__ gout, int cout,
                       const int32_t* __restrict__ nbr, int64_t n_out, int64_t chunk_rows, int K,
                       AccT* __restrict__ dst, int* bad) {
  __shared__ AccT As[kWgRows][17];
  __shared__ AccT Gs[kWgRows][17];
  __shared__ int32_t rows[kWgRows];
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int ntj = (cout + 15) / 16;
  const int ci0 = (blockIdx.z / ntj) * 16, co0 = (blockIdx.z % ntj) * 16;
  const int64_t k = blockIdx.y;
  const int64_t r0 = int64_t(blockIdx.x) * chunk_rows;
  const int64_t r1 = min(n_out, r0 + chunk_rows);
  AccT acc = AccT(0);
  bool local_bad = false;
  for (int64_t s = r0; s < r1; s += kWgRows) {
    int valid = 0;
    if (tid < kWgRows) {
      const int64_t i = s + tid;
      int32_t j = -1;
      if (i < r1) {
        j = nbr[k * n_out + i];
        if (j >= n_in) {
          local_bad = true;
          j = -1;
        }
        if (j < 0) j = -1;
      }
      rows[tid] = j;
      valid = j >= 0;
    }
    if (!__syncthreads_or(valid)) continue;
    for (int e = tid; e < kWgRows * 16; e += 256) {
      const int r = e >> 4, c = e & 15;
      const int32_t j = rows[r];
      As[r][c] = (j >= 0 && ci0 + c < cin) ? static_cast<AccT>(feats[int64_t(j) * cin + ci0 + c]) : AccT(0);
      Gs[r][c] = (j >= 0 && co0 + c < cout) ? static_cast<AccT>(gout[(s + r) * cout + co0 + c]) : AccT(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int r = 0; r < kWgRows; ++r) acc += As[r][ty] * Gs[r][tx];
    __syncthreads();
  }
  if (local_bad) *bad = 1;
  const int ci = ci0 + ty, co = co0 + tx;
  if (ci >= cin || co >= cout) return;
  const int64_t e = (k * cin + ci) * cout + co;
  if (ATOMIC) {
    if (acc != AccT(0)) atomicAdd(dst + e, acc);
  } else {
    dst[int64_t(blockIdx.x) * K * cin * cout + e] = acc;
  }
}

template <typename T, typename AccT>
__global__ void wgrad_reduce_kernel(const AccT* __restrict__ partial, int64_t nchunks, int64_t elems,
                                    T* __restrict__ gw) {
  SPARSECONV_KERNEL_LOOP(e, elems) {
    AccT s = AccT(0);
    for (int64_t c = 0; c < nchunks; ++c) s += partial[c * elems + e];
    gw[e] = static_cast<T>(s);
  }
}

template <typename T, typename AccT>
__global__ void cast_kernel(const AccT* __restrict__ src, int64_t n, T* __restrict__ dst) {
  SPARSECONV_KERNEL_LOOP(e, n) { dst[e] = static_cast<T>(src[e]); }
}

// ------------------------------------------------------------------------------------------------------------
// Host side.
// ------------------------------------------------------------------------------------------------------------

bool is_half(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

// Size-based choice of the forward path. The thresholds are first guesses, to be tuned on hardware: the fused
// kernel wins while the per-offset GEMMs are small and memory-bound (few channels), cuBLAS once they are large.
bool use_fused_forward(at::ScalarType t, int64_t cin, int64_t cout) {
  switch (algo_override()) {
    case Algo::kGemm: return false;
    case Algo::kFused: return true;
    default: break;
  }
  if (is_half(t)) return cin <= 128 && cout <= 128;
  return cin <= 32 && cout <= 64;
}

// The fused weight gradient is a SIMT kernel (no tensor cores; 2.2 TFLOP/s measured on an H200): it only pays
// while the whole product is small enough that the gemm path's per-offset launches (two gathers and a cuBLAS
// call per offset, after a host read of the pair counts) cost more than the arithmetic. 2 * n_out * K * cin * cout
// bounds the work from above (every map entry active) without reading the map; 2^30 is about 0.5 ms of SIMT work.
// The first H200 run (1M voxels, C = 64, fp16) took 31.8 ms fused and 6.4 ms through cuBLAS; the old choice
// (cin * cout <= 64 * 64, whatever the size) sent it to the fused kernel. Channel tiles past the kernel's grid.z
// limit always take the gemm path.
bool use_fused_wgrad(int64_t n_out, int64_t K, int64_t cin, int64_t cout) {
  const bool fits = ((cin + 15) / 16) * ((cout + 15) / 16) <= 65535;
  switch (algo_override()) {
    case Algo::kGemm: return false;
    case Algo::kFused:
      TORCH_CHECK_VALUE(fits, "SPARSECONV_CUDA_ALGO=fused: the fused weight gradient takes at most 65535 tiles of "
                        "16 x 16 channels, got cin = ", cin, ", cout = ", cout);
      return true;
    default: break;
  }
  const double work = 2.0 * double(n_out) * double(K) * double(cin) * double(cout);
  return fits && work <= double(int64_t(1) << 30);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Whether the code this device runs for the tensor-core kernel was compiled for sm_80 or newer (its virtual
// architecture, as CUB's PtxVersion reads it). A device check alone is not enough: a build holding only older
// code (e.g. TORCH_CUDA_ARCH_LIST="7.5+PTX", JIT-compiled for an sm_80+ GPU) runs the kernel's __trap() branch,
// which kills the CUDA context. Without that code the SIMT kernel runs instead.
template <typename T>
bool wmma_runs_here() {
  // Cached per device (0 unknown, 1 no, 2 yes): two driver queries per call would add host latency to every
  // small convolution.
  static std::array<std::atomic<int>, 256> known{};
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  const int cached = dev < 256 ? known[dev].load(std::memory_order_relaxed) : 0;
  if (cached != 0) return cached == 2;
  bool ok = device_major() >= 8;
  if (ok) {
    cudaFuncAttributes attr;
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, conv_fused_wmma_kernel<T, false, false>));
    ok = attr.ptxVersion >= 80;
  }
  if (dev < 256) known[dev].store(ok ? 2 : 1, std::memory_order_relaxed);
  return ok;
}

template <typename T>
void launch_fused_forward(const at::Tensor& feats, const at::Tensor& weight, const T* bias, const at::Tensor& nbr,
                          at::Tensor& out, int* bad, cudaStream_t stream) {
  using AccT = at::acc_type<T, true>;
  const int64_t n_in = feats.size(0), n_out = nbr.size(1);
  const int cin = int(feats.size(1)), cout = int(out.size(1)), K = int(nbr.size(0));
  const T* f = feats.data_ptr<T>();
  const T* w = weight.data_ptr<T>();
  T* o = out.data_ptr<T>();
  const int32_t* m = nbr.data_ptr<int32_t>();
  if constexpr (Is16Bit<T>::value) {
    if (wmma_runs_here<T>()) {
      const dim3 grid{blocks_for(n_out, kTcBM), unsigned((cout + kTcBN - 1) / kTcBN)};
      const bool va = cin % 8 == 0 && aligned16(f), vb = cout % 8 == 0 && aligned16(w);
      if (va && vb)
        conv_fused_wmma_kernel<T, true, true><<<grid, 128, 0, stream>>>(f, n_in, cin, w, bias, m, K, n_out, cout, o, bad);
      else if (va)
        conv_fused_wmma_kernel<T, true, false><<<grid, 128, 0, stream>>>(f, n_in, cin, w, bias, m, K, n_out, cout, o, bad);
      else if (vb)
        conv_fused_wmma_kernel<T, false, true><<<grid, 128, 0, stream>>>(f, n_in, cin, w, bias, m, K, n_out, cout, o, bad);
      else
        conv_fused_wmma_kernel<T, false, false><<<grid, 128, 0, stream>>>(f, n_in, cin, w, bias, m, K, n_out, cout, o, bad);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
  }
  const dim3 grid{blocks_for(n_out, kSimtBM), unsigned((cout + kSimtBN - 1) / kSimtBN)};
  conv_fused_simt_kernel<T, AccT><<<grid, 256, 0, stream>>>(f, n_in, cin, w, bias, m, K, n_out, cout, o, bad);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// at::mm with a float32 result for float16/bfloat16 inputs (mm.dtype_out, torch >= 2.8).
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
#define SPARSECONV_MM_OUT_DTYPE 1
#else
#define SPARSECONV_MM_OUT_DTYPE 0
#endif

template <typename T>
at::Tensor gemm_forward(const at::Tensor& feats, const at::Tensor& weight, const T* bias, const at::Tensor& nbr,
                        const Pairs& pr, cudaStream_t stream) {
  using AccT = at::acc_type<T, true>;
  const int64_t n_out = nbr.size(1), K = nbr.size(0), cin = feats.size(1), cout = weight.size(2);
  constexpr bool kSeparateAcc = !std::is_same<T, AccT>::value;  // half precision: accumulate in float32
  // Half precision: each offset's product leaves cuBLAS in float32 too (its fp32 accumulator, not rounded), so
  // an output is rounded once, at the end, as on the CPU and in the fused kernels. Older torch has no such mm:
  // there each product is rounded to T before the float32 sum.
  using ProdT = std::conditional_t<kSeparateAcc && SPARSECONV_MM_OUT_DTYPE, AccT, T>;
  at::Tensor out = at::empty({n_out, cout}, feats.options());
  at::Tensor acc = kSeparateAcc ? at::empty({n_out, cout}, feats.options().dtype(c10::CppTypeToScalarType<AccT>::value))
                                : out;
  AccT* a = acc.data_ptr<AccT>();
  init_rows_kernel<T, AccT><<<loop_blocks(n_out * cout), kThreads, 0, stream>>>(a, bias, n_out, cout);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (pr.max_count > 0) {
    at::Tensor gathered = at::empty({pr.max_count, cin}, feats.options());
    at::Tensor product =
        at::empty({pr.max_count, cout}, feats.options().dtype(c10::CppTypeToScalarType<ProdT>::value));
    const int32_t* in_idx = pr.in_idx.data_ptr<int32_t>();
    const int32_t* out_idx = pr.out_idx.data_ptr<int32_t>();
    for (int64_t k = 0; k < K; ++k) {
      const int64_t p0 = pr.seg[k], P = pr.seg[k + 1] - p0;
      if (P == 0) continue;
      gather_rows<T>(feats.data_ptr<T>(), in_idx + p0, P, cin, gathered.data_ptr<T>(), stream);
      at::Tensor prod = product.narrow(0, 0, P);
#if SPARSECONV_MM_OUT_DTYPE
      if (kSeparateAcc)
        at::mm_out(prod, gathered.narrow(0, 0, P), weight.select(0, k), prod.scalar_type());
      else
#endif
        at::mm_out(prod, gathered.narrow(0, 0, P), weight.select(0, k));
      scatter_add_rows_kernel<ProdT, AccT><<<loop_blocks(P * cout), kThreads, 0, stream>>>(
          product.data_ptr<ProdT>(), out_idx + p0, P, cout, a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  if (kSeparateAcc) {
    cast_kernel<T, AccT><<<loop_blocks(n_out * cout), kThreads, 0, stream>>>(a, n_out * cout, out.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

void raise_bad_map(const at::Tensor& feats) {
  TORCH_CHECK_VALUE(false, "nbr: refers to input rows >= feats.size(0) (", feats.size(0), ")");
}

at::Tensor sparse_conv_cuda(const at::Tensor& feats, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            const at::Tensor& nbr, const c10::optional<at::Tensor>& nbr_t) {
  check_sparse_conv_args(feats, weight, bias, nbr, nbr_t);
  const int64_t cout = weight.size(2), n_out = nbr.size(1), cin = feats.size(1);
  check_cuda_conv_limits(nbr, cin, cout);
  const at::Tensor* b = bias.has_value() && bias->defined() ? &*bias : nullptr;
  c10::cuda::CUDAGuard guard(feats.device());
  auto stream = current_stream();
  if (n_out == 0 || cout == 0) return at::empty({n_out, cout}, feats.options());
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "sparse_conv_cuda", [&] {
    const scalar_t* bp = b ? b->data_ptr<scalar_t>() : nullptr;
    if (nbr.size(0) == 0 || use_fused_forward(feats.scalar_type(), cin, cout)) {
      out = at::empty({n_out, cout}, feats.options());
      at::Tensor bad = at::zeros({1}, nbr.options());
      launch_fused_forward<scalar_t>(feats, weight, bp, nbr, out, bad.data_ptr<int32_t>(), stream);
      if (sync_checks() && read_back(bad.data_ptr<int32_t>(), 1, stream)[0] != 0) raise_bad_map(feats);
    } else {
      const Pairs pr = build_pairs(nbr, feats.size(0));
      if (pr.bad) raise_bad_map(feats);
      out = gemm_forward<scalar_t>(feats, weight, bp, nbr, pr, stream);
    }
  });
  return out;
}

at::Tensor sparse_conv_weight_grad_cuda(const at::Tensor& feats, const at::Tensor& grad_out, const at::Tensor& nbr) {
  check_weight_grad_args(feats, grad_out, nbr);
  const int64_t K = nbr.size(0), cin = feats.size(1), cout = grad_out.size(1), n_out = nbr.size(1);
  const int64_t n_in = feats.size(0);
  check_cuda_conv_limits(nbr, cin, cout);
  c10::cuda::CUDAGuard guard(feats.device());
  auto stream = current_stream();
  at::Tensor gw = at::zeros({K, cin, cout}, feats.options());
  if (K == 0 || cin == 0 || cout == 0 || n_out == 0) return gw;
  const int64_t elems = K * cin * cout;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feats.scalar_type(), "sparse_conv_weight_grad_cuda", [&] {
    using AccT = at::acc_type<scalar_t, true>;
    const auto acc_dtype = c10::CppTypeToScalarType<AccT>::value;
    if (use_fused_wgrad(n_out, K, cin, cout)) {
      at::Tensor bad = at::zeros({1}, nbr.options());
      const int tiles = int(((cin + 15) / 16) * ((cout + 15) / 16));  // <= 65535: use_fused_wgrad
      const scalar_t* f = feats.data_ptr<scalar_t>();
      const scalar_t* g = grad_out.data_ptr<scalar_t>();
      const int32_t* m = nbr.data_ptr<int32_t>();
      if (!deterministic_mode()) {
        // Partial sums meet in float atomics: fast, but the last bits depend on the order blocks finish.
        const int64_t chunk_rows = 1024;
        const dim3 grid{blocks_for(n_out, int(chunk_rows)), unsigned(K), unsigned(tiles)};
        at::Tensor acc = std::is_same<scalar_t, AccT>::value ? gw : at::zeros({K, cin, cout}, feats.options().dtype(acc_dtype));
        wgrad_fused_kernel<scalar_t, AccT, true><<<grid, 256, 0, stream>>>(
            f, n_in, int(cin), g, int(cout), m, n_out, chunk_rows, int(K), acc.data_ptr<AccT>(), bad.data_ptr<int32_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (!std::is_same<scalar_t, AccT>::value) {
          cast_kernel<scalar_t, AccT><<<loop_blocks(elems), kThreads, 0, stream>>>(acc.data_ptr<AccT>(), elems,
                                                                                    gw.data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      } else {
        // Deterministic: each chunk writes its own partial sums, added in chunk order (as the CPU backend does).
        const int64_t max_chunks = std::max<int64_t>(1, (int64_t(1) << 24) / elems);
        const int64_t nchunks = std::clamp<int64_t>((n_out + 4095) / 4096, 1, max_chunks);
        const int64_t chunk_rows = (n_out + nchunks - 1) / nchunks;
        at::Tensor partial = at::empty({nchunks, K, cin, cout}, feats.options().dtype(acc_dtype));
        const dim3 grid{unsigned(nchunks), unsigned(K), unsigned(tiles)};
        wgrad_fused_kernel<scalar_t, AccT, false><<<grid, 256, 0, stream>>>(
            f, n_in, int(cin), g, int(cout), m, n_out, chunk_rows, int(K), partial.data_ptr<AccT>(),
            bad.data_ptr<int32_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        wgrad_reduce_kernel<scalar_t, AccT><<<loop_blocks(elems), kThreads, 0, stream>>>(
            partial.data_ptr<AccT>(), nchunks, elems, gw.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (sync_checks() && read_back(bad.data_ptr<int32_t>(), 1, stream)[0] != 0) raise_bad_map(feats);
    } else {
      // Per-offset GEMMs on gathered blocks: no atomics, deterministic (cuBLAS).
      const Pairs pr = build_pairs(nbr, n_in);
      if (pr.bad) raise_bad_map(feats);
      if (pr.max_count > 0) {
        // Half precision (torch >= 2.8): float32 results, rounded once into gw at the end, as the fused kernel and
        // the CPU do; a result in T would let cuBLAS reduce split-K partial sums of these long (P-row) products in
        // T too (torch's allow_fp16/bf16_reduced_precision_reduction, on by default).
        constexpr bool kFloatGrad = !std::is_same<scalar_t, AccT>::value && SPARSECONV_MM_OUT_DTYPE;
        at::Tensor gacc = kFloatGrad ? at::zeros({K, cin, cout}, feats.options().dtype(acc_dtype)) : gw;
        at::Tensor a = at::empty({pr.max_count, cin}, feats.options());
        at::Tensor go = at::empty({pr.max_count, cout}, feats.options());
        const int32_t* in_idx = pr.in_idx.data_ptr<int32_t>();
        const int32_t* out_idx = pr.out_idx.data_ptr<int32_t>();
        for (int64_t k = 0; k < K; ++k) {
          const int64_t p0 = pr.seg[k], P = pr.seg[k + 1] - p0;
          if (P == 0) continue;
          gather_rows<scalar_t>(feats.data_ptr<scalar_t>(), in_idx + p0, P, cin, a.data_ptr<scalar_t>(), stream);
          gather_rows<scalar_t>(grad_out.data_ptr<scalar_t>(), out_idx + p0, P, cout, go.data_ptr<scalar_t>(), stream);
          at::Tensor gk = gacc.select(0, k);
#if SPARSECONV_MM_OUT_DTYPE
          if (kFloatGrad)
            at::mm_out(gk, a.narrow(0, 0, P).t(), go.narrow(0, 0, P), acc_dtype);
          else
#endif
            at::mm_out(gk, a.narrow(0, 0, P).t(), go.narrow(0, 0, P));
        }
        if (kFloatGrad) {
          cast_kernel<scalar_t, AccT><<<loop_blocks(elems), kThreads, 0, stream>>>(gacc.data_ptr<AccT>(), elems,
                                                                                    gw.data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      }
    }
  });
  return gw;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(sparseconv, CUDA, m) {
  m.impl("sparse_conv", &cuda::sparse_conv_cuda);
  m.impl("sparse_conv_weight_grad", &cuda::sparse_conv_weight_grad_cuda);
}

}  // namespace sparseconv
