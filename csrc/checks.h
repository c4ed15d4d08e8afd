// One place for argument checks. Every message names the argument, what was expected and what came.
// TORCH_CHECK_VALUE / TORCH_CHECK_TYPE surface in Python as ValueError / TypeError.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <array>
#include <cmath>
#include <c10/util/Exception.h>

namespace sparseconv {

inline void check_int32_coords(const at::Tensor& c, const char* name) {
  TORCH_CHECK_TYPE(c.scalar_type() == at::kInt, name, ": expected int32 coordinates, got ", c.scalar_type());
  TORCH_CHECK_VALUE(c.dim() == 2 && c.size(1) == 4, name,
                    ": expected shape [N, 4] (batch, x, y, z), got ", c.sizes());
  TORCH_CHECK_VALUE(c.is_contiguous(), name, ": expected a contiguous tensor");
}

inline void check_map(const at::Tensor& m, const char* name) {
  TORCH_CHECK_TYPE(m.scalar_type() == at::kInt, name, ": expected an int32 kernel map, got ", m.scalar_type());
  TORCH_CHECK_VALUE(m.dim() == 2, name, ": expected shape [K, N], got ", m.sizes());
  TORCH_CHECK_VALUE(m.is_contiguous(), name, ": expected a contiguous tensor");
}

// Features: float32 and float64, or float16 and bfloat16 (stored in that dtype, computed in float32).
inline void check_feats(const at::Tensor& f, const char* name) {
  const auto t = f.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, name,
                   ": expected float16, bfloat16, float32 or float64 features, got ", t);
  TORCH_CHECK_VALUE(f.dim() == 2, name, ": expected shape [N, C], got ", f.sizes());
  TORCH_CHECK_VALUE(f.is_contiguous(), name, ": expected a contiguous tensor");
}

// Every tensor argument of a CUDA kernel on the device of the first one (the dispatcher picks the CUDA kernel
// when any argument is on CUDA; a CPU tensor among them must be refused, not dereferenced).
inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, ": expected a tensor on ", ref.device(), " (", ref_name,
                    "'s device), got ", t.device());
}

// kernel_size / stride / padding / dilation arguments: three entries, each within [lo, hi].
inline void check_triple(c10::IntArrayRef v, const char* name, int64_t lo, int64_t hi) {
  TORCH_CHECK_VALUE(v.size() == 3, name, ": expected 3 values, got ", v.size());
  for (auto x : v) {
    TORCH_CHECK_VALUE(x >= lo && x <= hi, name, ": expected values in [", lo, ", ", hi, "], got ", v);
  }
}

// sparse_conv's weight [K, Cin, Cout] against the features and the map.
inline void check_conv_weight(const at::Tensor& weight, const at::Tensor& feats, const at::Tensor& nbr) {
  TORCH_CHECK_TYPE(weight.scalar_type() == feats.scalar_type(), "weight: expected dtype ", feats.scalar_type(),
                   " (the features' dtype), got ", weight.scalar_type());
  TORCH_CHECK_VALUE(weight.dim() == 3, "weight: expected shape [K, Cin, Cout], got ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(0) == nbr.size(0), "weight: expected ", nbr.size(0),
                    " kernel offsets (the map's), got ", weight.size(0));
  TORCH_CHECK_VALUE(weight.size(1) == feats.size(1), "weight: expected Cin = ", feats.size(1),
                    " (the features' channels), got ", weight.size(1));
  TORCH_CHECK_VALUE(weight.is_contiguous(), "weight: expected a contiguous tensor");
}

// sparse_conv's optional transposed map: [K, input rows], or absent only for a centre-symmetric submanifold map
// (only backward reads it; checked at the call so a wrong map fails where it was passed).
inline void check_conv_nbr_t(const c10::optional<at::Tensor>& nbr_t, const at::Tensor& nbr, const at::Tensor& feats) {
  if (nbr_t.has_value() && nbr_t->defined()) {
    check_map(*nbr_t, "nbr_t");
    TORCH_CHECK_VALUE(nbr_t->size(0) == nbr.size(0) && nbr_t->size(1) == feats.size(0), "nbr_t: expected shape [",
                      nbr.size(0), ", ", feats.size(0), "] (K, input rows), got ", nbr_t->sizes());
    check_same_device(*nbr_t, "nbr_t", feats, "feats");
  } else {
    TORCH_CHECK_VALUE(nbr.size(1) == feats.size(0), "nbr_t: None is only valid for a centre-symmetric "
                      "submanifold map (N_out == N_in), but nbr has ", nbr.size(1), " outputs for ", feats.size(0),
                      " inputs");
  }
}

// ---- One function per operator: every check its CPU and CUDA kernels make, device checks included, so the
// ---- CPU tests run the very code the CUDA kernels call (the dispatcher hands a CPU kernel CPU tensors only,
// ---- where the device checks pass trivially).

// sparse_conv(feats, weight, bias, nbr, nbr_t).
inline void check_sparse_conv_args(const at::Tensor& feats, const at::Tensor& weight,
                                   const c10::optional<at::Tensor>& bias, const at::Tensor& nbr,
                                   const c10::optional<at::Tensor>& nbr_t) {
  check_feats(feats, "feats");
  check_map(nbr, "nbr");
  check_conv_weight(weight, feats, nbr);
  check_same_device(weight, "weight", feats, "feats");
  check_same_device(nbr, "nbr", feats, "feats");
  check_conv_nbr_t(nbr_t, nbr, feats);
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_TYPE(bias->scalar_type() == feats.scalar_type(), "bias: expected dtype ", feats.scalar_type(),
                     ", got ", bias->scalar_type());
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(2) && bias->is_contiguous(),
                      "bias: expected a contiguous tensor of shape [", weight.size(2), "], got ", bias->sizes());
    check_same_device(*bias, "bias", feats, "feats");
  }
}

// sparse_conv_weight_grad(feats, grad_out, nbr).
inline void check_weight_grad_args(const at::Tensor& feats, const at::Tensor& grad_out, const at::Tensor& nbr) {
  check_feats(feats, "feats");
  check_feats(grad_out, "grad_out");
  check_map(nbr, "nbr");
  TORCH_CHECK_TYPE(grad_out.scalar_type() == feats.scalar_type(), "grad_out: expected dtype ", feats.scalar_type(),
                   ", got ", grad_out.scalar_type());
  TORCH_CHECK_VALUE(grad_out.size(0) == nbr.size(1), "grad_out: expected ", nbr.size(1), " rows (the map's), got ",
                    grad_out.size(0));
  check_same_device(grad_out, "grad_out", feats, "feats");
  check_same_device(nbr, "nbr", feats, "feats");
}

// The CUDA kernels' launch limits on top of the arguments' checks (grid.y / grid.z are at most 65535; the fused
// forward's grid.y is ceil(cout / 64)).
inline void check_cuda_conv_limits(const at::Tensor& nbr, int64_t cin, int64_t cout) {
  TORCH_CHECK_VALUE(nbr.size(0) <= 65535, "nbr: at most 65535 kernel offsets on CUDA, got ", nbr.size(0));
  TORCH_CHECK_VALUE(cin < (int64_t(1) << 30) && cout <= int64_t(65535) * 64, "feats / weight: channel counts (", cin,
                    ", ", cout, ") too large for the CUDA kernels");
}

// sparse_max_pool / sparse_avg_pool(feats, nbr, nbr_t): the strided map nbr [K, M] and its transpose nbr_t
// [K, input rows].
inline void check_pool_args(const at::Tensor& feats, const at::Tensor& nbr, const at::Tensor& nbr_t) {
  check_feats(feats, "feats");
  check_map(nbr, "nbr");
  check_map(nbr_t, "nbr_t");
  TORCH_CHECK_VALUE(nbr_t.size(0) == nbr.size(0) && nbr_t.size(1) == feats.size(0), "nbr_t: expected shape [",
                    nbr.size(0), ", ", feats.size(0), "] (K, input rows), got ", nbr_t.sizes());
  check_same_device(nbr, "nbr", feats, "feats");
  check_same_device(nbr_t, "nbr_t", feats, "feats");
}

// sparse_max_pool_backward(grad_out, argmax, nbr_t).
inline void check_max_pool_backward_args(const at::Tensor& grad_out, const at::Tensor& argmax,
                                         const at::Tensor& nbr_t) {
  check_feats(grad_out, "grad_out");
  check_map(nbr_t, "nbr_t");
  TORCH_CHECK_VALUE(argmax.sizes() == grad_out.sizes() && argmax.scalar_type() == at::kInt && argmax.is_contiguous(),
                    "argmax: expected a contiguous int32 tensor of shape ", grad_out.sizes(), ", got ",
                    argmax.sizes());
  check_same_device(argmax, "argmax", grad_out, "grad_out");
  check_same_device(nbr_t, "nbr_t", grad_out, "grad_out");
}

// sparse_avg_pool_backward(grad_out, nbr, nbr_t).
inline void check_avg_pool_backward_args(const at::Tensor& grad_out, const at::Tensor& nbr, const at::Tensor& nbr_t) {
  check_feats(grad_out, "grad_out");
  check_map(nbr, "nbr");
  check_map(nbr_t, "nbr_t");
  TORCH_CHECK_VALUE(nbr.size(1) == grad_out.size(0) && nbr_t.size(0) == nbr.size(0), "nbr_t: expected the "
                    "transpose of nbr [", nbr.size(0), ", ", grad_out.size(0), "], got nbr ", nbr.sizes(),
                    " and nbr_t ", nbr_t.sizes());
  check_same_device(nbr, "nbr", grad_out, "grad_out");
  check_same_device(nbr_t, "nbr_t", grad_out, "grad_out");
}

// build_subm_map(coords, kernel_size, dilation).
inline void check_subm_map_args(const at::Tensor& coords, c10::IntArrayRef kernel_size, c10::IntArrayRef dilation) {
  check_int32_coords(coords, "coords");
  check_triple(kernel_size, "kernel_size", 1, 15);
  check_triple(dilation, "dilation", 1, 64);
}

// invert_map(nbr, n_in).
inline void check_invert_map_args(const at::Tensor& nbr, int64_t n_in) {
  check_map(nbr, "nbr");
  TORCH_CHECK_VALUE(n_in >= 0, "n_in: expected a non-negative row count, got ", n_in);
}

// build_strided_map(coords, spatial_shape, kernel_size, stride, padding, dilation); returns the output grid's
// shape (axis_limit: the largest coordinate the packed keys hold).
inline std::array<int64_t, 3> check_strided_map_args(const at::Tensor& coords, c10::IntArrayRef spatial_shape,
                                                     c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                                     c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                                     int64_t axis_limit) {
  check_int32_coords(coords, "coords");
  check_triple(spatial_shape, "spatial_shape", 1, axis_limit);
  check_triple(kernel_size, "kernel_size", 1, 15);
  check_triple(stride, "stride", 1, 64);
  check_triple(padding, "padding", 0, 64);
  check_triple(dilation, "dilation", 1, 64);
  std::array<int64_t, 3> out_shape;
  for (int d = 0; d < 3; ++d) {
    const int64_t span = dilation[d] * (kernel_size[d] - 1) + 1;
    const int64_t padded = spatial_shape[d] + 2 * padding[d];
    TORCH_CHECK_VALUE(padded >= span, "kernel_size: the dilated kernel (", span, ") is larger than the padded input (",
                      padded, ") along axis ", d);
    out_shape[d] = (padded - span) / stride[d] + 1;
    TORCH_CHECK_VALUE(out_shape[d] <= axis_limit, "spatial_shape / padding: the output grid (", out_shape[d],
                      ") exceeds the coordinate limit (", axis_limit, ") along axis ", d);
  }
  return out_shape;
}

// voxelize's arguments: points [P, 3] floating point, 3 positive finite voxel sizes, 3 finite origin values.
inline void check_voxelize_args(const at::Tensor& points, c10::ArrayRef<double> voxel_size,
                                c10::ArrayRef<double> origin) {
  TORCH_CHECK_TYPE(points.is_floating_point(), "points: expected floating-point coordinates, got ",
                   points.scalar_type());
  TORCH_CHECK_VALUE(points.dim() == 2 && points.size(1) == 3, "points: expected shape [P, 3], got ",
                    points.sizes());
  TORCH_CHECK_VALUE(voxel_size.size() == 3, "voxel_size: expected 3 values, got ", voxel_size.size());
  TORCH_CHECK_VALUE(origin.size() == 3, "origin: expected 3 values, got ", origin.size());
  for (double v : voxel_size)
    TORCH_CHECK_VALUE(std::isfinite(v) && v > 0, "voxel_size: expected positive finite values, got ", voxel_size);
  for (double o : origin) TORCH_CHECK_VALUE(std::isfinite(o), "origin: expected finite values, got ", origin);
}

}  // namespace sparseconv
