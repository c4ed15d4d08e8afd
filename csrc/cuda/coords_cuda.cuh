// The GPU coordinate hash table and the coordinate checks shared by the CUDA kernel-map and voxelize operators
// (the counterpart of csrc/coords.h + csrc/cpu/coords_cpu.cpp).
//
// Open addressing with linear probing over packed 63-bit keys (csrc/coords.h), the same mix function as the CPU
// table. Capacity is a power of two at least twice the number of keys the caller announces, so every probe
// sequence ends at an empty slot. insert() relies on that bound (tables sized from the rows they receive);
// insert_bounded() caps the probe length instead (build_strided_map's first table, sized by a guess). Keys
// outside the packed range are never inserted; the operators report them with the CPU's ValueError.
#pragma once
#include "cuda/cuda_utils.cuh"

namespace sparseconv {
namespace cuda {

constexpr int64_t kEmptyKey = -1;
constexpr int32_t kNoRow = 0x7fffffff;  // value of a slot no row has claimed yet (atomicMin target)

__host__ __device__ inline uint64_t mix_key(uint64_t k) {
  k ^= k >> 31;
  k *= 0x9E3779B97F4A7C15ULL;
  k ^= k >> 29;
  return k;
}

// A view of the table that kernels take by value.
struct DeviceTable {
  int64_t* keys;
  int32_t* vals;
  int64_t mask;

  // Claims the slot of `key` (inserting it when absent) and returns it. A slot's key never changes once set, so
  // a plain (volatile) read settles occupied slots; the CAS runs only on empty ones (many points of one voxel
  // would otherwise serialise on its slot).
  __device__ int64_t insert(int64_t key) const {
    int64_t s = int64_t(mix_key(uint64_t(key)) & uint64_t(mask));
    while (true) {
      const int64_t seen = *reinterpret_cast<volatile const int64_t*>(keys + s);
      if (seen == key) return s;
      if (seen != kEmptyKey) {
        s = (s + 1) & mask;
        continue;
      }
      const unsigned long long prev = atomicCAS(reinterpret_cast<unsigned long long*>(keys + s),
                                                static_cast<unsigned long long>(kEmptyKey),
                                                static_cast<unsigned long long>(key));
      if (prev == static_cast<unsigned long long>(kEmptyKey) || prev == static_cast<unsigned long long>(key))
        return s;
      s = (s + 1) & mask;
    }
  }
  // insert() for a table that may be too small: gives up (false) after kMaxProbes occupied slots, so every call
  // ends even in a full table. A half-full table gives up with negligible probability (a run of 128 occupied
  // slots); the caller treats a give-up as "table too small" and starts again with a table sized for every key.
  static constexpr int kMaxProbes = 128;
  __device__ bool insert_bounded(int64_t key) const {
    int64_t s = int64_t(mix_key(uint64_t(key)) & uint64_t(mask));
    for (int p = 0; p < kMaxProbes; ++p, s = (s + 1) & mask) {
      const int64_t seen = *reinterpret_cast<volatile const int64_t*>(keys + s);
      if (seen == key) return true;
      if (seen != kEmptyKey) continue;
      const unsigned long long prev = atomicCAS(reinterpret_cast<unsigned long long*>(keys + s),
                                                static_cast<unsigned long long>(kEmptyKey),
                                                static_cast<unsigned long long>(key));
      if (prev == static_cast<unsigned long long>(kEmptyKey) || prev == static_cast<unsigned long long>(key))
        return true;
    }
    return false;
  }
  // Slot holding `key`, or -1. Only for kernels launched after the inserts.
  __device__ int64_t find(int64_t key) const {
    int64_t s = int64_t(mix_key(uint64_t(key)) & uint64_t(mask));
    while (true) {
      const int64_t k = keys[s];
      if (k == key) return s;
      if (k == kEmptyKey) return -1;
      s = (s + 1) & mask;
    }
  }
  __device__ int32_t lookup(int64_t key) const {
    const int64_t s = find(key);
    return s < 0 ? -1 : vals[s];
  }
};

// The table's storage (caching allocator, freed with the tensors). Keys start empty, values at kNoRow.
struct Table {
  at::Tensor keys;  // int64 [capacity]
  at::Tensor vals;  // int32 [capacity]
  int64_t mask = 0;
  DeviceTable view() const { return {keys.data_ptr<int64_t>(), vals.data_ptr<int32_t>(), mask}; }
  int64_t capacity() const { return mask + 1; }
};

Table make_table(int64_t max_keys, const at::Tensor& like);

// Flags of insert_coords, int64 [5] on the device: [0..2] preset to n (no problem found), [3] = 0 (left for the
// caller: an output size read back together with the flags), [4] = 0 (largest batch index).
at::Tensor make_flags(int64_t n, const at::Tensor& like);

// Inserts every row of coords [n, 4] (int32, on the device) whose key is in range, value = the smallest row
// index holding that coordinate, and records in flags (make_flags):
//   flags[0] = first row outside the packed-key range (such rows are not inserted),
//   flags[1] = first row with x/y/z >= spatial_shape (only when `shape` is given),
//   flags[2] = first row repeating an earlier row's coordinate,
//   flags[4] = the largest batch index of the rows in range.
void insert_coords(const at::Tensor& coords, const Table& table, const int64_t* shape, at::Tensor& flags);

// Raises the CPU backend's ValueError for the first problem that flags (read back) report; copies coords to the
// host to name the rows. Returns when there is none.
void raise_coord_errors(const int64_t* flags, const at::Tensor& coords, c10::IntArrayRef shape, const char* name);

// The keys present in `table`, in slot order, into out (int64 [capacity]); their count goes to *d_count on the
// device (read back by the caller with its other flags).
void select_keys(const Table& table, at::Tensor& out, int64_t* d_count);

// keys [>= m] -> the first m keys sorted ascending (radix sort on the current stream), a new tensor.
at::Tensor sort_keys(const at::Tensor& keys, int64_t m);

// For sorted unique keys [m]: sets the value of each key's slot to its rank and returns the unpacked
// coordinates int32 [m, 4] (row r = key r).
at::Tensor assign_ranks(const Table& table, const at::Tensor& sorted, int64_t m);

}  // namespace cuda
}  // namespace sparseconv
