// Dynamic work sharing over fixed work items. Kernel maps of real scenes are uneven (dense ground near the
// sensor, empty sky), so a static split of items over threads leaves one thread idle while the other finishes;
// here each thread claims the next unprocessed item. Items are fixed by the data alone, so results do not
// depend on which thread ran an item.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>

namespace sparseconv {

// Calls body(claim) once per worker thread; claim() returns the next item in [0, n), or -1 when none is left.
template <typename Body>
void parallel_claim(int64_t n, const Body& body) {
  if (n <= 0) return;
  std::atomic<int64_t> next{0};
  auto claim = [&]() -> int64_t {
    const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
    return i < n ? i : -1;
  };
  const int64_t workers = std::min<int64_t>(n, at::get_num_threads());
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) { body(claim); });
}

}  // namespace sparseconv
