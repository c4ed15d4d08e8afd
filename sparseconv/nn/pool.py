"""Sparse pooling. Output sites follow SparseConv3d's rule (every window with at least one active input), so a
pooling layer and a strided conv of the same geometry share one cached map.

With an indice_key, a SparseInverseConv3d with that key restores the pooling layer's input sites (spconv's rule).

Both poolings reduce over the ACTIVE inputs of a window: max equals F.max_pool3d on the densified input wherever
the window's active values are not all negative (inactive sites would count as zeros there); average is the
mean of the active inputs (F.avg_pool3d would divide by the window size).
"""
import torch
from torch import nn

from .. import ops
from .._args import optional_str, triple
from ..kmap import strided_map
from ..tensor import SparseTensor
from .conv import record_indice_key


class _SparsePool(nn.Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, indice_key=None):
        super().__init__()
        self.kernel_size = triple(kernel_size, "kernel_size", 1, 15)
        self.stride = triple(self.kernel_size if stride is None else stride, "stride", 1)
        self.padding = triple(padding, "padding", 0)
        self.dilation = triple(dilation, "dilation", 1)
        self.indice_key = optional_str(indice_key, "indice_key")

    def extra_repr(self):
        key = "" if self.indice_key is None else f", indice_key={self.indice_key!r}"
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, " \
               f"dilation={self.dilation}{key}"

    def forward(self, x):
        if not isinstance(x, SparseTensor):
            raise TypeError(f"input: expected a SparseTensor, got {type(x).__name__}")
        entry = strided_map(x, self.kernel_size, self.stride, self.padding, self.dilation)
        geometry = ("strided", self.kernel_size, self.stride, self.padding, self.dilation)
        record_indice_key(x, self.indice_key, geometry, type(self).__name__, entry)
        out = self._pool(x.feats, entry.kmap.nbr, entry.kmap.nbr_t)
        stride = tuple(a * b for a, b in zip(x.stride, self.stride))
        return SparseTensor._derived(out, entry.out_coords, entry.out_shape, x.batch_size, stride, x.kmaps,
                                     entry.out_sites)


class SparseMaxPool3d(_SparsePool):
    """Max over the active inputs of each window (argmax kept for backward); stride defaults to kernel_size."""

    def _pool(self, feats, nbr, nbr_t):
        return ops.sparse_max_pool(feats, nbr, nbr_t)[0]


class SparseAvgPool3d(_SparsePool):
    """Mean of the active inputs of each window; stride defaults to kernel_size."""

    def _pool(self, feats, nbr, nbr_t):
        return ops.sparse_avg_pool(feats, nbr, nbr_t)


def _batch_index(x):
    if not isinstance(x, SparseTensor):
        raise TypeError(f"input: expected a SparseTensor, got {type(x).__name__}")
    return x.coords[:, 0].long()


class GlobalMaxPool(nn.Module):
    """One row per batch element: [B, C], the channel-wise max over its active sites (0 for an empty one)."""

    def forward(self, x):
        b = _batch_index(x)
        out = x.feats.new_zeros(x.batch_size, x.feats.shape[1])
        return out.scatter_reduce(0, b[:, None].expand_as(x.feats), x.feats, "amax", include_self=False)


class GlobalAvgPool(nn.Module):
    """One row per batch element: [B, C], the mean over its active sites (0 for an empty one)."""

    def forward(self, x):
        b = _batch_index(x)
        total = x.feats.new_zeros(x.batch_size, x.feats.shape[1]).index_add(0, b, x.feats)
        # index_add rather than bincount, whose data-dependent length would break torch.compile's graph.
        count = x.feats.new_zeros(x.batch_size).index_add(0, b, x.feats.new_ones(b.shape[0])).clamp_min(1)
        return total / count[:, None]
