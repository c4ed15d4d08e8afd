// GPU coordinate hash table, coordinate checks, key compaction and sorting (see coords_cuda.cuh).
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_select.cuh>

#include "cuda/coords_cuda.cuh"

namespace sparseconv {
namespace cuda {
namespace {

__global__ void insert_coords_kernel(const int32_t* __restrict__ c, int64_t n, DeviceTable table, bool check_shape,
                                     int64_t sx, int64_t sy, int64_t sz, long long* flags) {
  SPARSECONV_KERNEL_LOOP(i, n) {
    const int32_t* r = c + 4 * i;
    if (!in_key_range(r[0], r[1], r[2], r[3])) {
      atomicMin(flags + 0, (long long)i);
      continue;
    }
    if (check_shape && (r[1] >= sx || r[2] >= sy || r[3] >= sz)) atomicMin(flags + 1, (long long)i);
    // Read first: one atomic per row on one address would serialise the whole pass.
    if (r[0] > *reinterpret_cast<volatile long long*>(flags + 4)) atomicMax(flags + 4, (long long)r[0]);
    const int64_t s = table.insert(pack_key(r[0], r[1], r[2], r[3]));
    atomicMin(table.vals + s, int32_t(i));
  }
}

__global__ void find_duplicates_kernel(const int32_t* __restrict__ c, int64_t n, DeviceTable table,
                                       long long* flags) {
  SPARSECONV_KERNEL_LOOP(i, n) {
    const int32_t* r = c + 4 * i;
    if (!in_key_range(r[0], r[1], r[2], r[3])) continue;
    const int64_t s = table.find(pack_key(r[0], r[1], r[2], r[3]));
    if (s >= 0 && table.vals[s] != int32_t(i)) atomicMin(flags + 2, (long long)i);
  }
}

__global__ void init_flags_kernel(long long* flags, long long n) {
  const int t = threadIdx.x;
  if (t < 5) flags[t] = t < 3 ? n : 0;
}

struct NotEmpty {
  __host__ __device__ bool operator()(int64_t k) const { return k != kEmptyKey; }
};

__global__ void assign_ranks_kernel(const int64_t* __restrict__ sorted, int64_t m, DeviceTable table,
                                    int32_t* __restrict__ out) {
  SPARSECONV_KERNEL_LOOP(r, m) {
    const int64_t key = sorted[r];
    table.vals[table.find(key)] = int32_t(r);
    unpack_key(key, out + 4 * r);
  }
}

int64_t next_pow2(int64_t v) {
  int64_t p = 16;
  while (p < v) p <<= 1;
  return p;
}

}  // namespace

Table make_table(int64_t max_keys, const at::Tensor& like) {
  Table t;
  const int64_t cap = next_pow2(2 * std::max<int64_t>(max_keys, 1));
  t.mask = cap - 1;
  t.keys = at::full({cap}, kEmptyKey, like.options().dtype(at::kLong));
  t.vals = at::full({cap}, kNoRow, like.options().dtype(at::kInt));
  return t;
}

at::Tensor make_flags(int64_t n, const at::Tensor& like) {
  at::Tensor flags = at::empty({5}, like.options().dtype(at::kLong));
  init_flags_kernel<<<1, 32, 0, current_stream()>>>(reinterpret_cast<long long*>(flags.data_ptr<int64_t>()), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return flags;
}

void insert_coords(const at::Tensor& coords, const Table& table, const int64_t* shape, at::Tensor& flags) {
  const int64_t n = coords.size(0);
  if (n == 0) return;
  auto stream = current_stream();
  long long* f = reinterpret_cast<long long*>(flags.data_ptr<int64_t>());
  const int32_t* c = coords.data_ptr<int32_t>();
  insert_coords_kernel<<<loop_blocks(n), kThreads, 0, stream>>>(c, n, table.view(), shape != nullptr,
                                                                 shape ? shape[0] : 0, shape ? shape[1] : 0,
                                                                 shape ? shape[2] : 0, f);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  find_duplicates_kernel<<<loop_blocks(n), kThreads, 0, stream>>>(c, n, table.view(), f);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void raise_coord_errors(const int64_t* flags, const at::Tensor& coords, c10::IntArrayRef shape, const char* name) {
  const int64_t n = coords.size(0);
  if (flags[0] >= n && flags[1] >= n && flags[2] >= n) return;
  const at::Tensor host = coords.cpu();
  const int32_t* c = host.data_ptr<int32_t>();
  if (flags[0] < n) check_key_range(c, n, name);  // raises the CPU's message for the first bad row
  if (flags[1] < n) {
    const int32_t* r = c + 4 * flags[1];
    TORCH_CHECK_VALUE(false, name, ": row ", flags[1], " (", r[0], ", ", r[1], ", ", r[2], ", ", r[3],
                      ") lies outside spatial_shape ", shape);
  }
  // The first row (in row order) whose coordinate an earlier row holds, and that earlier row: the same pair the
  // CPU backend names.
  const int64_t i = flags[2];
  const int32_t* r = c + 4 * i;
  int64_t first = -1;
  for (int64_t j = 0; j < i && first < 0; ++j) {
    const int32_t* q = c + 4 * j;
    if (q[0] == r[0] && q[1] == r[1] && q[2] == r[2] && q[3] == r[3]) first = j;
  }
  TORCH_CHECK_VALUE(false, name, ": duplicate coordinate (", r[0], ", ", r[1], ", ", r[2], ", ", r[3], ") at rows ",
                    first, " and ", i, "; merge duplicates first (sparseconv.voxelize does)");
}

void select_keys(const Table& table, at::Tensor& out, int64_t* d_count) {
  auto stream = current_stream();
  const int64_t cap = table.capacity();
  size_t bytes = 0;
  C10_CUDA_CHECK(cub::DeviceSelect::If(nullptr, bytes, table.keys.data_ptr<int64_t>(), out.data_ptr<int64_t>(),
                                       d_count, cap, NotEmpty(), stream));
  at::Tensor tmp = at::empty({int64_t(bytes) + 1}, table.keys.options().dtype(at::kByte));
  C10_CUDA_CHECK(cub::DeviceSelect::If(tmp.data_ptr(), bytes, table.keys.data_ptr<int64_t>(),
                                       out.data_ptr<int64_t>(), d_count, cap, NotEmpty(), stream));
}

at::Tensor sort_keys(const at::Tensor& keys, int64_t m) {
  at::Tensor out = at::empty({m}, keys.options());
  if (m == 0) return out;
  auto stream = current_stream();
  size_t bytes = 0;
  // Keys are non-negative 63-bit values: sorting bits [0, 63) orders them as the CPU's radix sort does.
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, bytes, keys.data_ptr<int64_t>(), out.data_ptr<int64_t>(),
                                                m, 0, 63, stream));
  at::Tensor tmp = at::empty({int64_t(bytes) + 1}, keys.options().dtype(at::kByte));
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(tmp.data_ptr(), bytes, keys.data_ptr<int64_t>(),
                                                out.data_ptr<int64_t>(), m, 0, 63, stream));
  return out;
}

at::Tensor assign_ranks(const Table& table, const at::Tensor& sorted, int64_t m) {
  at::Tensor out = at::empty({m, 4}, sorted.options().dtype(at::kInt));
  if (m == 0) return out;
  assign_ranks_kernel<<<loop_blocks(m), kThreads, 0, current_stream()>>>(sorted.data_ptr<int64_t>(), m,
                                                                          table.view(), out.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace cuda
}  // namespace sparseconv
