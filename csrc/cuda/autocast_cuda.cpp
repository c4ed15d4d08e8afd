// torch.autocast("cuda") for the sparse convolution: like torch's convolutions (autocast's lower-precision list),
// sparse_conv casts its floating-point inputs to the autocast dtype (float16 by default, or bfloat16) and runs
// there, on tensor cores; float64 inputs are left alone. The casts are differentiable, so gradients come back in
// the parameters' dtypes (the layers pass a view of their weight, not the leaf, so autocast's weight cache does
// not hold it: the weight is cast on every call). Pooling is not registered: its CUDA kernels take every
// floating dtype, so it runs in the dtype it is given (autocast's fallthrough).
//
// Host-only code, compiled by the C++ compiler in CUDA builds (setup.py adds csrc/cuda/*.cpp then).
// HARDWARE STATUS: compile-checked, not yet run on a GPU.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace sparseconv {
namespace {

at::Tensor sparse_conv_autocast(const at::Tensor& feats, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, const at::Tensor& nbr,
                                const c10::optional<at::Tensor>& nbr_t) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);
  const auto dtype = at::autocast::get_autocast_dtype(at::kCUDA);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sparseconv::sparse_conv", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                         const at::Tensor&, const c10::optional<at::Tensor>&)>();
  return op.call(at::autocast::cached_cast(dtype, feats, c10::DeviceType::CUDA),
                 at::autocast::cached_cast(dtype, weight, c10::DeviceType::CUDA),
                 at::autocast::cached_cast(dtype, bias, c10::DeviceType::CUDA), nbr, nbr_t);
}

// Called from backward (or directly): the two inputs are cast to one dtype, so a float32 gradient meeting
// autocast's float16 features does not fail the dtype check.
at::Tensor sparse_conv_weight_grad_autocast(const at::Tensor& feats, const at::Tensor& grad_out,
                                            const at::Tensor& nbr) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);
  const auto dtype = at::autocast::get_autocast_dtype(at::kCUDA);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sparseconv::sparse_conv_weight_grad", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(at::autocast::cached_cast(dtype, feats, c10::DeviceType::CUDA),
                 at::autocast::cached_cast(dtype, grad_out, c10::DeviceType::CUDA), nbr);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseconv, AutocastCUDA, m) {
  m.impl("sparse_conv", &sparse_conv_autocast);
  m.impl("sparse_conv_weight_grad", &sparse_conv_weight_grad_autocast);
}

}  // namespace sparseconv
