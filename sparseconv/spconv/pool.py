"""spconv's pooling layers on sparseconv.nn's. Output sites follow the strided conv's rule; with an indice_key a
SparseInverseConv3d restores the pooling layer's input sites.

Max pooling returns the max over a window's active inputs, as spconv does on CUDA with its default algorithm.
spconv's CPU wheel (and its Native algorithm) starts every output at 0 instead, so there a window whose active
inputs are all negative gives 0; after a ReLU, where pooling usually sits, the two agree. Average pooling divides
by the number of active inputs, as spconv's (which its CPU wheel cannot run).
"""
from .. import nn as snn
from .modules import SparseModule, SpconvLayer
from .options import expand, lift


class _Pool(SpconvLayer):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, indice_key=None, algo=None,
                 record_voxel_count=False, name=None):
        n = self.ndim
        k = expand(kernel_size, n, "kernel_size")
        s = k if stride is None else expand(stride, n, "stride")
        p, d = expand(padding, n, "padding"), expand(dilation, n, "dilation")
        # The sparseconv.nn pooling class that follows SparseModule in this class's MRO.
        super(SparseModule, self).__init__(lift(k, 1), lift(s, 1), lift(p, 0), lift(d, 1), indice_key)
        self._spconv_options(name, algo, record_voxel_count)


class SparseMaxPool3d(_Pool, snn.SparseMaxPool3d):
    pass


class SparseAvgPool3d(_Pool, snn.SparseAvgPool3d):
    pass


class SparseMaxPool2d(SparseMaxPool3d):
    ndim = 2


class SparseAvgPool2d(SparseAvgPool3d):
    ndim = 2
