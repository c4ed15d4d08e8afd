"""spconv's SparseConvTensor as a view of a sparseconv.SparseTensor (which carries the sites, features and the
kernel-map cache that indice_key entries live in). 2D tensors ([N, 3] indices) ride on a unit third axis."""
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..kmap import new_sites
from ..tensor import SparseTensor
from .options import check_algo


@dataclass(frozen=True)
class IndiceData:
    """What spconv's IndiceData says about an indice_key's layer: its input and output sites and geometry (not
    spconv's pair tensors: the maps are sparseconv's own)."""

    indices: torch.Tensor
    out_indices: torch.Tensor
    spatial_shape: list
    out_spatial_shape: list
    is_subm: bool
    ksize: list
    stride: list
    padding: list
    dilation: list


class IndiceDict(Mapping):
    """Read-only {indice_key: IndiceData} over a tensor's kernel-map cache. The cache is shared by every tensor of
    one forward pass, so it lists the keys of all layers that ran on it so far (spconv copies the dict per layer).
    Pass it as SparseConvTensor(..., indice_dict=x.indice_dict) to keep a network's keys on a new tensor."""

    def __init__(self, tensor, ndim):
        self._tensor = tensor
        self._ndim = ndim

    def _records(self):
        return {k[1]: rec for k, rec in self._tensor.kmaps.items() if isinstance(k, tuple) and k[0] == "indice"}

    def __getitem__(self, key):
        rec = self._records()[key]
        kind, kernel_size, stride, padding, dilation = rec["geometry"]
        out = rec["out"]
        n = self._ndim
        return IndiceData(
            indices=_cut(rec["coords"], n), out_indices=_cut(rec["coords"] if out is None else out.out_coords, n),
            spatial_shape=list(rec["spatial_shape"][:n]),
            out_spatial_shape=list((rec["spatial_shape"] if out is None else out.out_shape)[:n]),
            is_subm=kind == "subm", ksize=list(kernel_size[:n]), stride=list(stride[:n]),
            padding=list(padding[:n]), dilation=list(dilation[:n]))

    def __iter__(self):
        return iter(self._records())

    def __len__(self):
        return len(self._records())

    def __repr__(self):
        return f"IndiceDict({list(self)})"


def _cut(coords, ndim):
    return coords if ndim == 3 else coords[:, :ndim + 1]


class SparseConvTensor:
    """spconv.pytorch.SparseConvTensor(features, indices, spatial_shape, batch_size): features [N, C], indices
    int32 [N, ndim + 1] = (batch, c0, c1[, c2]) with ndim 3 or 2. Coordinates are checked (non-negative, inside
    spatial_shape, batch below batch_size; duplicates raise when a map is built).

    grid and permanent_thrust_allocator are allocation hints, accepted and ignored; algo choices (force_algo)
    are noted once and ignored; benchmark, enable_timer and voxel_num (TensorRT) are not supported and raise.
    """

    __slots__ = ("_tensor", "_ndim", "_indices")

    def __init__(self, features, indices, spatial_shape, batch_size, grid=None, voxel_num=None,
                 indice_dict=None, benchmark=False, permanent_thrust_allocator=False, enable_timer=False,
                 force_algo=None):
        for flag, name in ((benchmark, "benchmark"), (enable_timer, "enable_timer")):
            if flag:
                raise NotImplementedError(f"{name}=True: spconv's per-layer timing hooks are not supported by "
                                          "sparseconv.spconv; time the forward pass with torch.profiler")
        if voxel_num is not None:
            raise NotImplementedError("voxel_num: spconv's TensorRT voxel count is not supported")
        check_algo(force_algo, "force_algo")
        if not isinstance(indices, torch.Tensor) or indices.dim() != 2 or indices.shape[1] not in (3, 4):
            got = tuple(indices.shape) if isinstance(indices, torch.Tensor) else type(indices).__name__
            raise ValueError(f"indices: expected a tensor [N, 4] = (batch, c0, c1, c2) or [N, 3] for 2D, got {got}")
        if indices.dtype != torch.int32:
            raise TypeError(f"indices: expected dtype torch.int32 (as spconv), got {indices.dtype}; pass "
                            "indices.int()")
        ndim = indices.shape[1] - 1
        shape = list(spatial_shape.tolist() if hasattr(spatial_shape, "tolist") else spatial_shape)
        if len(shape) != ndim:
            raise ValueError(f"spatial_shape: expected {ndim} values for indices with {ndim + 1} columns, got "
                             f"{shape}")
        try:
            batch_size = operator.index(batch_size)  # numpy and 0-d tensor ints, as spconv users pass them
        except TypeError:
            raise TypeError(f"batch_size: expected an int, got {type(batch_size).__name__}") from None
        coords = indices if ndim == 3 else torch.cat([indices, indices.new_zeros(indices.shape[0], 1)], 1)
        tensor = SparseTensor(features, coords, shape + [1] * (3 - ndim), batch_size)
        self._set(_share_cache(tensor, indice_dict), ndim, indices if ndim == 2 else None)

    def _set(self, tensor, ndim, indices=None):
        self._tensor = tensor
        self._ndim = ndim
        self._indices = indices
        return self

    @classmethod
    def from_sparse_tensor(cls, tensor, ndim=3):
        """A view of a sparseconv.SparseTensor (sites, features and kernel-map cache shared)."""
        if not isinstance(tensor, SparseTensor):
            raise TypeError(f"tensor: expected a sparseconv.SparseTensor, got {type(tensor).__name__}")
        if ndim not in (2, 3) or ndim == 2 and tensor.spatial_shape[2] != 1:
            raise ValueError(f"ndim: expected 3, or 2 for a tensor whose third axis has size 1, got {ndim} for "
                             f"spatial_shape {tensor.spatial_shape}")
        return cls.__new__(cls)._set(tensor, ndim)

    @property
    def sparse_tensor(self):
        """The sparseconv.SparseTensor underneath (2D: on a unit third axis), for sparseconv.nn layers."""
        return self._tensor

    @property
    def ndim(self):
        return self._ndim

    @property
    def features(self):
        return self._tensor.feats

    @features.setter
    def features(self, value):
        raise ValueError("features: can't be set directly; use x = x.replace_feature(new_features) (as in spconv)")

    @property
    def indices(self):
        if self._indices is None:
            self._indices = _cut(self._tensor.coords, self._ndim).contiguous()
        return self._indices

    @property
    def spatial_shape(self):
        return list(self._tensor.spatial_shape[:self._ndim])

    @property
    def spatial_size(self):
        return math.prod(self.spatial_shape)

    @property
    def batch_size(self):
        return self._tensor.batch_size

    @property
    def indice_dict(self):
        return IndiceDict(self._tensor, self._ndim)

    def find_indice_pair(self, key):
        return self.indice_dict.get(key)

    def replace_feature(self, feature):
        """Same sites and kernel-map cache, new features [N, C']."""
        return self._derived(self._tensor.replace(feature))

    def _derived(self, tensor):
        return SparseConvTensor.from_sparse_tensor(tensor, self._ndim)

    def shadow_copy(self):
        return self._derived(self._tensor)

    def minus(self):
        return self.replace_feature(-self.features)

    def __add__(self, other):
        other = other.features if isinstance(other, SparseConvTensor) else other
        if not isinstance(other, torch.Tensor):
            raise TypeError(f"other: expected a SparseConvTensor or a tensor, got {type(other).__name__}")
        return self.replace_feature(self.features + other)

    __radd__ = __add__

    def select_by_index(self, valid_indices):
        """The rows valid_indices (an index or bool mask), with a fresh kernel-map cache (spconv clears its
        indice_dict here too)."""
        t = self._tensor
        coords = t.coords[valid_indices]
        sub = SparseTensor(t.feats[valid_indices], coords, t.spatial_shape, t.batch_size)
        return self._derived(sub)

    def dense(self, channels_first=True):
        """[B, C, *spatial_shape] (channels_first) or [B, *spatial_shape, C]; zeros at inactive sites."""
        out = self._tensor.dense()  # [B, C, X, Y, Z]
        if self._ndim == 2:
            out = out.squeeze(-1)
        return out if channels_first else out.movedim(1, -1).contiguous()

    @classmethod
    def from_dense(cls, x):
        """From a channels-last [B, *spatial, C] tensor (ndim 2 or 3): sites where any channel is non-zero."""
        if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5):
            raise ValueError(f"x: expected a channels-last tensor [B, *spatial, C] with 2 or 3 spatial axes, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        ndim = x.dim() - 2
        t = x.movedim(-1, 1)
        return cls.from_sparse_tensor(SparseTensor.from_dense(t if ndim == 3 else t.unsqueeze(-1)), ndim)

    def __repr__(self):
        return f"SparseConvTensor[shape={self.features.shape}]"


def _share_cache(tensor, indice_dict):
    """tensor on the kernel-map cache of indice_dict's tensor: the same sites when the coordinates are the same,
    else new sites of that cache (its keys are then visible, but reusing them checks the sites)."""
    if indice_dict is None or (isinstance(indice_dict, dict) and not indice_dict):
        return tensor
    if not isinstance(indice_dict, IndiceDict):
        raise TypeError("indice_dict: expected None or the indice_dict of a sparseconv.spconv SparseConvTensor, "
                        f"got {type(indice_dict).__name__}")
    src = indice_dict._tensor
    same = (src.spatial_shape == tensor.spatial_shape and src.batch_size == tensor.batch_size
            and (src.coords is tensor.coords or torch.equal(src.coords, tensor.coords)))
    sites = src.sites if same else new_sites(src.kmaps)
    return SparseTensor._derived(tensor.feats, tensor.coords, tensor.spatial_shape, tensor.batch_size,
                                 src.stride if same else tensor.stride, src.kmaps, sites)
