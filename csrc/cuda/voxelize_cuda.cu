// Points -> unique voxels on the GPU, as csrc/cpu/voxelize_cpu.cpp: voxel index floor((p - origin) / voxel_size)
// in float64, distinct keys through the GPU hash table, radix-sorted (so voxels come out sorted by (x, y, z),
// batch 0, exactly as on the CPU), then every point looks its voxel row up. One read back: the number of voxels
// and the first bad point.
//
// HARDWARE STATUS: compile-checked for sm_90, not yet run on a GPU.
#include <cmath>

#include "cuda/coords_cuda.cuh"

namespace sparseconv {
namespace cuda {
namespace {

struct Frame {
  double origin[3], size[3];
};

__global__ void voxel_keys_kernel(const double* __restrict__ p, int64_t P, Frame fr, DeviceTable table,
                                  int64_t* __restrict__ key, long long* first_bad) {
  SPARSECONV_KERNEL_LOOP(i, P) {
    int64_t c[3];
    bool ok = true;
    for (int d = 0; d < 3; ++d) {
      const double q = floor((p[3 * i + d] - fr.origin[d]) / fr.size[d]);
      ok = ok && q >= 0 && q < double(kAxisLimit);  // also false for NaN
      c[d] = ok ? int64_t(q) : 0;
    }
    if (!ok) {
      atomicMin(first_bad, (long long)i);
      key[i] = kEmptyKey;
      continue;
    }
    const int64_t k = pack_key(0, c[0], c[1], c[2]);
    key[i] = k;
    table.insert(k);
  }
}

__global__ void point_rows_kernel(const int64_t* __restrict__ key, int64_t P, DeviceTable table,
                                  int64_t* __restrict__ out) {
  SPARSECONV_KERNEL_LOOP(i, P) { out[i] = key[i] == kEmptyKey ? -1 : table.lookup(key[i]); }
}

std::tuple<at::Tensor, at::Tensor> voxelize_cuda(const at::Tensor& points_in, c10::ArrayRef<double> voxel_size,
                                                 c10::ArrayRef<double> origin) {
  check_voxelize_args(points_in, voxel_size, origin);
  c10::cuda::CUDAGuard guard(points_in.device());
  auto stream = current_stream();
  const at::Tensor points = points_in.to(at::kDouble).contiguous();
  const int64_t P = points.size(0);
  auto int_opts = points_in.options().dtype(at::kInt);
  at::Tensor p2v = at::empty({P}, points_in.options().dtype(at::kLong));
  if (P == 0) return {at::empty({0, 4}, int_opts), p2v};

  Frame fr;
  for (int d = 0; d < 3; ++d) {
    fr.origin[d] = origin[d];
    fr.size[d] = voxel_size[d];
  }
  Table table = make_table(P, points);
  at::Tensor key = at::empty({P}, points.options().dtype(at::kLong));
  at::Tensor flags = at::full({2}, P, points.options().dtype(at::kLong));  // [first bad point, number of voxels]
  voxel_keys_kernel<<<loop_blocks(P), kThreads, 0, stream>>>(points.data_ptr<double>(), P, fr, table.view(),
                                                              key.data_ptr<int64_t>(),
                                                              reinterpret_cast<long long*>(flags.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor keys = at::empty({table.capacity()}, key.options());
  select_keys(table, keys, flags.data_ptr<int64_t>() + 1);
  const auto f = read_back(flags.data_ptr<int64_t>(), 2, stream);
  const int64_t b = f[0];
  if (b < P) {
    const at::Tensor row = points.select(0, b).cpu();
    const double* q = row.data_ptr<double>();
    TORCH_CHECK_VALUE(false, "points: row ", b, " (", q[0], ", ", q[1], ", ", q[2],
                      ") is not finite or lies outside [origin, origin + ", kAxisLimit,
                      " * voxel_size) per axis; origin = ", origin, ", voxel_size = ", voxel_size);
  }
  const int64_t V = f[1];
  const at::Tensor sorted = sort_keys(keys, V);
  at::Tensor coords = assign_ranks(table, sorted, V);
  point_rows_kernel<<<loop_blocks(P), kThreads, 0, stream>>>(key.data_ptr<int64_t>(), P, table.view(),
                                                              p2v.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {coords, p2v};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(sparseconv, CUDA, m) { m.impl("voxelize", &cuda::voxelize_cuda); }

}  // namespace sparseconv
