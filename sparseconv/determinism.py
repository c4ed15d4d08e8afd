"""Deterministic mode: forward and backward bitwise reproducible run to run and across thread counts.

On CPU the sparse convolution, pooling and kernel-map kernels are deterministic in every mode: each output row
is reduced by one thread in a fixed order, the work split does not change any sum, and there are no atomics
(tests/test_threads.py). What is not is torch's CPU batch norm, whose statistics are summed in per-thread
partial buffers. In deterministic mode, switched on by `set_deterministic(True)` or by
`torch.use_deterministic_algorithms(True)`, the batch norms of sparseconv's layers (SparseBatchNorm,
BatchNorm3d in model heads) use `batch_norm` below instead.

On CUDA the kernel maps, convolution forward (both paths), pooling and the input gradient are deterministic in
every mode too (no float atomics: each output element is reduced by one thread, or per kernel offset by cuBLAS).
The one exception is the fused weight-gradient kernel, which adds partial sums with float atomics; in
deterministic mode it writes them to a buffer reduced in a fixed order instead. The C++ side reads this switch
(set_deterministic forwards it to sparseconv._C) or torch.are_deterministic_algorithms_enabled(). Note that
torch.use_deterministic_algorithms(True) also makes torch's cuBLAS calls (the gemm path) require
CUBLAS_WORKSPACE_CONFIG=:4096:8, as for any torch matmul.
"""
import torch

from . import _C

_enabled = False


def set_deterministic(mode=True):
    """Switches sparseconv's deterministic mode on or off (torch.use_deterministic_algorithms(True) also
    switches it on)."""
    global _enabled
    _enabled = bool(mode)
    _C._set_deterministic(_enabled)  # the C++/CUDA kernels' copy of the switch (csrc/determinism.h)


def is_deterministic():
    return _enabled or torch.are_deterministic_algorithms_enabled()


_TILE = 64  # rows folded into columns by row_sum, so that no reduction has a single output


def row_sum(t):
    """t [N, C] -> [C], with a summation order that does not depend on the thread count.

    torch's CPU reduction over a dimension gives each output to one thread, which sums it in a fixed order
    (TensorIterator's parallel_dim_reduction); only a reduction to ONE value (C = 1) is split across threads.
    For C = 1, _TILE rows are folded into columns first ([N / _TILE, _TILE], the < _TILE rows left over summed
    apart), which keeps every reduction large enough to be split at _TILE outputs.
    """
    n, c = t.shape
    if c > 1:
        return t.sum(0)
    m = n - n % _TILE
    head = t[:m].view(-1, _TILE).sum(0).sum().view(1)
    return head + t[m:].sum(0) if m < n else head


def batch_norm(bn, x, all_reduce=None):
    """What the torch BatchNorm module `bn` computes on x [N, C, *] (statistics, running averages, affine,
    gradients), with every sum over rows taken by row_sum. all_reduce, when given, sums a tensor over
    processes in place (sparseconv.distributed.SyncBatchNorm): the statistics, and the input gradient's
    reductions, are then those of the global batch, as in torch.nn.SyncBatchNorm."""
    shape = x.movedim(1, -1).shape
    rows = x.movedim(1, -1).reshape(-1, x.shape[1])
    count = None
    if bn.training or bn.running_mean is None:
        with torch.no_grad():
            total = torch.cat([row_sum(rows), rows.new_full((1,), rows.shape[0])])
            if all_reduce is not None:
                all_reduce(total)
            count, mean = total[-1:], total[:-1] / total[-1]
            var = row_sum((rows - mean).square_())  # two passes: no cancellation as in E[x^2] - mean^2
            if all_reduce is not None:
                all_reduce(var)
            var /= count
            if bn.training and bn.running_mean is not None:
                _update_running_stats(bn, mean, var * count / (count - 1).clamp_min(1))
    else:
        mean, var = bn.running_mean, bn.running_var
    invstd = torch.rsqrt(var + bn.eps)
    out = _Normalize.apply(rows, mean, invstd, bn.weight, bn.bias, count, all_reduce)
    return out.view(shape).movedim(-1, 1)


class _Normalize(torch.autograd.Function):
    """(rows - mean) * invstd * weight + bias, with the batch-norm backward written out (the statistics'
    gradient included when `count` says they came from the batch) and its row sums taken by row_sum."""

    @staticmethod
    def forward(ctx, rows, mean, invstd, weight, bias, count, all_reduce):
        xhat = torch.addcmul(-mean * invstd, rows, invstd)  # fused ops: each is one pass over [N, C]
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.count, ctx.all_reduce = count, all_reduce
        return xhat if weight is None else torch.addcmul(bias, xhat, weight)

    @staticmethod
    def backward(ctx, grad):
        xhat, invstd, weight = ctx.saved_tensors
        sum_g, sum_gx = row_sum(grad), row_sum(grad * xhat)  # this process's: the parameters' gradients
        scale = invstd if weight is None else invstd * weight
        if ctx.count is None:  # running statistics: constants
            grad_rows = grad * scale
        else:
            sums = torch.cat([sum_g, sum_gx])
            if ctx.all_reduce is not None:
                ctx.all_reduce(sums)
            mean_g, mean_gx = (sums / ctx.count).chunk(2)
            # (grad - mean_g - xhat * mean_gx) * scale, in two passes
            grad_rows = torch.addcmul(-mean_g * scale, xhat, -mean_gx * scale).addcmul_(grad, scale)
        has_affine = weight is not None
        return (grad_rows, None, None, sum_gx if has_affine else None, sum_g if has_affine else None, None, None)


@torch.no_grad()
def _update_running_stats(bn, mean, var):
    """As torch's _BatchNorm.forward: momentum, or a cumulative average when momentum is None."""
    bn.num_batches_tracked.add_(1)
    factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
    bn.running_var.lerp_(var.to(bn.running_var.dtype), factor)
