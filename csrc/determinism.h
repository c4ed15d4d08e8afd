// sparseconv's deterministic mode, as the C++ side sees it. Python's sparseconv.set_deterministic() stores its
// switch here (sparseconv._C._set_deterministic); torch.use_deterministic_algorithms(True) switches it on too.
// The CPU kernels are deterministic in every mode; CUDA kernels read deterministic_mode() and then take no path
// with float atomics.
#pragma once
#include <atomic>

#include <ATen/Context.h>

namespace sparseconv {

// One switch per process: an inline function's static is shared by every translation unit of the extension.
inline std::atomic<bool>& deterministic_flag() {
  static std::atomic<bool> flag{false};
  return flag;
}

inline bool deterministic_mode() {
  return deterministic_flag().load(std::memory_order_relaxed) || at::globalContext().deterministicAlgorithms();
}

}  // namespace sparseconv
