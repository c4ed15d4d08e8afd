"""Mixed precision on CPU: the C++ kernels take float32/float64 only, so under torch.autocast("cpu", bfloat16)
the sparse operators run in float32 (registered autocast rule) while torch's dense layers run in bfloat16."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import make_sparse
from sparseconv import nn as snn
from sparseconv.models import VoxelClassifier

bf16 = torch.bfloat16


def _net():
    torch.manual_seed(0)
    return snn.SparseSequential(snn.SubMConv3d(4, 8, 3), snn.SparseBatchNorm(8), snn.SparseReLU(),
                                snn.SparseConv3d(8, 8, 2, stride=2, indice_key="d"), snn.SparseReLU(),
                                snn.SparseInverseConv3d(8, 4, 2, "d"))


@pytest.mark.parametrize("dtype", [bf16, torch.float16])
def test_sparse_layers_run_in_float32_under_autocast(dtype):
    net, x = _net(), make_sparse(2, 12, 0.2, 4, torch.float32)
    with torch.autocast("cpu", dtype=dtype):
        out = net(x)
    ref = net(x)
    assert out.feats.dtype == torch.float32
    torch.testing.assert_close(out.feats, ref.feats, rtol=0, atol=0)  # float32 throughout: no change at all


def test_lower_precision_features_are_cast_up():
    # A bfloat16 input (e.g. from a bfloat16 Linear) meets float32 weights: the op computes in float32 and
    # the gradient comes back in the input's dtype.
    x = make_sparse(2, 12, 0.2, 4, torch.float32)
    feats = x.feats.to(bf16).requires_grad_(True)
    conv = snn.SubMConv3d(4, 6, 3)
    with torch.autocast("cpu", dtype=bf16):
        out = conv(x.replace(feats))
        pooled = [pool(x.replace(feats)).feats for pool in (snn.SparseMaxPool3d(2), snn.SparseAvgPool3d(2))]
    assert out.feats.dtype == pooled[0].dtype == pooled[1].dtype == torch.float32
    (out.feats.sum() + pooled[0].sum() + pooled[1].sum()).backward()
    assert feats.grad.dtype == bf16 and conv.weight.grad.dtype == torch.float32
    torch.testing.assert_close(out.feats, conv(x.replace(feats.detach().float())).feats, rtol=0, atol=0)
    with pytest.raises(TypeError):  # without autocast mixed dtypes are still an error, as in torch
        conv(x.replace(feats.detach()))


def test_classifier_bf16_autocast_gradients_close_to_fp32():
    """Dense head (Conv3d, Linear) in bfloat16, sparse encoder in float32. Stated tolerance: logits within 2%
    and every parameter gradient within 10% of the float32 run, relative in L2 norm (bfloat16 keeps 8 bits of
    mantissa, about 0.4% per rounding; observed about 0.4% on logits and 2-6% on gradients)."""
    torch.manual_seed(0)
    model = VoxelClassifier(4, 6, 16, channels=(8, 16), dropout=0.0)
    ref = copy.deepcopy(model)
    x = make_sparse(4, 16, 0.1, 4, torch.float32)
    with torch.autocast("cpu", dtype=bf16):
        logits = model(x)
        hidden = model.encoder(model.norm(x))
    assert logits.dtype == bf16 and hidden.feats.dtype == torch.float32
    logits.float().square().mean().backward()
    expected = ref(x)
    expected.square().mean().backward()
    assert (logits.float() - expected).norm() <= 0.02 * expected.norm()
    for (name, p), q in zip(ref.named_parameters(), model.parameters()):
        assert q.grad.dtype == torch.float32, name
        assert (q.grad - p.grad).norm() <= 0.10 * p.grad.norm(), name
