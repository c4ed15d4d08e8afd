// Kernel maps: for each kernel offset k and output row i, the input row that offset reads (or -1).
//
// A map is a plain int32 tensor nbr [K, N_out] with k = (a * k1 + b) * k2 + c over kernel offsets (a, b, c);
// the transposed map nbr_t [K, N_in] answers the same question the other way round (used by backward and by
// the inverse convolution).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <atomic>
#include <memory>
#include <numeric>
#include <vector>

#include "checks.h"
#include "coords.h"

namespace sparseconv {
namespace {

struct Offset {
  int64_t dx, dy, dz;
};

// Offsets of a kernel, in map order; `shift` is subtracted per axis (centres submanifold kernels).
std::vector<Offset> kernel_offsets(c10::IntArrayRef ks, c10::IntArrayRef dil, const std::array<int64_t, 3>& shift) {
  std::vector<Offset> out;
  for (int64_t a = 0; a < ks[0]; ++a)
    for (int64_t b = 0; b < ks[1]; ++b)
      for (int64_t c = 0; c < ks[2]; ++c)
        out.push_back({a * dil[0] - shift[0], b * dil[1] - shift[1], c * dil[2] - shift[2]});
  return out;
}

// Raises a ValueError naming the first two rows of coords [n, 4] that hold the same coordinate; called once a
// parallel pass has seen a duplicate, so the message is the same whatever the thread count.
[[noreturn]] void raise_first_duplicate(const int32_t* c, int64_t n, const char* name) {
  CoordHash seq(n);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t* r = c + 4 * i;
    bool inserted;
    const int64_t s = seq.insert(pack_key(r[0], r[1], r[2], r[3]), &inserted);
    TORCH_CHECK_VALUE(inserted, name, ": duplicate coordinate (", r[0], ", ", r[1], ", ", r[2], ", ", r[3],
                      ") at rows ", seq.value_at(s), " and ", i,
                      "; merge duplicates first (sparseconv.voxelize does)");
    seq.set_value(s, int32_t(i));
  }
  TORCH_CHECK(false, name, ": a duplicate was reported but not found again");
}

// Inserts every row of coords with its row index as value; raises on a duplicate coordinate.
void insert_rows(CoordHash& table, const int32_t* c, int64_t n, const char* name) {
  std::atomic<bool> dup{false};
  at::parallel_for(0, n, 1 << 12, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int32_t* r = c + 4 * i;
      bool inserted;
      const int64_t s = table.insert(pack_key(r[0], r[1], r[2], r[3]), &inserted);
      if (inserted) {
        table.set_value(s, int32_t(i));
      } else {
        dup = true;
      }
    }
  });
  if (dup.load()) raise_first_duplicate(c, n, name);
}

at::Tensor build_subm_map_cpu(const at::Tensor& coords, c10::IntArrayRef kernel_size, c10::IntArrayRef dilation) {
  check_subm_map_args(coords, kernel_size, dilation);
  const int64_t n = coords.size(0);
  const int64_t K = kernel_size[0] * kernel_size[1] * kernel_size[2];
  at::Tensor nbr = at::full({K, n}, -1, coords.options());
  if (n == 0) return nbr;
  const int32_t* c = coords.data_ptr<int32_t>();
  check_key_range(c, n, "coords");
  CoordHash table(n);
  insert_rows(table, c, n, "coords");

  std::array<int64_t, 3> shift;
  bool odd = true;
  for (int d = 0; d < 3; ++d) {
    shift[d] = (kernel_size[d] - 1) * dilation[d] / 2;
    odd = odd && (kernel_size[d] % 2 == 1);
  }
  const auto offs = kernel_offsets(kernel_size, dilation, shift);
  int32_t* m = nbr.data_ptr<int32_t>();
  // Odd kernels are centre-symmetric: offset k finds j from i exactly when offset K-1-k finds i from j, so
  // half the lookups fill both halves; the centre is the identity.
  const int64_t n_query = odd ? K / 2 : K;
  const int64_t block = 2048;
  at::parallel_for(0, (n + block - 1) / block, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t lo = blk * block, hi = std::min(n, lo + block);
      for (int64_t k = 0; k < n_query; ++k) {
        const Offset o = offs[k];
        const int64_t delta = (o.dx << (2 * kAxisBits)) + (o.dy << kAxisBits) + o.dz;
        int32_t* row = m + k * n;
        int32_t* mirror = m + (K - 1 - k) * n;
        constexpr int64_t kAhead = 8;
        for (int64_t i = lo; i < hi; ++i) {
          if (i + kAhead < hi) {
            const int32_t* q = c + 4 * (i + kAhead);
            table.prefetch(pack_key(q[0], q[1], q[2], q[3]) + delta);
          }
          const int32_t* r = c + 4 * i;
          const int64_t x = r[1] + o.dx, y = r[2] + o.dy, z = r[3] + o.dz;
          if (uint64_t(x) >= uint64_t(kAxisLimit) || uint64_t(y) >= uint64_t(kAxisLimit) ||
              uint64_t(z) >= uint64_t(kAxisLimit))
            continue;
          const int32_t j = table.lookup(pack_key(r[0], x, y, z));
          if (j < 0) continue;
          row[i] = j;
          if (odd) mirror[j] = int32_t(i);
        }
      }
      if (odd) {
        int32_t* centre = m + (K / 2) * n;
        for (int64_t i = lo; i < hi; ++i) centre[i] = int32_t(i);
      }
    }
  });
  return nbr;
}

std::tuple<at::Tensor, at::Tensor> build_strided_map_cpu(const at::Tensor& coords, c10::IntArrayRef spatial_shape,
                                                         c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                                         c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  const std::array<int64_t, 3> out_shape =
      check_strided_map_args(coords, spatial_shape, kernel_size, stride, padding, dilation, kAxisLimit);
  const int64_t n = coords.size(0);
  const int64_t K = kernel_size[0] * kernel_size[1] * kernel_size[2];
  const int32_t* c = coords.data_ptr<int32_t>();
  if (n == 0) return {at::empty({0, 4}, coords.options()), at::full({K, 0}, -1, coords.options())};
  check_key_range(c, n, "coords");
  for (int64_t i = 0; i < n; ++i) {
    // A cheap sequential pass: out-of-shape inputs would silently fall outside the output grid.
    const int32_t* r = c + 4 * i;
    TORCH_CHECK_VALUE(r[1] < spatial_shape[0] && r[2] < spatial_shape[1] && r[3] < spatial_shape[2], "coords: row ",
                      i, " (", r[0], ", ", r[1], ", ", r[2], ", ", r[3], ") lies outside spatial_shape ",
                      spatial_shape);
  }

  // Per axis, the (kernel index, output coordinate) pairs an input coordinate reaches.
  auto axis_hits = [&](int d, int64_t x, int64_t* ka, int64_t* oa) {
    int cnt = 0;
    for (int64_t a = 0; a < kernel_size[d]; ++a) {
      const int64_t t = x + padding[d] - a * dilation[d];
      if (t < 0 || t % stride[d] != 0) continue;
      const int64_t o = t / stride[d];
      if (o >= out_shape[d]) continue;
      ka[cnt] = a;
      oa[cnt] = o;
      ++cnt;
    }
    return cnt;
  };
  int64_t per_input = 1;
  for (int d = 0; d < 3; ++d) {
    // Kernel indices hitting one output are congruent modulo stride / gcd(stride, dilation).
    const int64_t period = stride[d] / std::gcd(stride[d], dilation[d]);
    per_input *= (kernel_size[d] + period - 1) / period;
  }
  int64_t grid = 1;
  for (int d = 0; d < 3; ++d) grid *= out_shape[d];
  int64_t max_batch = 0;
  for (int64_t i = 0; i < n; ++i) max_batch = std::max<int64_t>(max_batch, c[4 * i]);
  // min(n * per_input, grid * batches) without overflowing grid * batches (grid can reach ~2^51).
  const int64_t batches = max_batch + 1, by_inputs = n * per_input;
  const int64_t bound = grid > by_inputs / batches ? by_inputs : grid * batches;

  // Visits every (offset k, input row j, output key) triple.
  auto for_each_hit = [&](int64_t j, auto&& fn) {
    const int32_t* r = c + 4 * j;
    int64_t ka[3][16], oa[3][16];
    const int nx = axis_hits(0, r[1], ka[0], oa[0]);
    const int ny = axis_hits(1, r[2], ka[1], oa[1]);
    const int nz = axis_hits(2, r[3], ka[2], oa[2]);
    for (int ix = 0; ix < nx; ++ix)
      for (int iy = 0; iy < ny; ++iy)
        for (int iz = 0; iz < nz; ++iz) {
          const int64_t k = (ka[0][ix] * kernel_size[1] + ka[1][iy]) * kernel_size[2] + ka[2][iz];
          fn(k, pack_key(r[0], oa[0][ix], oa[1][iy], oa[2][iz]));
        }
  };

  // The table is first sized for 8 outputs per input (a 3x3x3 kernel dilates a surface 3-6 fold), not for the
  // worst case of `bound` (27 per input: 8x the memory). When more distinct outputs turn up (scattered inputs),
  // the pass stops once the table is half full and starts again sized for `bound`. Between two checks each
  // thread adds at most per_input keys, so the first table never fills.
  const int64_t threads = at::get_num_threads();
  const int64_t guess = std::min(bound, std::max<int64_t>(8 * n, 2 * threads * per_input + 4096));
  std::unique_ptr<CoordHash> table;
  for (const int64_t announced : {guess, bound}) {
    table.reset();  // the first table goes before the second is allocated
    table = std::make_unique<CoordHash>(announced);
    const int64_t limit = table->capacity() / 2;  // >= bound when announced == bound: never reached then
    std::atomic<int64_t> count{0};
    std::atomic<bool> full{false};
    at::parallel_for(0, n, 1 << 12, [&](int64_t lo, int64_t hi) {
      bool inserted;
      for (int64_t j = lo; j < hi && !full.load(std::memory_order_relaxed); ++j) {
        int64_t added = 0;
        for_each_hit(j, [&](int64_t, int64_t key) {
          table->insert(key, &inserted);
          added += inserted;
        });
        if (added && count.fetch_add(added, std::memory_order_relaxed) + added > limit) full = true;
      }
    });
    if (!full.load()) break;
  }
  std::vector<int64_t> keys = table->keys();
  radix_sort(keys);
  const int64_t m = int64_t(keys.size());
  at::Tensor out_coords = at::empty({m, 4}, coords.options());
  int32_t* oc = out_coords.data_ptr<int32_t>();
  at::parallel_for(0, m, 1 << 12, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      table->set_value(table->find(keys[r]), int32_t(r));
      unpack_key(keys[r], oc + 4 * r);
    }
  });
  at::Tensor nbr = at::full({K, m}, -1, coords.options());
  int32_t* mp = nbr.data_ptr<int32_t>();
  // Two rows with one coordinate reach the same (offset, output) slots; claiming each row's first slot with a
  // CAS catches that without hashing the inputs. Rows that reach no output (at the grid's far border) are
  // checked among themselves afterwards.
  std::atomic<bool> dup{false};
  std::vector<uint8_t> no_hit(n, 0);
  at::parallel_for(0, n, 1 << 12, [&](int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j) {
      bool first = true;
      for_each_hit(j, [&](int64_t k, int64_t key) {
        int32_t* slot = mp + k * m + table->lookup(key);
        if (first) {
          int32_t expected = -1;
          if (!__atomic_compare_exchange_n(slot, &expected, int32_t(j), false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            dup = true;
          first = false;
        } else {
          *slot = int32_t(j);
        }
      });
      no_hit[j] = first;
    }
  });
  if (!dup.load()) {
    std::vector<int32_t> idle;
    for (int64_t j = 0; j < n; ++j)
      if (no_hit[j]) idle.insert(idle.end(), c + 4 * j, c + 4 * j + 4);
    CoordHash seen(int64_t(idle.size() / 4));
    for (size_t r = 0; r < idle.size() && !dup.load(); r += 4) {
      bool inserted;
      seen.insert(pack_key(idle[r], idle[r + 1], idle[r + 2], idle[r + 3]), &inserted);
      dup = !inserted;
    }
  }
  if (dup.load()) raise_first_duplicate(c, n, "coords");
  return {out_coords, nbr};
}

at::Tensor invert_map_cpu(const at::Tensor& nbr, int64_t n_in) {
  check_invert_map_args(nbr, n_in);
  const int64_t K = nbr.size(0), m = nbr.size(1);
  at::Tensor out = at::full({K, n_in}, -1, nbr.options());
  const int32_t* src = nbr.data_ptr<int32_t>();
  int32_t* dst = out.data_ptr<int32_t>();
  std::atomic<bool> bad{false};
  at::parallel_for(0, K, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int32_t* row = src + k * m;
      int32_t* inv = dst + k * n_in;
      for (int64_t i = 0; i < m; ++i) {
        const int32_t j = row[i];
        if (j < 0) continue;
        if (j >= n_in) {
          bad = true;
          continue;
        }
        inv[j] = int32_t(i);
      }
    }
  });
  TORCH_CHECK_VALUE(!bad.load(), "nbr: holds input rows >= n_in (", n_in, ")");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseconv, CPU, m) {
  m.impl("build_subm_map", &build_subm_map_cpu);
  m.impl("build_strided_map", &build_strided_map_cpu);
  m.impl("invert_map", &invert_map_cpu);
}

}  // namespace sparseconv
