"""The bridge to dense layers: run sparse while the grid is large and sparse, dense once it is small."""
import torch
from torch import nn

from .._args import triple
from ..tensor import SparseTensor


class ToDense(nn.Module):
    """SparseTensor -> [B, C, X, Y, Z] of a fixed spatial_shape: sites beyond it are cropped (dropped), a smaller
    input grid is zero-padded at the high end. A fixed shape is what a dense head (Conv3d, Linear) needs."""

    def __init__(self, spatial_shape):
        super().__init__()
        self.spatial_shape = triple(spatial_shape, "spatial_shape", 1)

    def extra_repr(self):
        return f"spatial_shape={self.spatial_shape}"

    def forward(self, x):
        if not isinstance(x, SparseTensor):
            raise TypeError(f"input: expected a SparseTensor, got {type(x).__name__}")
        X, Y, Z = self.spatial_shape
        c = x.coords.long()
        inside = (c[:, 1] < X) & (c[:, 2] < Y) & (c[:, 3] < Z)
        # Cropped sites are written to one extra row that is dropped, rather than masked out: a boolean mask
        # would give a data-dependent row count, which breaks torch.compile's graph.
        cells = x.batch_size * X * Y * Z
        row = torch.where(inside, ((c[:, 0] * X + c[:, 1]) * Y + c[:, 2]) * Z + c[:, 3], cells)
        out = x.feats.new_zeros(cells + 1, x.feats.shape[1]).index_put((row,), x.feats)
        return out[:cells].view(x.batch_size, X, Y, Z, -1).permute(0, 4, 1, 2, 3)


class ToSparse(nn.Module):
    """[B, C, X, Y, Z] -> SparseTensor of the sites where any channel is non-zero."""

    def forward(self, t):
        return SparseTensor.from_dense(t)
