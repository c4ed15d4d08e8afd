"""Optional peer libraries for side-by-side measurements (never a dependency of sparseconv itself).

spconv 2.3.8 (``pip install spconv==2.3.8``, the CPU wheel; it pulls cumm, pccm, ccimport, fire and does not
pull torch) runs on torch 2.x CPU once :func:`load_spconv` patches one thing: its backward and hash code ask
``torch.cuda.current_stream()`` unconditionally, which fails on a CPU-only torch: ``get_current_stream``
returns 0 (the "no stream" value spconv's CPU kernels expect) when CUDA is absent. Apart from that spconv runs
as shipped, so timings are what its users get. Its CPU scatter-add has a data race with more than one OpenMP
thread (see below): each call adds a few rows to the wrong outputs, different ones each run.
:func:`serial_scatter` runs it serially for exact reference results (~20-25% slower: never time under it).

Layouts: spconv's weight is [Cout, k0, k1, k2, Cin] (KRSC), sparseconv's is [k0, k1, k2, Cin, Cout]; both
compute a cross-correlation (like torch.nn.Conv3d, no kernel flip). spconv's indices are int32 [N, 4] =
(batch, c0, c1, c2), the same as sparseconv's coords (batch, x, y, z), with spatial_shape (X, Y, Z).
"""

from __future__ import annotations

import contextlib
import importlib
import time
from typing import Optional, Sequence

import torch

_SPCONV = None
_SPCONV_TRIED = False
_SPCONV_ERROR: Optional[str] = None


def _cpu_stream() -> int:
    return 0


def load_spconv():
    """The ``spconv.pytorch`` module (patched for CPU-only torch), or None when spconv is not importable.

    The reason of a failed import is kept in :func:`spconv_error`.
    """
    global _SPCONV, _SPCONV_TRIED, _SPCONV_ERROR
    if _SPCONV_TRIED:
        return _SPCONV
    _SPCONV_TRIED = True
    try:
        spconv_pytorch = importlib.import_module("spconv.pytorch")
    except Exception as e:  # ImportError, or a broken binary (OSError, RuntimeError, ...)
        _SPCONV_ERROR = f"{type(e).__name__}: {e}"
        return None
    if not torch.cuda.is_available():
        # `ops` and `hash` did `from spconv.pytorch.cppcore import get_current_stream`: patch every copy.
        for name in ("cppcore", "ops", "hash", "functional"):
            try:
                mod = importlib.import_module(f"spconv.pytorch.{name}")
            except Exception:
                continue
            if hasattr(mod, "get_current_stream"):
                mod.get_current_stream = _cpu_stream
    _SPCONV = spconv_pytorch
    return _SPCONV


# ------------------------------------------------------------------------------------------------------------
# spconv 2.3.8's CPU scatter-add races. GatherCPU::scatter_add (spconv/csrc/sparse/gather.py) declares its row
# pointers `buf` and `out_ptr` outside the OpenMP-parallel tv::kernel_1d lambda and assigns them inside it, so
# with more than one OpenMP thread the threads overwrite each other's pointers and rows are added to the wrong
# outputs: forward and input-gradient results then differ from run to run (with one thread they are exact).
#
# Which OpenMP runtime runs it: spconv's wheel bundles its own libgomp (spconv.libs/libgomp-*.so), but torch
# has already put its libgomp in the global symbol scope, so spconv's GOMP_parallel/omp_* calls bind to
# torch's runtime (check with LD_DEBUG=bindings): torch.set_num_threads(n) sets spconv's thread count too.
# serial_scatter() runs scatter_add_cpu with the runtime(s) it may use set to one thread (its gather stays
# parallel) and restores the count afterwards; if no runtime can be reached through ctypes it falls back to
# torch's index_add_.
# ------------------------------------------------------------------------------------------------------------

_OMP_LIBS: list = []  # ctypes handles of the OpenMP runtimes spconv's calls may bind to


def _find_omp_runtimes() -> list:
    import ctypes
    import glob
    import os

    libs, seen = [], set()

    def add(lib):
        try:
            fn = lib.omp_set_num_threads
            get = lib.omp_get_max_threads
        except AttributeError:
            return
        addr = ctypes.cast(fn, ctypes.c_void_p).value
        if addr in seen:
            return
        seen.add(addr)
        fn.argtypes = [ctypes.c_int]
        get.restype = ctypes.c_int
        libs.append(lib)

    # 1) global scope first: that is where the dynamic linker resolves spconv's calls.
    add(ctypes.CDLL(None))
    # 2) spconv's bundled copy (used only when no runtime is global, e.g. spconv imported before torch's).
    import spconv

    root = os.path.dirname(os.path.dirname(spconv.__file__))
    for path in sorted(glob.glob(os.path.join(root, "spconv.libs", "libgomp*.so*"))):
        try:
            add(ctypes.CDLL(path))
        except OSError:
            pass
    return libs


class _SerialScatterOps:
    """Stands in for spconv's SpconvOps class inside spconv.pytorch.ops; only scatter_add_cpu changes."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def scatter_add_cpu(self, out, inp, inds):
        if _OMP_LIBS:
            saved = [lib.omp_get_max_threads() for lib in _OMP_LIBS]
            for lib in _OMP_LIBS:
                lib.omp_set_num_threads(1)
            try:
                return self._real.scatter_add_cpu(out, inp, inds)
            finally:
                for lib, n in zip(_OMP_LIBS, saved):
                    lib.omp_set_num_threads(n)
        o = torch.from_numpy(out.numpy_view())
        i = torch.from_numpy(inds.numpy_view()).long()
        src = torch.from_numpy(inp.numpy_view())[: i.shape[0]]
        o.index_add_(0, i, src)


@contextlib.contextmanager
def serial_scatter():
    """Within the block spconv's CPU scatter-add runs on one thread (exact results); spconv as shipped after.

    spconv.pytorch.ops looks ``SpconvOps`` up at call time, so swapping that module global is enough.
    """
    global _OMP_LIBS
    if load_spconv() is None:
        raise RuntimeError(f"spconv is not importable: {spconv_error()}")
    ops = importlib.import_module("spconv.pytorch.ops")
    if isinstance(ops.SpconvOps, _SerialScatterOps):  # nested: already serial
        yield
        return
    if not _OMP_LIBS:
        _OMP_LIBS = _find_omp_runtimes()
    real = ops.SpconvOps
    ops.SpconvOps = _SerialScatterOps(real)
    try:
        yield
    finally:
        ops.SpconvOps = real


def omp_threads() -> Optional[int]:
    """omp_get_max_threads() of the OpenMP runtime spconv's calls bind to (the global one), or None."""
    global _OMP_LIBS
    if load_spconv() is None:
        return None
    if not _OMP_LIBS:
        _OMP_LIBS = _find_omp_runtimes()
    return _OMP_LIBS[0].omp_get_max_threads() if _OMP_LIBS else None


def spconv_error() -> Optional[str]:
    """Why :func:`load_spconv` returned None (None when it did not, or was not called)."""
    return _SPCONV_ERROR


def spconv_version() -> Optional[str]:
    if load_spconv() is None:
        return None
    import spconv

    return getattr(spconv, "__version__", "unknown")


def weight_to_spconv(weight: torch.Tensor, spconv_weight_shape: Sequence[int]) -> torch.Tensor:
    """Our weight [k0, k1, k2, Cin, Cout] in the layout a spconv module declares (``module.weight.shape``)."""
    k0, k1, k2, cin, cout = weight.shape
    shape = tuple(spconv_weight_shape)
    if shape == (cout, k0, k1, k2, cin):  # KRSC, spconv >= 2.2 default
        w = weight.permute(4, 0, 1, 2, 3)
    elif shape == (k0, k1, k2, cin, cout):  # RSCK
        w = weight
    elif shape == (k0, k1, k2, cout, cin):  # RSKC
        w = weight.permute(0, 1, 2, 4, 3)
    else:
        raise ValueError(f"weight: cannot map shape {tuple(weight.shape)} onto spconv's layout {shape}")
    return w.contiguous()


def spconv_indice_data(conv, indices: torch.Tensor, spatial_shape: Sequence[int], batch_size: int, geometry=None):
    """spconv's own kernel-map generation for layer `conv`, as its forward runs it on a fresh tensor (training mode:
    a strided map includes the backward pairs an inverse conv needs). Follows the layer's algorithm: Native (the CPU
    wheel, or kernels > 32 offsets) or implicit GEMM (CUDA's default).

    geometry: (kernel_size, stride, padding, subm) to build another layer's map (an inverse conv's strided conv);
    default the layer's own. Returns (out_indices, IndiceData or ImplicitGemmIndiceData, out_spatial_shape).
    """
    from spconv.core import ConvAlgo
    from spconv.pytorch import ops
    from spconv.pytorch.core import ImplicitGemmIndiceData, IndiceData

    ksize, stride, padding, subm = geometry or (list(conv.kernel_size), list(conv.stride), list(conv.padding),
                                                conv.subm)
    ksize, stride, padding, dil = list(ksize), list(stride), list(padding), list(conv.dilation)
    out_padding = [0] * len(ksize)
    ss = list(spatial_shape)
    out_ss = ss if subm else ops.get_conv_output_size(ss, ksize, stride, padding, dil)
    indices = indices.to(torch.int32).contiguous()
    common = {"is_subm": subm, "algo": conv.algo, "ksize": ksize, "stride": stride, "padding": padding,
              "dilation": dil}
    if conv.algo == ConvAlgo.Native:
        outids, pairs, pair_num = ops.get_indice_pairs(indices, int(batch_size), ss, conv.algo, ksize, stride,
                                                       padding, dil, out_padding, subm, False)
        return outids, IndiceData(outids, indices, pairs, pair_num, ss, out_ss, **common), out_ss
    r = ops.get_indice_pairs_implicit_gemm(indices, int(batch_size), ss, conv.algo, ksize=ksize, stride=stride,
                                           padding=padding, dilation=dil, out_padding=out_padding, subm=subm,
                                           transpose=False, is_train=True)
    data = ImplicitGemmIndiceData(r[0], indices, r[2], r[3], pair_mask_fwd_splits=r[4], pair_mask_bwd_splits=r[5],
                                  mask_argsort_fwd_splits=r[6], mask_argsort_bwd_splits=r[7], masks=r[8],
                                  spatial_shape=ss, out_spatial_shape=out_ss, **common)
    return r[0], data, out_ss


def spconv_cached_conv(conv, features: torch.Tensor, data) -> torch.Tensor:
    """Output features of spconv layer `conv` on a kernel map `data` built before (spconv_indice_data): what
    SparseConvolution._conv_forward runs after its map branch. Its strided layers rebuild their map on every call
    (they reuse only submanifold maps), so a "map cached" forward of SparseConv3d needs this call; training mode
    (bias added after the product, as spconv does while training)."""
    from spconv.core import ConvAlgo
    from spconv.pytorch import functional as Fsp
    from spconv.tools import CUDAKernelTimer

    timer = CUDAKernelTimer(False)
    w, bias = conv.weight, conv.bias
    b_infer = None if conv.training else bias
    n_out = (data.indices if conv.inverse else data.out_indices).shape[0]
    features = features.contiguous()
    if data.algo == ConvAlgo.Native:
        fn = Fsp.indice_subm_conv if conv.subm else (Fsp.indice_inverse_conv if conv.inverse else Fsp.indice_conv)
        out = fn(features, w, data.indice_pairs, data.indice_pair_num, n_out, data.algo, timer, b_infer)
    else:
        d, inv = data, conv.inverse  # an inverse conv runs its strided conv's pairs the other way round
        out = Fsp.implicit_gemm(
            features, w, d.pair_bwd if inv else d.pair_fwd, d.pair_fwd if inv else d.pair_bwd,
            d.pair_mask_bwd_splits if inv else d.pair_mask_fwd_splits,
            d.pair_mask_fwd_splits if inv else d.pair_mask_bwd_splits,
            d.mask_argsort_bwd_splits if inv else d.mask_argsort_fwd_splits,
            d.mask_argsort_fwd_splits if inv else d.mask_argsort_bwd_splits,
            n_out, d.masks, conv.training, conv.subm, timer, conv.fp32_accum, b_infer)
    if conv.training and bias is not None:
        out = out + bias
    return out


def spconv_pair_count(data) -> int:
    """(input, output) pairs of a kernel map from spconv_indice_data, all K offsets.

    Native submanifold maps store the counts of the offsets before the centre only (the others are their mirror
    images, k <-> K-1-k) and leave the centre (every site with itself) implicit; implicit-GEMM maps hold a
    [K, N_out] table, -1 where there is no input.
    """
    if not hasattr(data, "indice_pair_num"):
        return int((data.pair_fwd >= 0).sum())
    num = data.indice_pair_num.tolist()
    kv = len(num)
    c = kv // 2
    n_out = int(data.out_indices.shape[0])
    if data.is_subm and kv % 2 == 1 and not any(num[c:]):
        return 2 * sum(num[:c]) + n_out
    return sum(num)


class SpconvSubM:
    """spconv SubMConv3d with our weights, for timing and comparing.

    Args:
        weight: [k0, k1, k2, Cin, Cout] (sparseconv layout).
        bias: [Cout] or None.
        dilation: int.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        dilation: int = 1,
        indice_key: str = "subm0",
    ):
        spconv = load_spconv()
        if spconv is None:
            raise RuntimeError(f"spconv is not importable: {spconv_error()}")
        self.spconv = spconv
        k0, k1, k2, cin, cout = weight.shape
        self.indice_key = indice_key
        self.conv = spconv.SubMConv3d(
            cin, cout, (k0, k1, k2), dilation=dilation, bias=bias is not None, indice_key=indice_key
        )
        with torch.no_grad():
            self.conv.weight.copy_(weight_to_spconv(weight.detach(), self.conv.weight.shape))
            if bias is not None:
                self.conv.bias.copy_(bias.detach())

    def tensor(
        self,
        feats: torch.Tensor,
        coords: torch.Tensor,
        spatial_shape: Sequence[int],
        batch_size: int,
        indice_dict: Optional[dict] = None,
    ):
        """A SparseConvTensor; pass ``indice_dict`` (from :meth:`build_map`) to reuse a kernel map."""
        t = self.spconv.SparseConvTensor(
            feats, coords.to(torch.int32).contiguous(), list(spatial_shape), int(batch_size)
        )
        if indice_dict is not None:
            t.indice_dict = dict(indice_dict)
        return t

    def __call__(self, x):
        return self.conv(x)

    def build_map(self, coords: torch.Tensor, spatial_shape: Sequence[int], batch_size: int) -> dict:
        """spconv's own indice generation for this layer (what a fresh tensor's forward does first).

        Returns an ``indice_dict`` that :meth:`tensor` accepts, so a forward then skips the map build.
        """
        _, data, _ = spconv_indice_data(self.conv, coords, spatial_shape, batch_size)
        return {self.indice_key: data}

    @staticmethod
    def pair_count(indice_dict: dict) -> int:
        """Number of (input, output) pairs in a kernel map built by :meth:`build_map` (all K offsets)."""
        (data,) = indice_dict.values()
        return spconv_pair_count(data)


def spconv_subm_conv3d(
    feats: torch.Tensor,
    coords: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    spatial_shape: Optional[Sequence[int]] = None,
    batch_size: Optional[int] = None,
    dilation: int = 1,
) -> torch.Tensor:
    """Run a submanifold conv through spconv with our-layout weights; returns output features [N, Cout].

    coords int32 [N, 4] = (batch, x, y, z); spatial_shape defaults to coords.max + 1 per axis.
    """
    coords = coords.to(torch.int32)
    if spatial_shape is None:
        spatial_shape = (coords[:, 1:].max(0).values + 1).tolist() if len(coords) else [1, 1, 1]
    if batch_size is None:
        batch_size = int(coords[:, 0].max()) + 1 if len(coords) else 1
    layer = SpconvSubM(weight, bias, dilation=dilation)
    out = layer(layer.tensor(feats, coords, spatial_shape, batch_size))
    return out.features


def timed(fn, *args, **kwargs):
    """(result, seconds) of one call."""
    t0 = time.perf_counter()
    r = fn(*args, **kwargs)
    return r, time.perf_counter() - t0
