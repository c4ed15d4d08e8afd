"""SparseUNet: per-voxel labels (e.g. per-point classification of LiDAR tiles through voxelize/devoxelize)."""
import torch
from torch import nn

from .. import nn as snn
from .normalize import FeatureNorm


def _subm(cin, cout, key=None):
    return snn.SparseSequential(snn.SubMConv3d(cin, cout, 3, bias=False, indice_key=key), snn.SparseBatchNorm(cout),
                                snn.SparseReLU())


class SparseUNet(nn.Module):
    """Encoder of strided SparseConv3d (2x2x2, stride 2) with SubMConv3d blocks, decoder of SparseInverseConv3d
    back onto each level's own sites, skip connections by concatenating features (same sites, same order), and
    a per-voxel linear head. Returns a SparseTensor of logits on the input sites.

    Parameters with the defaults (in_channels=4, num_classes=2): 1,046,082.
    """

    def __init__(self, in_channels, num_classes, channels=(16, 32, 64, 128)):
        super().__init__()
        self.norm = FeatureNorm(in_channels)
        self.stem = _subm(in_channels, channels[0], "subm0")
        self.down, self.up, self.fuse = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i, (c, c_next) in enumerate(zip(channels[:-1], channels[1:])):
            self.down.append(snn.SparseSequential(
                snn.SparseConv3d(c, c_next, 2, stride=2, bias=False, indice_key=f"down{i}"),
                snn.SparseBatchNorm(c_next), snn.SparseReLU(), _subm(c_next, c_next, f"subm{i + 1}")))
            self.up.append(snn.SparseSequential(
                snn.SparseInverseConv3d(c_next, c, 2, indice_key=f"down{i}", bias=False),
                snn.SparseBatchNorm(c), snn.SparseReLU()))
            self.fuse.append(_subm(2 * c, c, f"subm{i}"))
        self.head = nn.Linear(channels[0], num_classes)

    def forward(self, x):
        x = self.stem(self.norm(x))
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(x)
        for up, fuse, skip in zip(reversed(self.up), reversed(self.fuse), reversed(skips)):
            x = up(x)
            x = fuse(x.replace(torch.cat([x.feats, skip.feats], 1)))
        return x.replace(self.head(x.feats))
