// Packed coordinate keys and the coordinate hash table shared by every CPU operator.
//
// A key packs (batch, x, y, z) into 63 bits: 12 bits of batch and 17 bits per axis, so the empty slot (-1)
// can never collide with a real key. Callers check ranges before packing: nothing is silently truncated.
#pragma once
#include <cstdint>
#include <vector>

#include <c10/util/Exception.h>

// The key helpers below are shared with the CUDA kernels (csrc/cuda/), which need them on the device too.
#if defined(__CUDACC__)
#define SPARSECONV_HOST_DEVICE __host__ __device__
#else
#define SPARSECONV_HOST_DEVICE
#endif

namespace sparseconv {

constexpr int kAxisBits = 17;
constexpr int kBatchBits = 12;
constexpr int64_t kAxisLimit = int64_t(1) << kAxisBits;    // coordinates must be < 131072
constexpr int64_t kBatchLimit = int64_t(1) << kBatchBits;  // batch indices must be < 4096
constexpr int64_t kAxisMask = kAxisLimit - 1;

SPARSECONV_HOST_DEVICE inline int64_t pack_key(int64_t b, int64_t x, int64_t y, int64_t z) {
  return (b << (3 * kAxisBits)) | (x << (2 * kAxisBits)) | (y << kAxisBits) | z;
}

SPARSECONV_HOST_DEVICE inline void unpack_key(int64_t key, int32_t* out) {
  out[0] = int32_t(key >> (3 * kAxisBits));
  out[1] = int32_t((key >> (2 * kAxisBits)) & kAxisMask);
  out[2] = int32_t((key >> kAxisBits) & kAxisMask);
  out[3] = int32_t(key & kAxisMask);
}

SPARSECONV_HOST_DEVICE inline bool in_key_range(int64_t b, int64_t x, int64_t y, int64_t z) {
  return uint64_t(b) < uint64_t(kBatchLimit) && uint64_t(x) < uint64_t(kAxisLimit) &&
         uint64_t(y) < uint64_t(kAxisLimit) && uint64_t(z) < uint64_t(kAxisLimit);
}

// Raises a ValueError naming `name` for the first row of coords [n, 4] outside the packed-key range.
void check_key_range(const int32_t* coords, int64_t n, const char* name);

// Open addressing with linear probing; capacity is a power of two at least twice the number of keys the
// caller announces, so the table never fills. Inserts are lock-free (CAS on the key), lookups read-only.
class CoordHash {
 public:
  explicit CoordHash(int64_t max_keys);

  // Claims a slot for `key`; returns the slot and whether this call inserted it (false: already present).
  int64_t insert(int64_t key, bool* inserted);
  // Slot holding `key`, or -1.
  int64_t find(int64_t key) const {
    int64_t s = int64_t(mix(uint64_t(key)) & mask_);
    while (true) {
      const int64_t k = keys_[s];
      if (k == key) return s;
      if (k == kEmpty) return -1;
      s = (s + 1) & mask_;
    }
  }
  int64_t capacity() const { return mask_ + 1; }
  int32_t value_at(int64_t slot) const { return vals_[slot]; }
  void set_value(int64_t slot, int32_t v) { vals_[slot] = v; }
  int32_t lookup(int64_t key) const {
    const int64_t s = find(key);
    return s < 0 ? -1 : vals_[s];
  }
  void prefetch(int64_t key) const {
    const int64_t s = int64_t(mix(uint64_t(key)) & mask_);
    __builtin_prefetch(&keys_[s]);
    __builtin_prefetch(&vals_[s]);
  }
  // All stored keys, in slot order.
  std::vector<int64_t> keys() const;

 private:
  static constexpr int64_t kEmpty = -1;
  static uint64_t mix(uint64_t k) {
    k ^= k >> 31;
    k *= 0x9E3779B97F4A7C15ULL;
    k ^= k >> 29;
    return k;
  }
  int64_t mask_;
  std::vector<int64_t> keys_;
  std::vector<int32_t> vals_;
};

// Sorts keys ascending (LSD radix, 16-bit digits, skipping digits that are equal everywhere).
void radix_sort(std::vector<int64_t>& keys);

}  // namespace sparseconv
