"""Sparse 3D convolutions. Weights are [k0, k1, k2, Cin, Cout], so a kernel offset's matrix is one contiguous
[Cin, Cout] block; `from_conv3d` / `from_conv_transpose3d` bring dense-trained weights over unchanged.

indice_key names a map in the input's cache: submanifold layers with one key share a map, and an inverse conv
finds the strided conv (or pooling layer) whose input sites it restores. Reusing a key with another geometry
raises.
"""
import math

import torch
from torch import nn

from .. import ops
from .._args import optional_str, positive_int, triple
from ..kmap import restrict_inputs, strided_map, subm_map, subset_chain, transposed_map
from ..tensor import SparseTensor

MAX_KERNEL = 15  # per axis; csrc/cpu/kmap_cpu.cpp's limit


class _SparseConv(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, bias, indice_key,
                 device=None, dtype=None):
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.kernel_size = triple(kernel_size, "kernel_size", 1, MAX_KERNEL)
        self.stride = triple(stride, "stride", 1)
        self.padding = triple(padding, "padding", 0)
        self.dilation = triple(dilation, "dilation", 1)
        self.indice_key = optional_str(indice_key, "indice_key")
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(*self._weight_shape(), **kw))
        self.bias = nn.Parameter(torch.empty(out_channels, **kw)) if bias else None
        self.reset_parameters()

    def _weight_shape(self):
        return (*self.kernel_size, self.in_channels, self.out_channels)

    def reset_parameters(self):
        # torch.nn.Conv3d's default: kaiming_uniform(a=sqrt(5)) reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        bound = 1.0 / math.sqrt(self.in_channels * math.prod(self.kernel_size))
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if self.stride != (1, 1, 1):
            s += f", stride={self.stride}"
        if self.padding != (0, 0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1, 1):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        if self.indice_key is not None:
            s += f", indice_key={self.indice_key!r}"
        return s

    def _check_input(self, x):
        if not isinstance(x, SparseTensor):
            raise TypeError(f"input: expected a SparseTensor, got {type(x).__name__}")
        if x.feats.shape[1] != self.in_channels:
            raise ValueError(f"feats: {type(self).__name__} has in_channels={self.in_channels}, "
                             f"but the input has {x.feats.shape[1]} channels")

    def _weight_matrices(self):
        """[K, Cin, Cout]: the matrix of each kernel offset. A layer that stores its weight in another layout
        (sparseconv.spconv's) overrides this and _weight_shape."""
        return self.weight.view(math.prod(self.kernel_size), self.in_channels, self.out_channels)

    def _apply_map(self, x, kmap):
        return ops.sparse_conv(x.feats, self._weight_matrices(), self.bias, kmap.nbr, kmap.nbr_t)

    def _record(self, x, geometry, entry=None):
        return record_indice_key(x, self.indice_key, geometry, type(self).__name__, entry)


def record_indice_key(x, indice_key, geometry, owner, entry=None):
    """The indice_key entry in x's cache: created on first use (with x's sites, coords and shape, and the output
    sites and map `entry` of a layer that makes new sites), checked on every later one."""
    if indice_key is None:
        return None
    key = ("indice", indice_key)
    rec = x.kmaps.get(key)
    if rec is None:
        rec = x.kmaps[key] = dict(geometry=geometry, sites=x.sites, coords=x.coords,
                                  spatial_shape=x.spatial_shape, stride=x.stride, out=entry)
    elif rec["geometry"] != geometry:
        raise ValueError(f"indice_key {indice_key!r}: already used by a layer with geometry "
                         f"{_describe(rec['geometry'])}; this {owner} has {_describe(geometry)}")
    elif rec["sites"] != x.sites:
        raise ValueError(f"indice_key {indice_key!r}: already names the map of other sites (another "
                         "resolution); give this layer its own indice_key")
    return rec


def _describe(geometry):
    names = ("kernel_size", "stride", "padding", "dilation")
    return f"{geometry[0]}(" + ", ".join(f"{n}={v}" for n, v in zip(names, geometry[1:])) + ")"


class SubMConv3d(_SparseConv):
    """Submanifold convolution: output sites = input sites; at those sites equal to
    F.conv3d(x.dense(), W, padding=dilation * (k - 1) // 2, dilation=dilation) (odd k)."""

    def __init__(self, in_channels, out_channels, kernel_size, dilation=1, bias=True, indice_key=None,
                 device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, 1, 0, dilation, bias, indice_key, device, dtype)

    def forward(self, x):
        self._check_input(x)
        self._record(x, ("subm", self.kernel_size, (1, 1, 1), (0, 0, 0), self.dilation))
        out = self._apply_map(x, subm_map(x, self.kernel_size, self.dilation))
        return SparseTensor._derived(out, x.coords, x.spatial_shape, x.batch_size, x.stride, x.kmaps, x.sites)

    @classmethod
    def from_conv3d(cls, conv, indice_key=None):
        """A SubMConv3d with conv's weights; conv must be a 'same'-padded, stride-1 nn.Conv3d."""
        _check_dense(conv, nn.Conv3d, "conv")
        k, d = tuple(conv.kernel_size), tuple(conv.dilation)
        same = tuple(di * (ki - 1) // 2 for ki, di in zip(k, d))
        if tuple(conv.stride) != (1, 1, 1) or conv.padding not in ("same", same):
            raise ValueError(f"conv: a submanifold conv needs stride 1 and padding {same} (or 'same'), got "
                             f"stride={conv.stride}, padding={conv.padding}; use SparseConv3d.from_conv3d")
        layer = cls(conv.in_channels, conv.out_channels, k, d, conv.bias is not None, indice_key,
                    conv.weight.device, conv.weight.dtype)
        return _copy_weights(layer, conv.weight.permute(2, 3, 4, 1, 0), conv.bias)


class SparseConv3d(_SparseConv):
    """Regular (strided) sparse convolution: output sites = every position of F.conv3d's output grid whose
    receptive field holds at least one active input site (spconv's rule); values equal F.conv3d there."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 indice_key=None, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, bias, indice_key,
                         device, dtype)

    def forward(self, x):
        self._check_input(x)
        geometry = ("strided", self.kernel_size, self.stride, self.padding, self.dilation)
        entry = strided_map(x, self.kernel_size, self.stride, self.padding, self.dilation)
        self._record(x, geometry, entry)
        out = self._apply_map(x, entry.kmap)
        stride = tuple(a * b for a, b in zip(x.stride, self.stride))
        return SparseTensor._derived(out, entry.out_coords, entry.out_shape, x.batch_size, stride, x.kmaps,
                                     entry.out_sites)

    @classmethod
    def from_conv3d(cls, conv, indice_key=None):
        """A SparseConv3d with conv's weights, stride, padding and dilation."""
        _check_dense(conv, nn.Conv3d, "conv")
        padding = (0, 0, 0) if conv.padding == "valid" else conv.padding
        if isinstance(padding, str):
            raise ValueError(f"conv: padding={padding!r} is not supported; give explicit padding")
        layer = cls(conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride),
                    tuple(padding), tuple(conv.dilation), conv.bias is not None, indice_key,
                    conv.weight.device, conv.weight.dtype)
        return _copy_weights(layer, conv.weight.permute(2, 3, 4, 1, 0), conv.bias)


class SparseInverseConv3d(_SparseConv):
    """Inverts the SparseConv3d that ran with the same indice_key: output sites = that layer's input sites (same
    order, shape and stride); values equal F.conv_transpose3d with that layer's stride, padding and dilation."""

    def __init__(self, in_channels, out_channels, kernel_size, indice_key, bias=True, device=None, dtype=None):
        if not isinstance(indice_key, str):
            raise TypeError(f"indice_key: expected the str key of a SparseConv3d, got {indice_key!r}")
        super().__init__(in_channels, out_channels, kernel_size, 1, 0, 1, bias, indice_key, device, dtype)
        self.expected_geometry = None  # (stride, padding, dilation) when built from a ConvTranspose3d

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, " \
               f"indice_key={self.indice_key!r}" + ("" if self.bias is not None else ", bias=False")

    def forward(self, x):
        self._check_input(x)
        rec = x.kmaps.get(("indice", self.indice_key))
        if rec is None or rec["geometry"][0] != "strided":
            raise ValueError(f"indice_key {self.indice_key!r}: no SparseConv3d or pooling layer with this "
                             "indice_key ran on the inputs of this tensor")
        _, kernel_size, stride, padding, dilation = rec["geometry"]
        if kernel_size != self.kernel_size:
            raise ValueError(f"kernel_size: {self.kernel_size} differs from the kernel_size {kernel_size} of the "
                             f"SparseConv3d with indice_key {self.indice_key!r}")
        if self.expected_geometry not in (None, (stride, padding, dilation)):
            raise ValueError(f"indice_key {self.indice_key!r}: the SparseConv3d had stride={stride}, "
                             f"padding={padding}, dilation={dilation}; this layer was built for "
                             f"{self.expected_geometry}")
        out = self._apply_map(x, self._inverse_map(rec, x))
        return SparseTensor._derived(out, rec["coords"], rec["spatial_shape"], x.batch_size, rec["stride"],
                                     x.kmaps, rec["sites"])

    def _inverse_map(self, rec, x):
        """The strided conv's map transposed; restricted to the sites a SparseTopK kept when x is a subset of
        that conv's output."""
        key = ("inverse", x.sites)
        if key not in rec:
            entry = rec["out"]
            inverse = entry.kmap.transposed()
            if x.sites != entry.out_sites:
                subset = subset_chain(x.kmaps, x.sites, entry.out_sites)
                if subset is None:
                    raise ValueError(f"indice_key {self.indice_key!r}: the input's sites are not the output sites "
                                     "of the SparseConv3d with this key (nor a SparseTopK subset of them)")
                inverse = restrict_inputs(inverse, *subset)
            rec[key] = inverse
        return rec[key]

    @classmethod
    def from_conv_transpose3d(cls, conv, indice_key):
        """Same weights as conv (an nn.ConvTranspose3d); its stride/padding/dilation must match the
        SparseConv3d with indice_key (checked at the first call). output_padding is implied by that layer's
        input shape."""
        _check_dense(conv, nn.ConvTranspose3d, "conv")
        layer = cls(conv.in_channels, conv.out_channels, tuple(conv.kernel_size), indice_key,
                    conv.bias is not None, conv.weight.device, conv.weight.dtype)
        layer.expected_geometry = (tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation))
        return _copy_weights(layer, conv.weight.permute(2, 3, 4, 0, 1), conv.bias)


class SparseConvTranspose3d(_SparseConv):
    """Transposed sparse convolution: output sites = every cell of F.conv_transpose3d's output grid (output_padding
    0) that an active input reaches; values equal F.conv_transpose3d there (weight[k] = the dense weight[:, :, k]).
    Unlike SparseInverseConv3d, which restores a strided conv's input sites, it makes new sites (a dilation of the
    input's). The output's stride is the input's divided by this stride (at least 1)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 indice_key=None, device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, bias, indice_key,
                         device, dtype)

    def forward(self, x):
        self._check_input(x)
        entry = transposed_map(x, self.kernel_size, self.stride, self.padding, self.dilation)
        self._record(x, ("transposed", self.kernel_size, self.stride, self.padding, self.dilation), entry)
        out = self._apply_map(x, entry.kmap)
        stride = tuple(max(1, a // b) for a, b in zip(x.stride, self.stride))
        return SparseTensor._derived(out, entry.out_coords, entry.out_shape, x.batch_size, stride, x.kmaps,
                                     entry.out_sites)


def _check_dense(conv, kind, name):
    if not isinstance(conv, kind):
        raise TypeError(f"{name}: expected a torch.nn.{kind.__name__}, got {type(conv).__name__}")
    if conv.groups != 1:
        raise ValueError(f"{name}: groups={conv.groups} is not supported (only 1)")
    if conv.padding_mode != "zeros":
        raise ValueError(f"{name}: padding_mode={conv.padding_mode!r} is not supported (only 'zeros')")


def _copy_weights(layer, weight, bias):
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer
