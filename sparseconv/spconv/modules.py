"""spconv's containers and feature-wise modules. SparseSequential follows spconv's rule: a SparseModule (every
conv and pooling layer here, ToDense, user modules derived from SparseModule) gets the SparseConvTensor; any other
module (nn.BatchNorm1d, nn.ReLU, ...) gets its features, and is skipped on a tensor without sites (as spconv does,
since BatchNorm1d cannot take 0 rows). The state_dict keys are spconv's ("0.weight", "1.running_mean", ...)."""
import torch
from torch import nn

from ..determinism import batch_norm, is_deterministic
from .options import check_algo
from .tensor import SparseConvTensor


MAX_VOXELS = "max_num_voxels_during_training"  # spconv's buffer name (state_dict key)


class SparseModule(nn.Module):
    """Marks a module that takes the SparseConvTensor itself inside a SparseSequential."""

    name = None  # class defaults: the layers here initialise through sparseconv.nn's constructors
    _sparse_unique_name = ""

    def __init__(self, name=None):
        super().__init__()
        self.name = name


class SpconvLayer(SparseModule):
    """A sparseconv.nn layer behind spconv's interface (a mixin placed before that layer's class): unwraps the
    SparseConvTensor, runs the layer, wraps the result; spconv's algo and record_voxel_count options."""

    ndim = 3
    record_voxel_count = False

    def _spconv_options(self, name, algo, record_voxel_count=False):
        self.name = name
        self.algo = check_algo(algo)
        if record_voxel_count:
            # The most output sites seen (spconv sizes TensorRT engines with it).
            self.register_buffer(MAX_VOXELS, torch.zeros(1, dtype=torch.int32))
            self.record_voxel_count = True

    def forward(self, input):
        out = super().forward(check_input(input, type(self).__name__, self.ndim))
        if self.record_voxel_count:
            getattr(self, MAX_VOXELS).clamp_(min=out.coords.shape[0])
        return input._derived(out)


def check_input(x, owner, ndim=None):
    """x's sparseconv.SparseTensor, after checking that x is a SparseConvTensor (of ndim spatial axes)."""
    if not isinstance(x, SparseConvTensor):
        raise TypeError(f"input: {owner} expected a SparseConvTensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"input: {owner} is a {ndim}D layer, got a {x.ndim}D SparseConvTensor (indices with "
                         f"{x.ndim + 1} columns)")
    return x.sparse_tensor


class SparseSequential(SparseModule, nn.Sequential):
    """spconv.SparseSequential(*modules) / (OrderedDict) / (**named_modules)."""

    def __init__(self, *args, **kwargs):
        nn.Sequential.__init__(self, *args)
        for name, module in kwargs.items():
            if name in self._modules:
                raise ValueError(f"{name}: a module of that name is already in the SparseSequential")
            self.add_module(name, module)

    def add(self, module, name=None):
        name = str(len(self._modules)) if name is None else name
        if name in self._modules:
            raise KeyError(f"name: {name!r} is already in the SparseSequential")
        self.add_module(name, module)

    def forward(self, input):
        for module in self._modules.values():
            if isinstance(module, (SparseModule, SparseBatchNorm, SparseReLU, SparseIdentity)):
                input = module(input)
            elif isinstance(input, SparseConvTensor):
                if input.features.shape[0]:
                    input = input.replace_feature(module(input.features))
            else:
                input = module(input)
        return input


class ToDense(SparseModule):
    """SparseConvTensor -> dense [B, C, *spatial_shape] (spconv's ToDense: the tensor's whole grid)."""

    def forward(self, x):
        check_input(x, "ToDense")
        return x.dense()


class SparseBatchNorm(nn.BatchNorm1d):
    """nn.BatchNorm1d (same state_dict) that takes a SparseConvTensor's features; follows sparseconv's
    deterministic mode like sparseconv.nn.SparseBatchNorm."""

    def forward(self, input):
        if not isinstance(input, SparseConvTensor):
            return super().forward(input)
        feats = input.features
        return input.replace_feature(batch_norm(self, feats) if is_deterministic() else super().forward(feats))


class _FeatureWise:
    def forward(self, input):
        if isinstance(input, SparseConvTensor):
            return input.replace_feature(super().forward(input.features))
        return super().forward(input)


class SparseReLU(_FeatureWise, nn.ReLU):
    pass


class SparseIdentity(_FeatureWise, nn.Identity):
    pass


__all__ = ["SparseModule", "SparseSequential", "ToDense", "SparseBatchNorm", "SparseReLU", "SparseIdentity"]
