"""Feature-wise layers: they act on feats only, so the output keeps the input's sites and kernel-map cache."""
import torch
from torch import nn

from ..determinism import batch_norm, is_deterministic
from ..tensor import SparseTensor


def _sparse_input(x):
    if not isinstance(x, SparseTensor):
        raise TypeError(f"input: expected a SparseTensor, got {type(x).__name__}")
    return x


class SparseFeatureWise(nn.Module):
    """Applies a torch module to the feature rows [N, C] (any module that treats rows independently)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return _sparse_input(x).replace(self.module(x.feats))


class SparseBatchNorm(nn.Module):
    """BatchNorm1d over the active sites' features. The BatchNorm1d is a child module, so
    torch.nn.SyncBatchNorm.convert_sync_batchnorm (CUDA) or sparseconv.distributed.convert_sync_batchnorm
    replaces it and this wrapper keeps working. In deterministic mode (sparseconv.set_deterministic) the
    statistics are summed in an order that does not depend on the thread count."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, eps, momentum, affine, track_running_stats)

    def forward(self, x):
        feats = _sparse_input(x).feats
        if type(self.bn) is nn.BatchNorm1d and is_deterministic():
            return x.replace(batch_norm(self.bn, feats))
        if self.training and torch.compiler.is_compiling():
            # Under torch.compile the row count may be the data-dependent size of a strided map built in the
            # graph; BatchNorm's "more than 1 value per channel" check cannot guard on it, so state it.
            torch._check(feats.shape[0] != 1)
        return x.replace(self.bn(feats))


class BatchNorm3d(nn.BatchNorm3d):
    """torch.nn.BatchNorm3d (same parameters and state_dict) that follows sparseconv's deterministic mode; for
    the dense heads after ToDense."""

    def forward(self, x):
        return batch_norm(self, x) if is_deterministic() else super().forward(x)


class SparseReLU(SparseFeatureWise):
    def __init__(self, inplace=False):
        super().__init__(nn.ReLU(inplace))


class SparseLeakyReLU(SparseFeatureWise):
    def __init__(self, negative_slope=0.01, inplace=False):
        super().__init__(nn.LeakyReLU(negative_slope, inplace))


class SparseELU(SparseFeatureWise):
    def __init__(self, alpha=1.0):
        super().__init__(nn.ELU(alpha))


class SparseGELU(SparseFeatureWise):
    def __init__(self):
        super().__init__(nn.GELU())


class SparseSiLU(SparseFeatureWise):
    def __init__(self):
        super().__init__(nn.SiLU())


class SparseSigmoid(SparseFeatureWise):
    def __init__(self):
        super().__init__(nn.Sigmoid())


class SparseDropout(SparseFeatureWise):
    """Element-wise dropout of the features (sites stay; use SparseTopK to drop sites)."""

    def __init__(self, p=0.5):
        super().__init__(nn.Dropout(p))


class SparseSequential(nn.Sequential):
    """nn.Sequential that also accepts plain feature-wise torch modules (nn.ReLU, nn.BatchNorm1d, ...): those are
    applied to the features while a SparseTensor flows; once a module returns a dense tensor (ToDense), the
    rest run as in nn.Sequential."""

    def forward(self, x):
        for module in self:
            if isinstance(x, SparseTensor) and not _takes_sparse(module):
                x = x.replace(module(x.feats))
            else:
                x = module(x)
        return x


# _BatchNorm: BatchNorm1d and what convert_sync_batchnorm turns it into (torch's or sparseconv's SyncBatchNorm).
_FEATURE_WISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Identity,
                 nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.Linear)


def _takes_sparse(module):
    return not isinstance(module, _FEATURE_WISE)
