"""Deterministic mode: forward and backward bitwise identical run to run and between 1 and 2 threads.

The sparse kernels are deterministic anyway (tests/test_threads.py); the mode swaps torch's batch norm, whose
CPU statistics depend on the thread count, for one that sums in a fixed order. torch's dense CPU kernels
(nn.Conv3d via oneDNN, nn.Linear via BLAS) are not covered: VoxelClassifier's dense head is bitwise
reproducible run to run at a fixed thread count, not across thread counts."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sparseconv
from conftest import make_sparse
from sparseconv import nn as snn
from sparseconv.determinism import batch_norm
from sparseconv.models import SparseUNet, VoxelClassifier


@pytest.fixture(autouse=True)
def _restore():
    threads, torch_mode = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(torch_mode)
    sparseconv.set_deterministic(False)


def _sparse_net():
    # A 1-channel batch norm too: torch reduces [N, 1] to one value with a thread-dependent split.
    return snn.SparseSequential(
        snn.SubMConv3d(4, 1, 3), snn.SparseBatchNorm(1), snn.SubMConv3d(1, 16, 3), snn.SparseBatchNorm(16),
        snn.SparseReLU(), snn.SparseConv3d(16, 16, 3, stride=2, padding=1, indice_key="d"),
        snn.SparseBatchNorm(16), snn.SparseTopK(max_active=300), snn.SparseInverseConv3d(16, 8, 3, "d"),
        snn.SparseBatchNorm(8, momentum=None), snn.SparseMaxPool3d(2), snn.SparseAvgPool3d(2))


def _run(make, threads, x):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = make()
    feats = x.feats.detach().clone().requires_grad_(True)
    out = model(sparseconv.SparseTensor(feats, x.coords, x.spatial_shape, x.batch_size))  # maps built anew
    out = out if isinstance(out, torch.Tensor) else out.feats
    g = torch.Generator().manual_seed(1)
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    return [out.detach(), feats.grad] + [p.grad for p in model.parameters()] + list(model.buffers())


def _identical(a, b):
    assert len(a) == len(b)
    return [i for i, (u, v) in enumerate(zip(a, b)) if not torch.equal(u, v)]


MODELS = {
    "sparse_net": _sparse_net,
    "unet": lambda: SparseUNet(4, 3, channels=(8, 16)),
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("switch", ["sparseconv", "torch"])
def test_bitwise_across_runs_and_threads(name, switch):
    if switch == "sparseconv":
        sparseconv.set_deterministic(True)
    else:
        torch.use_deterministic_algorithms(True)
    assert sparseconv.is_deterministic()
    x = make_sparse(2, 24, 0.15, 4, torch.float32, seed=5)  # ~4000 sites: torch's loops split over threads
    one = _run(MODELS[name], 1, x)
    assert _identical(one, _run(MODELS[name], 1, x)) == []
    assert _identical(one, _run(MODELS[name], 2, x)) == []


def test_bf16_autocast_bitwise_across_threads():
    # The reduced-precision kernels keep the float32 kernels' fixed tiles and summation order (the convolutions
    # run in bfloat16 here; the batch norms in float32).
    sparseconv.set_deterministic(True)
    x = make_sparse(2, 24, 0.15, 4, torch.float32, seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _sparse_net()[0](x).feats.dtype == torch.bfloat16
        runs = [_run(_sparse_net, threads, x) for threads in (1, 1, 2)]
    assert _identical(runs[0], runs[1]) == []
    assert _identical(runs[0], runs[2]) == []


def test_classifier_bitwise_run_to_run():
    sparseconv.set_deterministic(True)
    torch.set_num_threads(2)
    x = make_sparse(4, 16, 0.15, 4, torch.float32, seed=5)
    make = lambda: VoxelClassifier(4, 6, 16, channels=(8, 16), dropout=0.2, max_active=100)  # noqa: E731
    assert _identical(_run(make, 2, x), _run(make, 2, x)) == []


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape,channels,affine", [((500, 3), 3, True), ((300, 1), 1, False),
                                                   ((3, 5, 4, 3, 2), 5, True)])
def test_batch_norm_matches_torch(shape, channels, affine, momentum):
    torch.manual_seed(0)
    bn = (nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm3d)(channels, momentum=momentum, affine=affine)
    bn = bn.double()
    if affine:
        with torch.no_grad():
            bn.weight.normal_()
            bn.bias.normal_()
    mine = copy.deepcopy(bn)
    for train in (True, True, False):
        bn.train(train)
        mine.train(train)
        x = (torch.randn(shape, dtype=torch.float64) * 2 + 1).requires_grad_(True)
        g = torch.randn(shape, dtype=torch.float64)
        outs = []
        for module, fn in ((bn, bn), (mine, lambda t: batch_norm(mine, t))):
            x.grad = None
            y = fn(x)
            (y * g).sum().backward()
            outs.append([y.detach(), x.grad.clone()] + list(module.buffers()))
        for u, v in zip(*outs):
            torch.testing.assert_close(v, u, rtol=1e-12, atol=1e-12)
    for p, q in zip(bn.parameters(), mine.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-12, atol=1e-12)
