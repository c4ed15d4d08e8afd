"""Mixed precision on CPU. The kernels take bfloat16 and float16 features (stored in that dtype, every sum in
float32, rounded once per output element); under torch.autocast("cpu", dtype) the sparse convolution casts its
inputs to the autocast dtype, as torch's Conv3d does, and pooling runs in the dtype it is given.

References: the float32 op on the same (already rounded) inputs, which the other tests check against
torch.nn.functional; the stated tolerance is one rounding of the reduced dtype (2^-8 relative for bfloat16,
2^-11 for float16) plus float32 summation noise."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import make_sparse
from sparseconv import nn as snn
from sparseconv.models import SparseUNet, VoxelClassifier

ops = torch.ops.sparseconv
bf16, f16, f32 = torch.bfloat16, torch.float16, torch.float32
HALF_ULP = {bf16: 2.0**-8, f16: 2.0**-11}


def _one_rounding(out, ref, dtype):
    """out (reduced dtype) equals ref (float32) rounded once: |out - ref| <= half an ulp of |ref|, plus float32
    noise of the sums (a few ulps of float32 on the largest value)."""
    assert out.dtype == dtype
    err = (out.float() - ref).abs()
    bound = HALF_ULP[dtype] * ref.abs() + 1e-6 * ref.abs().max()
    assert (err <= bound).all(), (err - bound).max()


def _maps(dtype, cin=13, seed=0):
    x = make_sparse(2, 14, 0.25, cin, f32, seed=seed)
    c = x.coords
    n = c.shape[0]
    nbr = ops.build_subm_map(c, [3, 3, 3], [1, 1, 1])
    _, snbr = ops.build_strided_map(c, [14, 14, 14], [2, 2, 2], [2, 2, 2], [0, 0, 0], [1, 1, 1])
    snt = ops.invert_map(snbr, n)
    feats = x.feats.to(dtype)  # the reduced inputs; the reference takes them widened (exactly)
    return feats, nbr, snbr, snt


@pytest.mark.parametrize("dtype", [bf16, f16])
def test_conv_kernels_round_once(dtype):
    feats, nbr, snbr, snt = _maps(dtype)
    g = torch.Generator().manual_seed(1)
    cin, cout = feats.shape[1], 21  # neither a multiple of the 8-float vector width
    w = (torch.randn(27, cin, cout, generator=g) * 0.2).to(dtype)
    b = torch.randn(cout, generator=g).to(dtype)
    _one_rounding(ops.sparse_conv(feats, w, b, nbr, None), ops.sparse_conv(feats.float(), w.float(), b.float(), nbr,
                                                                           None), dtype)
    w8 = (torch.randn(8, cin, cout, generator=g) * 0.2).to(dtype)
    _one_rounding(ops.sparse_conv(feats, w8, None, snbr, snt),
                  ops.sparse_conv(feats.float(), w8.float(), None, snbr, snt), dtype)
    gout = torch.randn(nbr.shape[1], cout, generator=g).to(dtype)
    _one_rounding(ops.sparse_conv_weight_grad(feats, gout, nbr),
                  ops.sparse_conv_weight_grad(feats.float(), gout.float(), nbr), dtype)
    with pytest.raises(TypeError, match="weight: expected dtype"):  # no silent mixing outside autocast
        ops.sparse_conv(feats, w.float(), None, nbr, None)


@pytest.mark.parametrize("dtype", [bf16, f16])
def test_pool_kernels_round_once(dtype):
    feats, _, snbr, snt = _maps(dtype)
    out, arg = ops.sparse_max_pool(feats, snbr, snt)
    ref, ref_arg = ops.sparse_max_pool(feats.float(), snbr, snt)
    assert out.dtype == dtype and torch.equal(out.float(), ref) and torch.equal(arg, ref_arg)  # max is exact
    _one_rounding(ops.sparse_avg_pool(feats, snbr, snt), ops.sparse_avg_pool(feats.float(), snbr, snt), dtype)
    gout = torch.randn(snbr.shape[1], feats.shape[1]).to(dtype)
    _one_rounding(ops.sparse_max_pool_backward(gout, arg, snt), ops.sparse_max_pool_backward(gout.float(), arg, snt),
                  dtype)
    _one_rounding(ops.sparse_avg_pool_backward(gout, snbr, snt),
                  ops.sparse_avg_pool_backward(gout.float(), snbr, snt), dtype)


def _net():
    torch.manual_seed(0)
    return snn.SparseSequential(snn.SubMConv3d(4, 8, 3), snn.SparseBatchNorm(8), snn.SparseReLU(),
                                snn.SparseConv3d(8, 8, 2, stride=2, indice_key="d"), snn.SparseReLU(),
                                snn.SparseInverseConv3d(8, 4, 2, "d"), snn.SparseMaxPool3d(2))


@pytest.mark.parametrize("dtype", [bf16, f16])
def test_sparse_layers_run_in_autocast_dtype(dtype):
    """Convolutions compute in the autocast dtype, pooling in the dtype it gets, gradients come back in the
    parameters' dtype (float32). Stated tolerance: output within 2% (relative L2) of the float32 run."""
    net, x = _net(), make_sparse(2, 12, 0.2, 4, f32)
    ref = net(x).feats
    feats = x.feats.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        first = net[0](x.replace(feats))
        out = net(x.replace(feats))
    assert first.feats.dtype == out.feats.dtype == dtype
    assert (out.feats.float() - ref).norm() <= 0.02 * ref.norm()
    out.feats.float().sum().backward()
    assert feats.grad.dtype == f32 and all(p.grad.dtype == f32 for p in net.parameters())


def test_autocast_leaves_float64_alone():
    net, x = _net().double(), make_sparse(2, 12, 0.2, 4, torch.float64)
    with torch.autocast("cpu", dtype=bf16):
        out = net(x)
    assert out.feats.dtype == torch.float64
    torch.testing.assert_close(out.feats, net(x).feats, rtol=0, atol=0)


def test_mixed_input_dtypes_meet_in_autocast_dtype():
    # A bfloat16 input (e.g. from a bfloat16 Linear) meets float32 weights: under autocast both become bfloat16
    # and the gradient comes back in each one's dtype; without autocast mixed dtypes are an error, as in torch.
    x = make_sparse(2, 12, 0.2, 4, f32)
    feats = x.feats.to(bf16).requires_grad_(True)
    conv = snn.SubMConv3d(4, 6, 3)
    with torch.autocast("cpu", dtype=bf16):
        out = conv(x.replace(feats))
    assert out.feats.dtype == bf16
    out.feats.float().sum().backward()
    assert feats.grad.dtype == bf16 and conv.weight.grad.dtype == f32
    with pytest.raises(TypeError):
        conv(x.replace(feats.detach()))


@pytest.mark.parametrize("model_fn", [
    lambda: VoxelClassifier(4, 6, 16, channels=(8, 16), dropout=0.0),
    lambda: SparseUNet(4, 3, channels=(8, 16)),
], ids=["classifier", "unet"])
def test_bf16_autocast_gradients_close_to_fp32(model_fn):
    """Whole models, sparse encoder and dense head in bfloat16 (8 significant bits, 0.4% per rounding).
    Stated tolerance, relative L2 to the float32 run: outputs within 3%; parameter gradients within 35%, and
    within 5% for the layers after the last batch norm. Gradients of layers in front of a batch norm come out of
    its backward's cancellation (g - mean(g) - x * mean(g x)): a same-depth torch Conv3d/BatchNorm3d network
    under the same autocast gives 9-18% there (0.2-0.3% after its last norm); these models give 6-19%, and
    bias-like parameters up to 27%."""
    torch.manual_seed(0)
    model = model_fn()
    ref = copy.deepcopy(model)
    x = make_sparse(4, 16, 0.1, 4, f32)
    with torch.autocast("cpu", dtype=bf16):
        out = model(x)
    out = out if isinstance(out, torch.Tensor) else out.feats
    assert out.dtype == bf16
    out.float().square().mean().backward()
    expected = ref(x)
    expected = expected if isinstance(expected, torch.Tensor) else expected.feats
    expected.square().mean().backward()
    assert (out.float() - expected).norm() <= 0.03 * expected.norm()
    # Parameters of the modules after the last batch norm (in module order).
    names = [n for n, m in ref.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    modules = [n for n, _ in ref.named_modules()]
    last_norm = modules.index(names[-1])
    after = {f"{n}.{p}" for n in modules[last_norm + 1:] for p, _ in ref.get_submodule(n).named_parameters(recurse=False)}
    assert after
    for (name, p), q in zip(ref.named_parameters(), model.parameters()):
        assert q.grad.dtype == f32, name
        tol = 0.05 if name in after else 0.35
        assert (q.grad - p.grad).norm() <= tol * p.grad.norm(), name


def test_weight_cast_once_per_autocast_region():
    # The layer passes a view of its weight; autocast's cache holds casts of leaves only, so the op casts the leaf
    # (csrc/autocast.cpp): two calls in one region cast the weight once, as for torch's Conv3d.
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountCasts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.shapes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default:
                self.shapes.append(tuple(args[0].shape))
            return func(*args, **(kwargs or {}))

    x = make_sparse(2, 12, 0.2, 4, f32)
    conv = snn.SubMConv3d(4, 6, 3)
    conv(x)  # kernel map built outside the count
    with torch.autocast("cpu", dtype=bf16), CountCasts() as counter:
        conv(x)
        out = conv(x)
    weight_casts = [s for s in counter.shapes if s in {tuple(conv.weight.shape), (27, 4, 6)}]
    assert len(weight_casts) == 1, counter.shapes
    out.feats.float().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.dtype == f32
