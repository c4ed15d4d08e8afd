#include "coords.h"

#include <algorithm>
#include <atomic>

#include <ATen/Parallel.h>

namespace sparseconv {

void check_key_range(const int32_t* c, int64_t n, const char* name) {
  std::atomic<int64_t> bad{n};
  at::parallel_for(0, n, 1 << 14, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int32_t* r = c + 4 * i;
      if (!in_key_range(r[0], r[1], r[2], r[3])) {
        int64_t cur = bad.load();
        while (i < cur && !bad.compare_exchange_weak(cur, i)) {
        }
        return;
      }
    }
  });
  const int64_t i = bad.load();
  if (i == n) return;
  const int32_t* r = c + 4 * i;
  TORCH_CHECK_VALUE(r[0] >= 0 && r[1] >= 0 && r[2] >= 0 && r[3] >= 0, name,
                    ": coordinates must be non-negative, row ", i, " is (", r[0], ", ", r[1], ", ", r[2], ", ",
                    r[3], ")");
  TORCH_CHECK_VALUE(false, name, ": row ", i, " (", r[0], ", ", r[1], ", ", r[2], ", ", r[3],
                    ") is outside the packed-key range (batch < ", kBatchLimit, ", x, y, z < ", kAxisLimit, ")");
}

static int64_t next_pow2(int64_t v) {
  int64_t p = 16;
  while (p < v) p <<= 1;
  return p;
}

CoordHash::CoordHash(int64_t max_keys)
    : mask_(next_pow2(2 * std::max<int64_t>(max_keys, 1)) - 1), keys_(mask_ + 1, kEmpty), vals_(mask_ + 1) {}

int64_t CoordHash::insert(int64_t key, bool* inserted) {
  int64_t s = int64_t(mix(uint64_t(key)) & mask_);
  while (true) {
    int64_t cur = __atomic_load_n(&keys_[s], __ATOMIC_RELAXED);
    if (cur == kEmpty) {
      int64_t expected = kEmpty;
      if (__atomic_compare_exchange_n(&keys_[s], &expected, key, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
        *inserted = true;
        return s;
      }
      cur = expected;
    }
    if (cur == key) {
      *inserted = false;
      return s;
    }
    s = (s + 1) & mask_;
  }
}

std::vector<int64_t> CoordHash::keys() const {
  std::vector<int64_t> out;
  for (int64_t k : keys_) {
    if (k != kEmpty) out.push_back(k);
  }
  return out;
}

void radix_sort(std::vector<int64_t>& keys) {
  const size_t n = keys.size();
  if (n < 2) return;
  int64_t all_or = 0, all_and = -1;
  for (int64_t k : keys) {
    all_or |= k;
    all_and &= k;
  }
  const uint64_t varying = uint64_t(all_or ^ all_and);
  std::vector<int64_t> tmp(n);
  std::vector<uint32_t> count(1 << 16);
  for (int shift = 0; shift < 64; shift += 16) {
    if (((varying >> shift) & 0xFFFF) == 0) continue;
    std::fill(count.begin(), count.end(), 0);
    for (int64_t k : keys) ++count[(uint64_t(k) >> shift) & 0xFFFF];
    uint32_t sum = 0;
    for (auto& c : count) {
      const uint32_t t = c;
      c = sum;
      sum += t;
    }
    for (int64_t k : keys) tmp[count[(uint64_t(k) >> shift) & 0xFFFF]++] = k;
    keys.swap(tmp);
  }
}

}  // namespace sparseconv
