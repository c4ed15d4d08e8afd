"""The compiled operators with their autograd formulas and fake (shape-only) kernels.

Kernel maps are int32 [K, N_out] tensors: nbr[k, i] is the input row kernel offset k reads at output i, or -1.
"""
import math

import torch

from . import _C  # noqa: F401  (loads the TORCH_LIBRARY registrations)

_ops = torch.ops.sparseconv

build_subm_map = _ops.build_subm_map
build_strided_map = _ops.build_strided_map
sparse_conv_weight_grad = _ops.sparse_conv_weight_grad


@torch.library.custom_op("sparseconv::invert_map_sym", mutates_args=())
def invert_map(nbr: torch.Tensor, n_in: int) -> torch.Tensor:
    """nbr_t [K, n_in] with nbr_t[k, j] = i where nbr[k, i] = j, or -1.

    The C++ schema declares `int n_in`, which torch.compile must specialise (a recompile per input size) and
    cannot pass at all when n_in is the data-dependent site count of a strided map built in the graph; this
    wrapper's schema says `SymInt n_in`. It can go once csrc/ops.cpp declares SymInt there.
    """
    return _ops.invert_map(nbr, n_in)


@invert_map.register_fake
def _invert_map_sym_fake(nbr, n_in):
    return nbr.new_empty(nbr.shape[0], n_in)


def sparse_conv(feats, weight, bias, nbr, nbr_t):
    """out[i] = bias + sum_k feats[nbr[k, i]] @ weight[k]; differentiable in feats, weight and bias.

    nbr_t is the transposed map (invert_map(nbr, N_in)) that backward reads, or None for a centre-symmetric
    submanifold map (odd kernel), whose transpose is nbr with the kernel offsets reversed.
    """
    return _ops.sparse_conv(feats, weight, bias, nbr, nbr_t)


def _setup_context(ctx, inputs, output):
    feats, weight, bias, nbr, nbr_t = inputs
    ctx.save_for_backward(feats, weight, nbr, nbr_t)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    feats, weight, nbr, nbr_t = ctx.saved_tensors
    grad = grad.contiguous()
    g_feats = g_weight = g_bias = None
    if ctx.needs_input_grad[0]:
        if nbr_t is None:
            # Symmetric map: offset k at i reads j exactly when offset K-1-k at j reads i.
            g_feats = _ops.sparse_conv(grad, weight.flip(0).transpose(1, 2).contiguous(), None, nbr, None)
        else:
            g_feats = _ops.sparse_conv(grad, weight.transpose(1, 2).contiguous(), None, nbr_t, nbr)
    if ctx.needs_input_grad[1]:
        g_weight = _ops.sparse_conv_weight_grad(feats, grad, nbr)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        g_bias = grad.sum(0)
    return g_feats, g_weight, g_bias, None, None


torch.library.register_autograd("sparseconv::sparse_conv", _backward, setup_context=_setup_context)


@torch.library.register_fake("sparseconv::sparse_conv")
def _sparse_conv_fake(feats, weight, bias, nbr, nbr_t):
    return feats.new_empty(nbr.shape[1], weight.shape[2])


@torch.library.register_fake("sparseconv::sparse_conv_weight_grad")
def _weight_grad_fake(feats, grad_out, nbr):
    return feats.new_empty(nbr.shape[0], feats.shape[1], grad_out.shape[1])


# Pooling: nbr_t is passed to forward only so that backward has it.


def sparse_max_pool(feats, nbr, nbr_t):
    """out[i, c] = max over the active inputs of window i; returns (out, argmax input row int32 [M, C])."""
    return _ops.sparse_max_pool(feats, nbr, nbr_t)


def sparse_avg_pool(feats, nbr, nbr_t):
    """out[i] = mean of the active inputs of window i."""
    return _ops.sparse_avg_pool(feats, nbr, nbr_t)


def _max_pool_setup(ctx, inputs, output):
    _, _, nbr_t = inputs
    ctx.save_for_backward(output[1], nbr_t)
    ctx.mark_non_differentiable(output[1])


def _max_pool_backward(ctx, grad, _grad_argmax):
    argmax, nbr_t = ctx.saved_tensors
    return _ops.sparse_max_pool_backward(grad.contiguous(), argmax, nbr_t), None, None


def _avg_pool_setup(ctx, inputs, output):
    _, nbr, nbr_t = inputs
    ctx.save_for_backward(nbr, nbr_t)


def _avg_pool_backward(ctx, grad):
    nbr, nbr_t = ctx.saved_tensors
    return _ops.sparse_avg_pool_backward(grad.contiguous(), nbr, nbr_t), None, None


torch.library.register_autograd("sparseconv::sparse_max_pool", _max_pool_backward, setup_context=_max_pool_setup)
torch.library.register_autograd("sparseconv::sparse_avg_pool", _avg_pool_backward, setup_context=_avg_pool_setup)


@torch.library.register_fake("sparseconv::sparse_max_pool")
def _max_pool_fake(feats, nbr, nbr_t):
    out = feats.new_empty(nbr.shape[1], feats.shape[1])
    return out, out.new_empty(out.shape, dtype=torch.int32)


@torch.library.register_fake("sparseconv::sparse_avg_pool")
def _avg_pool_fake(feats, nbr, nbr_t):
    return feats.new_empty(nbr.shape[1], feats.shape[1])


@torch.library.register_fake("sparseconv::sparse_max_pool_backward")
def _max_pool_backward_fake(grad_out, argmax, nbr_t):
    return grad_out.new_empty(nbr_t.shape[1], grad_out.shape[1])


@torch.library.register_fake("sparseconv::sparse_avg_pool_backward")
def _avg_pool_backward_fake(grad_out, nbr, nbr_t):
    return grad_out.new_empty(nbr_t.shape[1], grad_out.shape[1])


@torch.library.register_fake("sparseconv::invert_map")
def _invert_map_fake(nbr, n_in):
    return nbr.new_empty(nbr.shape[0], n_in)


# Kernel-map builders and voxelize. Their integer outputs carry no gradient. The number of output sites of a
# strided map (and of voxels) depends on the coordinates' values, so the fake kernels return an unbacked size
# from the fake context: torch.compile then traces through them when
# torch._dynamo.config.capture_dynamic_output_shape_ops is set and breaks the graph there otherwise. The size
# is at least 1 for a non-empty input; saying so spares later ops (batch_norm's empty-input check) from guarding
# on the unknown size, which would break the graph again.


def _nonempty_size(n_in):
    # statically_known_true: no guard, so an unknown (data-dependent) n_in just gives min 0. Imported here: the
    # module is loaded whenever a fake kernel runs, and costs a second or two at `import sparseconv`.
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return torch.library.get_ctx().new_dynamic_size(min=1 if statically_known_true(n_in > 0) else 0)


@torch.library.register_fake("sparseconv::build_subm_map")
def _subm_map_fake(coords, kernel_size, dilation):
    return coords.new_empty(math.prod(kernel_size), coords.shape[0])


@torch.library.register_fake("sparseconv::build_strided_map")
def _strided_map_fake(coords, spatial_shape, kernel_size, stride, padding, dilation):
    m = _nonempty_size(coords.shape[0])
    return coords.new_empty(m, 4), coords.new_empty(math.prod(kernel_size), m)


@torch.library.register_fake("sparseconv::voxelize")
def _voxelize_fake(points, voxel_size, origin):
    v = _nonempty_size(points.shape[0])
    return points.new_empty(v, 4, dtype=torch.int32), points.new_empty(points.shape[0], dtype=torch.int64)


# Mixed precision. The kernels take float16, bfloat16, float32 and float64 (the reduced dtypes are stored as such
# and computed in float32). Under torch.autocast (CPU or CUDA) sparse_conv and sparse_conv_weight_grad cast their
# inputs to the autocast dtype, as torch's convolutions do (registered in C++: csrc/autocast.cpp, so the dtype
# follows torch.autocast(dtype=...)); pooling runs in the dtype it is given.
#
# CUDA convolution paths: SPARSECONV_CUDA_ALGO=gemm|fused|auto (default auto, chosen by channel counts) picks
# gather-GEMM-scatter (cuBLAS per kernel offset) or the fused kernel (tensor cores for float16/bfloat16);
# SPARSECONV_CUDA_CHECKS=1 makes the sync-free CUDA kernels check map entries against the input rows (see
# csrc/cuda/conv_cuda.cu).
