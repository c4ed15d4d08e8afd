// Points -> unique voxels in O(P): hash the packed voxel keys, radix-sort the distinct ones, then look every
// point's voxel row up again. Feature reduction over point_to_voxel is left to torch's scatter ops (Python side).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>

#include "checks.h"
#include "coords.h"

namespace sparseconv {
namespace {

std::tuple<at::Tensor, at::Tensor> voxelize_cpu(const at::Tensor& points_in, c10::ArrayRef<double> voxel_size,
                                                c10::ArrayRef<double> origin) {
  check_voxelize_args(points_in, voxel_size, origin);
  // Voxel indices are computed in float64, so float32 points land exactly where floor((p - o) / v) says.
  const at::Tensor points = points_in.to(at::kDouble).contiguous();
  const int64_t P = points.size(0);
  const double* p = points.data_ptr<double>();
  auto int_opts = points_in.options().dtype(at::kInt);
  at::Tensor p2v = at::empty({P}, points_in.options().dtype(at::kLong));
  if (P == 0) return {at::empty({0, 4}, int_opts), p2v};

  std::vector<int64_t> key(P);
  std::atomic<int64_t> bad{P};
  at::parallel_for(0, P, 1 << 14, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      int64_t c[3];
      bool ok = true;
      for (int d = 0; d < 3; ++d) {
        const double q = std::floor((p[3 * i + d] - origin[d]) / voxel_size[d]);
        ok = ok && q >= 0 && q < double(kAxisLimit);  // also false for NaN
        c[d] = ok ? int64_t(q) : 0;
      }
      key[i] = pack_key(0, c[0], c[1], c[2]);
      if (!ok) {
        int64_t cur = bad.load();
        while (i < cur && !bad.compare_exchange_weak(cur, i)) {
        }
      }
    }
  });
  const int64_t b = bad.load();
  TORCH_CHECK_VALUE(b == P, "points: row ", b, " (", p[3 * b], ", ", p[3 * b + 1], ", ", p[3 * b + 2],
                    ") is not finite or lies outside [origin, origin + ", kAxisLimit,
                    " * voxel_size) per axis; origin = ", origin, ", voxel_size = ", voxel_size);

  CoordHash table(P);
  at::parallel_for(0, P, 1 << 14, [&](int64_t lo, int64_t hi) {
    bool inserted;
    for (int64_t i = lo; i < hi; ++i) table.insert(key[i], &inserted);
  });
  std::vector<int64_t> uniq = table.keys();
  radix_sort(uniq);
  const int64_t V = int64_t(uniq.size());
  at::Tensor coords = at::empty({V, 4}, int_opts);
  int32_t* oc = coords.data_ptr<int32_t>();
  at::parallel_for(0, V, 1 << 14, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      table.set_value(table.find(uniq[r]), int32_t(r));
      unpack_key(uniq[r], oc + 4 * r);
    }
  });
  int64_t* out = p2v.data_ptr<int64_t>();
  at::parallel_for(0, P, 1 << 14, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) out[i] = table.lookup(key[i]);
  });
  return {coords, p2v};
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseconv, CPU, m) { m.impl("voxelize", &voxelize_cpu); }

}  // namespace sparseconv
