"""spconv 2.x's convolutions as sparseconv.nn layers that store spconv's weight layout, [Cout, *kernel_size, Cin]
(spconv >= 2.2 keeps every weight so, whatever its algo), so its state_dicts load with strict=True; the layout
is converted to ours ([K, Cin, Cout]) on every call, inside autograd. Same initialisation as spconv (one uniform
draw for the weight, then one for the bias, same bounds): a seeded model starts from spconv's weights.

The 2D classes are the 3D ones on a unit third axis (kernel 1, stride 1, padding 0 there).
"""
import math

from .. import nn as snn
from .modules import SpconvLayer
from .options import expand, lift


class SparseConvolution(SpconvLayer):
    """Base of the spconv-compatible convolutions (for isinstance checks written against spconv's)."""

    subm = transposed = inverse = False

    def _spconv_geometry(self, kernel_size, stride, padding, dilation, groups):
        """spconv's arguments, checked, as (kernel_size, stride, padding, dilation) lists of ndim ints."""
        if groups != 1:
            raise ValueError(f"groups: only 1 is supported (as in spconv), got {groups!r}")
        n = self.ndim
        k, s = expand(kernel_size, n, "kernel_size"), expand(stride, n, "stride")
        p, d = expand(padding, n, "padding"), expand(dilation, n, "dilation")
        if not self.subm and math.prod(k) == 1 and math.prod(s) == 1 and any(p):
            raise ValueError(f"padding: a 1x1 {type(self).__name__} with stride 1 takes no padding (spconv "
                             f"asserts the same), got {p}")
        return k, s, p, d

    @property
    def conv1x1(self):
        return math.prod(self.kernel_size) == 1 and (self.subm or math.prod(self.stride) == 1)

    def _weight_shape(self):
        return (self.out_channels, *self.kernel_size[:self.ndim], self.in_channels)

    def _weight_matrices(self):
        if self.conv1x1:
            # spconv 2.3.8 computes a 1x1 conv as features @ weight.view(Cin, Cout): the [Cout, 1.., Cin] tensor's
            # memory read as [Cin, Cout], not transposed. Checkpoints learnt their 1x1 weights that way.
            return self.weight.reshape(1, self.in_channels, self.out_channels)
        k = math.prod(self.kernel_size)
        return self.weight.movedim(0, -1).reshape(k, self.in_channels, self.out_channels).contiguous()

    def forward(self, input, add_input=None):
        if add_input is not None:
            raise NotImplementedError("add_input: spconv's fused residual add (its int8 inference path) is not "
                                      "supported; add after the layer: y.replace_feature(y.features + "
                                      "add_input.features)")
        return super().forward(input)

    @classmethod
    def from_conv3d(cls, *args, **kwargs):
        raise NotImplementedError(f"{cls.__name__}.from_conv3d: use sparseconv.nn's layers to bring dense weights "
                                  "over; these classes take spconv's arguments and weight layout")

    from_conv_transpose3d = from_conv3d


class SubMConv3d(SparseConvolution, snn.SubMConv3d):
    """spconv.SubMConv3d: output sites = input sites. padding is accepted and ignored (spconv ignores it too: a
    submanifold conv is always 'same'-padded); a stride other than 1, which spconv silently ignores, raises."""

    subm = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 indice_key=None, algo=None, fp32_accum=None, large_kernel_fast_algo=False, name=None):
        k, s, _, d = self._spconv_geometry(kernel_size, stride, padding, dilation, groups)
        if any(v != 1 for v in s):
            raise ValueError(f"stride: a submanifold conv keeps its input sites; spconv ignores stride={s} here, "
                             "sparseconv.spconv refuses it (use SparseConv3d to downsample)")
        snn.SubMConv3d.__init__(self, in_channels, out_channels, lift(k, 1), lift(d, 1), bias, indice_key)
        self._spconv_options(name, algo)


class SparseConv3d(SparseConvolution, snn.SparseConv3d):
    """spconv.SparseConv3d: output sites = every output cell whose window holds an active input."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 indice_key=None, algo=None, fp32_accum=None, record_voxel_count=False,
                 large_kernel_fast_algo=False, name=None):
        k, s, p, d = self._spconv_geometry(kernel_size, stride, padding, dilation, groups)
        snn.SparseConv3d.__init__(self, in_channels, out_channels, lift(k, 1), lift(s, 1), lift(p, 0), lift(d, 1),
                                  bias, indice_key)
        self._spconv_options(name, algo, record_voxel_count)


class SparseConvTranspose3d(SparseConvolution, snn.SparseConvTranspose3d):
    """spconv.SparseConvTranspose3d: output sites = every cell of the transposed conv's grid an input reaches."""

    transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 indice_key=None, algo=None, fp32_accum=None, record_voxel_count=False,
                 large_kernel_fast_algo=False, name=None):
        k, s, p, d = self._spconv_geometry(kernel_size, stride, padding, dilation, groups)
        if any(v != 1 for v in d):
            raise NotImplementedError(f"dilation={d}: spconv 2.3.8 sizes a dilated transposed conv's grid without "
                                      "the dilation and crops its outputs; not reproduced (dilation 1 only)")
        snn.SparseConvTranspose3d.__init__(self, in_channels, out_channels, lift(k, 1), lift(s, 1), lift(p, 0),
                                           lift(d, 1), bias, indice_key)
        self._spconv_options(name, algo, record_voxel_count)


class SparseInverseConv3d(SparseConvolution, snn.SparseInverseConv3d):
    """spconv.SparseInverseConv3d: restores the input sites of the SparseConv3d / SparseMaxPool3d that ran with
    the same indice_key (and uses its map transposed)."""

    inverse = True

    def __init__(self, in_channels, out_channels, kernel_size, indice_key, bias=True, algo=None, fp32_accum=None,
                 large_kernel_fast_algo=False, name=None):
        k = expand(kernel_size, self.ndim, "kernel_size")
        if math.prod(k) == 1:
            raise NotImplementedError("kernel_size: spconv 2.3.8 runs an inverse conv with a 1x1 kernel as a plain "
                                      "per-site linear layer on its input's sites, without inverting anything; "
                                      "not reproduced (use SubMConv3d(..., 1) for that)")
        snn.SparseInverseConv3d.__init__(self, in_channels, out_channels, lift(k, 1), indice_key, bias)
        self._spconv_options(name, algo)


class SubMConv2d(SubMConv3d):
    ndim = 2


class SparseConv2d(SparseConv3d):
    ndim = 2


class SparseConvTranspose2d(SparseConvTranspose3d):
    ndim = 2


class SparseInverseConv2d(SparseInverseConv3d):
    ndim = 2
