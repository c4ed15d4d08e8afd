// torch.autocast for the sparse convolution, on CPU and CUDA alike: like torch's convolutions (autocast's
// lower-precision list), sparse_conv and sparse_conv_weight_grad cast their floating-point inputs to the
// autocast dtype (torch.autocast(dtype=...): bfloat16 by default on CPU, float16 on CUDA) and run there; float64
// is left alone. The casts are differentiable, so gradients come back in the parameters' dtypes. Autocast caches
// the casts of float32 leaves that require grad (model weights) for the autocast region; the layers pass a view
// of their weight (weight.view(K, Cin, Cout)), which that cache skips, so such a view is cast through its leaf
// (cast_weight). Pooling is not registered: its kernels take every floating dtype, so it runs in the dtype it is
// given (autocast's fallthrough). The CUDA registration is harmless in a CPU-only build (nothing dispatches to
// AutocastCUDA).
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace sparseconv {
namespace {

// The weight in the autocast dtype. When the view is the whole leaf reshaped (same elements, same order), cast
// the leaf (cached until the autocast region ends, as torch does for nn.Conv3d's weight) and take the same view
// of the cast; gradients still reach the leaf through the cast.
template <c10::DeviceType D>
at::Tensor cast_weight(at::ScalarType dtype, const at::Tensor& weight) {
  if (weight.is_view() && at::autocast::is_autocast_cache_enabled()) {
    const at::Tensor base(weight._base());
    if (base.is_leaf() && base.requires_grad() && base.scalar_type() == at::kFloat &&
        weight.scalar_type() == at::kFloat && base.device() == weight.device() && base.is_contiguous() &&
        weight.is_contiguous() && base.numel() == weight.numel() && base.storage_offset() == weight.storage_offset())
      return at::autocast::cached_cast(dtype, base, D).view(weight.sizes());
  }
  return at::autocast::cached_cast(dtype, weight, D);
}

template <c10::DeviceType D>
at::Tensor sparse_conv_autocast(const at::Tensor& feats, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, const at::Tensor& nbr,
                                const c10::optional<at::Tensor>& nbr_t) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(D));
  const auto dtype = at::autocast::get_autocast_dtype(D);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sparseconv::sparse_conv", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                         const at::Tensor&, const c10::optional<at::Tensor>&)>();
  return op.call(at::autocast::cached_cast(dtype, feats, D), cast_weight<D>(dtype, weight),
                 at::autocast::cached_cast(dtype, bias, D), nbr, nbr_t);
}

// Called from backward (or directly): both inputs are cast to one dtype, so a float32 gradient meeting
// autocast's lower-precision features does not fail the dtype check.
template <c10::DeviceType D>
at::Tensor sparse_conv_weight_grad_autocast(const at::Tensor& feats, const at::Tensor& grad_out,
                                            const at::Tensor& nbr) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(at::autocast::get_autocast_dispatch_key_from_device_type(D));
  const auto dtype = at::autocast::get_autocast_dtype(D);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sparseconv::sparse_conv_weight_grad", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(at::autocast::cached_cast(dtype, feats, D), at::autocast::cached_cast(dtype, grad_out, D), nbr);
}

}  // namespace

TORCH_LIBRARY_IMPL(sparseconv, AutocastCPU, m) {
  m.impl("sparse_conv", &sparse_conv_autocast<c10::DeviceType::CPU>);
  m.impl("sparse_conv_weight_grad", &sparse_conv_weight_grad_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(sparseconv, AutocastCUDA, m) {
  m.impl("sparse_conv", &sparse_conv_autocast<c10::DeviceType::CUDA>);
  m.impl("sparse_conv_weight_grad", &sparse_conv_weight_grad_autocast<c10::DeviceType::CUDA>);
}

}  // namespace sparseconv
