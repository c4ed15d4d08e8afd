// Operator schemas: the one place the `sparseconv` namespace is declared. Kernels register per device in
// csrc/cpu/*.cpp (and csrc/cuda/*.cu); autograd formulas and fake (shape-only) kernels live in sparseconv/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(sparseconv, m) {
  // nbr [K, N] int32: nbr[k, i] = input row read by kernel offset k at site i, or -1.
  m.def("build_subm_map(Tensor coords, int[] kernel_size, int[] dilation) -> Tensor");
  // -> (out_coords [M, 4] sorted by (b, x, y, z), nbr [K, M]); spconv's output rule.
  m.def(
      "build_strided_map(Tensor coords, int[] spatial_shape, int[] kernel_size, int[] stride, int[] padding, "
      "int[] dilation) -> (Tensor, Tensor)");
  // nbr_t [K, n_in]: nbr_t[k, j] = i where nbr[k, i] = j.
  m.def("invert_map(Tensor nbr, int n_in) -> Tensor");
  // out[i] = bias + sum_k feats[nbr[k, i]] @ weight[k]. nbr_t is only read by backward: the transposed map, or
  // None when nbr is centre-symmetric (odd submanifold kernels), whose transpose is nbr with offsets reversed.
  m.def("sparse_conv(Tensor feats, Tensor weight, Tensor? bias, Tensor nbr, Tensor? nbr_t) -> Tensor");
  // grad_weight[k] = sum_i feats[nbr[k, i]]^T grad_out[i].
  m.def("sparse_conv_weight_grad(Tensor feats, Tensor grad_out, Tensor nbr) -> Tensor");
  // Pooling over a strided map: out [M, C] (and, for max, the winning input row per channel, int32 [M, C]).
  // nbr_t (the transposed map) is only read by backward.
  m.def("sparse_max_pool(Tensor feats, Tensor nbr, Tensor nbr_t) -> (Tensor, Tensor)");
  m.def("sparse_max_pool_backward(Tensor grad_out, Tensor argmax, Tensor nbr_t) -> Tensor");
  m.def("sparse_avg_pool(Tensor feats, Tensor nbr, Tensor nbr_t) -> Tensor");
  m.def("sparse_avg_pool_backward(Tensor grad_out, Tensor nbr, Tensor nbr_t) -> Tensor");
  // points [P, 3] -> (coords [V, 4] unique, sorted by (x, y, z), batch 0; point_to_voxel int64 [P]).
  m.def("voxelize(Tensor points, float[] voxel_size, float[] origin) -> (Tensor, Tensor)");
}
