"""VoxelClassifier: sparse where the grid is large, dense once it is small (the layout family of Hackel et al.)."""
from torch import nn

from .. import nn as snn
from .normalize import FeatureNorm


def _block(cin, cout):
    return [snn.SubMConv3d(cin, cout, 3, bias=False), snn.SparseBatchNorm(cout), snn.SparseReLU()]


class VoxelClassifier(nn.Module):
    """One label per cloud from a voxel grid of `resolution`^3.

    Sparse encoder: per stage a SubMConv3d block, then a strided SparseConv3d (2x2x2, stride 2) that halves the
    grid, optionally followed by SparseTopK(max_active) to bound the active sites. After len(channels) stages
    the grid (resolution / 2**stages per axis) goes dense: Conv3d 3x3x3, BatchNorm3d, ReLU, MaxPool3d(2),
    Dropout, Linear. `resolution` must be divisible by 2**(stages + 1).

    Parameters with the defaults (in_channels=4, num_classes=6, resolution=32): 228,102.
    """

    def __init__(self, in_channels, num_classes, resolution, channels=(16, 32, 64), dense_channels=64,
                 max_active=None, dropout=0.3):
        super().__init__()
        stages = len(channels)
        if resolution % 2 ** (stages + 1):
            raise ValueError(f"resolution: expected a multiple of {2 ** (stages + 1)} for {stages} stages, "
                             f"got {resolution}")
        self.resolution = resolution
        self.norm = FeatureNorm(in_channels)
        layers, cin = [], in_channels
        for cout in channels:
            layers += _block(cin, cout)
            layers += [snn.SparseConv3d(cout, cout, 2, stride=2, bias=False), snn.SparseBatchNorm(cout),
                       snn.SparseReLU()]
            if max_active is not None:
                layers.append(snn.SparseTopK(max_active=max_active))
            cin = cout
        self.encoder = snn.SparseSequential(*layers)
        grid = resolution // 2**stages
        self.head = nn.Sequential(
            snn.ToDense((grid,) * 3),
            nn.Conv3d(cin, dense_channels, 3, padding=1, bias=False),
            snn.BatchNorm3d(dense_channels),  # nn.BatchNorm3d that follows sparseconv.set_deterministic
            nn.ReLU(),
            nn.MaxPool3d(2),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(dense_channels * (grid // 2) ** 3, num_classes),
        )

    def forward(self, x):
        """x: SparseTensor on the resolution^3 grid -> logits [B, num_classes]."""
        return self.head(self.encoder(self.norm(x)))
