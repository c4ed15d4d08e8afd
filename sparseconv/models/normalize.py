"""Input-feature normalisation stored with a model, so a saved model carries the statistics of its training split."""
import torch
from torch import nn


class FeatureNorm(nn.Module):
    """(feats - mean) / std with buffers: saved in state_dict, set once from the training split."""

    def __init__(self, channels):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    @torch.no_grad()
    def fit(self, feats):
        """Statistics of feats [N, C] (the training split's voxel features only)."""
        self.mean.copy_(feats.mean(0))
        self.std.copy_(feats.std(0).clamp_min(1e-6))

    def forward(self, x):
        return x.replace((x.feats - self.mean) / self.std)
