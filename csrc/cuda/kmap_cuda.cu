// Kernel maps on the GPU: the same maps as csrc/cpu/kmap_cpu.cpp, entry for entry (same layout nbr [K, N] int32
// with -1, same output order for strided maps: sorted by (b, x, y, z)), so CPU-vs-CUDA comparisons are exact.
//
// Everything stays on the device; each operator reads back one small block of flags (coordinate errors, and
// for build_strided_map the number of output sites) to raise the CPU's errors and size its outputs.
#include <array>
#include <numeric>

#include "cuda/coords_cuda.cuh"

namespace sparseconv {
namespace cuda {
namespace {

constexpr int kMaxKernel = 15;  // per axis, as check_triple(kernel_size, ..., 1, 15) enforces

// ------------------------------------------------------------------------------------------------------------
// Submanifold map: nbr[k, i] = row of coords[i] + offset k, looked up directly for every offset. (The CPU fills
// the mirrored half of an odd kernel from the other half; for unique coordinates both give the same map.)
// ------------------------------------------------------------------------------------------------------------

__global__ void subm_lookup_kernel(const int32_t* __restrict__ c, int64_t n, DeviceTable table, int64_t dx,
                                   int64_t dy, int64_t dz, int64_t k2, int64_t k1, int64_t sx, int64_t sy, int64_t sz,
                                   int32_t* __restrict__ nbr) {
  // blockIdx.y = kernel offset k = (a * k1 + b) * k2 + c; (dx, dy, dz) = dilation, (sx, sy, sz) = centring shift.
  const int64_t k = blockIdx.y;
  const int64_t a = k / (k1 * k2), b = (k / k2) % k1, cc = k % k2;
  const int64_t ox = a * dx - sx, oy = b * dy - sy, oz = cc * dz - sz;
  int32_t* row = nbr + k * n;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(blockDim.x) * gridDim.x) {
    const int32_t* r = c + 4 * i;
    const int64_t x = r[1] + ox, y = r[2] + oy, z = r[3] + oz;
    int32_t j = -1;
    if (uint64_t(x) < uint64_t(kAxisLimit) && uint64_t(y) < uint64_t(kAxisLimit) && uint64_t(z) < uint64_t(kAxisLimit) &&
        uint64_t(r[0]) < uint64_t(kBatchLimit))
      j = table.lookup(pack_key(r[0], x, y, z));
    row[i] = j;
  }
}

at::Tensor build_subm_map_cuda(const at::Tensor& coords, c10::IntArrayRef kernel_size, c10::IntArrayRef dilation) {
  check_subm_map_args(coords, kernel_size, dilation);
  c10::cuda::CUDAGuard guard(coords.device());
  const int64_t n = coords.size(0);
  const int64_t K = kernel_size[0] * kernel_size[1] * kernel_size[2];
  at::Tensor nbr = at::empty({K, n}, coords.options());
  if (n == 0) return nbr;
  Table table = make_table(n, coords);
  at::Tensor flags = make_flags(n, coords);
  insert_coords(coords, table, nullptr, flags);
  // Launched before the flags are read: lookups of a bad input are harmless (out-of-range rows were not
  // inserted, and the table never fills), and the map is discarded when the flags report a problem.
  const unsigned int gx = std::min<unsigned int>(blocks_for(n), 4096);
  subm_lookup_kernel<<<dim3(gx, static_cast<unsigned>(K)), kThreads, 0, current_stream()>>>(
      coords.data_ptr<int32_t>(), n, table.view(), dilation[0], dilation[1], dilation[2], kernel_size[2],
      kernel_size[1], (kernel_size[0] - 1) * dilation[0] / 2, (kernel_size[1] - 1) * dilation[1] / 2,
      (kernel_size[2] - 1) * dilation[2] / 2, nbr.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto f = read_back(flags.data_ptr<int64_t>(), 3, current_stream());
  raise_coord_errors(f.data(), coords, {}, "coords");
  return nbr;
}

// ------------------------------------------------------------------------------------------------------------
// Strided map (spconv's output rule): every output site some input reaches through some offset.
// ------------------------------------------------------------------------------------------------------------

struct Geometry {
  int64_t ks[3], st[3], pad[3], dil[3], out[3], in[3];
};

// Per axis, the (kernel index, output coordinate) pairs an input coordinate x reaches (as the CPU's axis_hits).
__device__ inline int axis_hits(const Geometry& g, int d, int64_t x, int8_t* ka, int32_t* oa) {
  int cnt = 0;
  for (int64_t a = 0; a < g.ks[d]; ++a) {
    const int64_t t = x + g.pad[d] - a * g.dil[d];
    if (t < 0 || t % g.st[d] != 0) continue;
    const int64_t o = t / g.st[d];
    if (o >= g.out[d]) continue;
    ka[cnt] = int8_t(a);
    oa[cnt] = int32_t(o);
    ++cnt;
  }
  return cnt;
}

// Calls fn(k, output key) for every hit of input row r (a valid, in-shape row).
template <typename F>
__device__ inline void for_each_hit(const Geometry& g, const int32_t* r, F&& fn) {
  int8_t ka[3][kMaxKernel];
  int32_t oa[3][kMaxKernel];
  const int nx = axis_hits(g, 0, r[1], ka[0], oa[0]);
  if (nx == 0) return;
  const int ny = axis_hits(g, 1, r[2], ka[1], oa[1]);
  if (ny == 0) return;
  const int nz = axis_hits(g, 2, r[3], ka[2], oa[2]);
  for (int ix = 0; ix < nx; ++ix)
    for (int iy = 0; iy < ny; ++iy)
      for (int iz = 0; iz < nz; ++iz) {
        const int64_t k = (int64_t(ka[0][ix]) * g.ks[1] + ka[1][iy]) * g.ks[2] + ka[2][iz];
        fn(k, pack_key(r[0], oa[0][ix], oa[1][iy], oa[2][iz]));
      }
}

__device__ inline bool valid_row(const Geometry& g, const int32_t* r) {
  return in_key_range(r[0], r[1], r[2], r[3]) && r[1] < g.in[0] && r[2] < g.in[1] && r[3] < g.in[2];
}

// bounded: a table sized by a guess, filled through DeviceTable::insert_bounded; a give-up sets *too_small and
// the pass stops early (the caller starts again). Otherwise a table sized for every possible output.
__global__ void strided_candidates_kernel(const int32_t* __restrict__ c, int64_t n, Geometry g, DeviceTable out,
                                          bool bounded, int64_t* too_small) {
  SPARSECONV_KERNEL_LOOP(j, n) {
    const int32_t* r = c + 4 * j;
    if (!valid_row(g, r)) continue;
    if (bounded) {
      if (*reinterpret_cast<volatile int64_t*>(too_small) != 0) return;
      for_each_hit(g, r, [&](int64_t, int64_t key) {
        if (!out.insert_bounded(key)) *reinterpret_cast<volatile int64_t*>(too_small) = 1;
      });
    } else {
      for_each_hit(g, r, [&](int64_t, int64_t key) { out.insert(key); });
    }
  }
}

__global__ void strided_fill_kernel(const int32_t* __restrict__ c, int64_t n, Geometry g, DeviceTable out, int64_t m,
                                    int32_t* __restrict__ nbr) {
  SPARSECONV_KERNEL_LOOP(j, n) {
    const int32_t* r = c + 4 * j;
    if (!valid_row(g, r)) continue;
    // Unique inputs give each (offset, output) slot at most one writer: no atomics needed.
    for_each_hit(g, r, [&](int64_t k, int64_t key) { nbr[k * m + out.lookup(key)] = int32_t(j); });
  }
}

std::tuple<at::Tensor, at::Tensor> build_strided_map_cuda(const at::Tensor& coords, c10::IntArrayRef spatial_shape,
                                                          c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                                          c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  const std::array<int64_t, 3> out_shape =
      check_strided_map_args(coords, spatial_shape, kernel_size, stride, padding, dilation, kAxisLimit);
  Geometry g;
  for (int d = 0; d < 3; ++d) {
    g.ks[d] = kernel_size[d];
    g.st[d] = stride[d];
    g.pad[d] = padding[d];
    g.dil[d] = dilation[d];
    g.out[d] = out_shape[d];
    g.in[d] = spatial_shape[d];
  }
  c10::cuda::CUDAGuard guard(coords.device());
  auto stream = current_stream();
  const int64_t n = coords.size(0);
  const int64_t K = kernel_size[0] * kernel_size[1] * kernel_size[2];
  if (n == 0) return {at::empty({0, 4}, coords.options()), at::full({K, 0}, -1, coords.options())};

  // Input checks (key range, spatial_shape, duplicates) through a table of the inputs; the first read back
  // raises the CPU's errors and gives the largest batch index, which bounds the number of output sites.
  Table inputs = make_table(n, coords);
  at::Tensor flags = make_flags(n, coords);
  insert_coords(coords, inputs, g.in, flags);
  const auto f = read_back(flags.data_ptr<int64_t>(), 5, stream);
  raise_coord_errors(f.data(), coords, spatial_shape, "coords");
  inputs = Table();  // freed before the output table is allocated

  // Candidate output keys, deduplicated by a table: at most per_input outputs per input and at most grid sites
  // per batch element.
  int64_t per_input = 1, grid = 1;
  for (int d = 0; d < 3; ++d) {
    const int64_t period = stride[d] / std::gcd(stride[d], dilation[d]);
    per_input *= (kernel_size[d] + period - 1) / period;
    grid *= g.out[d];
  }
  // min(n * per_input, grid * batches) without overflowing grid * batches (grid can reach ~2^51).
  const int64_t batches = f[4] + 1, by_inputs = n * per_input;
  const int64_t bound = grid > by_inputs / batches ? by_inputs : grid * batches;
  // As on the CPU, the table is first sized for 8 outputs per input, not for `bound` (27 per input for a 3x3x3
  // kernel, up to 3375 for 15^3: mostly wasted GPU memory). When more distinct outputs turn up (an insert gives
  // up), the pass starts again with a table sized for `bound`, which never fills.
  const int64_t guess = std::min(bound, std::max<int64_t>(8 * n, 4096));
  const int32_t* c = coords.data_ptr<int32_t>();
  Table outputs;
  at::Tensor keys;
  int64_t m = 0;
  for (const int64_t announced : {guess, bound}) {
    outputs = Table();  // the first table goes before the second is allocated
    keys = at::Tensor();
    outputs = make_table(announced, coords);
    at::Tensor state = at::zeros({2}, coords.options().dtype(at::kLong));  // [table too small, output sites]
    int64_t* st_d = state.data_ptr<int64_t>();
    strided_candidates_kernel<<<loop_blocks(n), kThreads, 0, stream>>>(c, n, g, outputs.view(), announced < bound,
                                                                       st_d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    keys = at::empty({outputs.capacity()}, coords.options().dtype(at::kLong));
    select_keys(outputs, keys, st_d + 1);
    // The second read back: whether the table sufficed, and the number of output sites.
    const auto st = read_back(st_d, 2, stream);
    m = st[1];
    if (st[0] == 0) break;
  }

  const at::Tensor sorted = sort_keys(keys, m);
  keys = at::Tensor();
  at::Tensor out_coords = assign_ranks(outputs, sorted, m);
  at::Tensor nbr = at::full({K, m}, -1, coords.options());
  if (m > 0) {
    strided_fill_kernel<<<loop_blocks(n), kThreads, 0, stream>>>(c, n, g, outputs.view(), m,
                                                                  nbr.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {out_coords, nbr};
}

// ------------------------------------------------------------------------------------------------------------
// invert_map: nbr_t[k, j] = i where nbr[k, i] = j. atomicMax keeps the last i, as the CPU's sequential loop does
// for (invalid) rows that name one input twice; valid maps name each input at most once per offset.
// ------------------------------------------------------------------------------------------------------------

// Offsets over blockIdx.y in steps of gridDim.y (at most 65535), as the CPU takes any K.
__global__ void invert_kernel(const int32_t* __restrict__ src, int64_t K, int64_t m, int64_t n_in,
                              int32_t* __restrict__ dst, int* bad) {
  for (int64_t k = blockIdx.y; k < K; k += gridDim.y) {
    const int32_t* row = src + k * m;
    int32_t* inv = dst + k * n_in;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < m; i += int64_t(blockDim.x) * gridDim.x) {
      const int32_t j = row[i];
      if (j < 0) continue;
      if (j >= n_in) {
        *bad = 1;
        continue;
      }
      atomicMax(inv + j, int32_t(i));
    }
  }
}

at::Tensor invert_map_cuda(const at::Tensor& nbr, int64_t n_in) {
  check_invert_map_args(nbr, n_in);
  c10::cuda::CUDAGuard guard(nbr.device());
  const int64_t K = nbr.size(0), m = nbr.size(1);
  at::Tensor out = at::full({K, n_in}, -1, nbr.options());
  if (K == 0 || m == 0) return out;
  at::Tensor bad = at::zeros({1}, nbr.options());
  auto stream = current_stream();
  const unsigned int gx = std::min<unsigned int>(blocks_for(m), 4096);
  const unsigned int gy = static_cast<unsigned int>(std::min<int64_t>(K, 65535));
  invert_kernel<<<dim3(gx, gy), kThreads, 0, stream>>>(nbr.data_ptr<int32_t>(), K, m, n_in, out.data_ptr<int32_t>(),
                                                      bad.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto b = read_back(bad.data_ptr<int32_t>(), 1, stream);
  TORCH_CHECK_VALUE(b[0] == 0, "nbr: holds input rows >= n_in (", n_in, ")");
  return out;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(sparseconv, CUDA, m) {
  m.impl("build_subm_map", &cuda::build_subm_map_cuda);
  m.impl("build_strided_map", &cuda::build_strided_map_cuda);
  m.impl("invert_map", &cuda::invert_map_cuda);
}

}  // namespace sparseconv
