"""torch.compile: a SubM / BatchNorm / ReLU network in one graph (fullgraph=True) with the maps built before,
and whole models with the maps built inside: graph breaks only at the data-dependent map builder, none when
Dynamo may capture data-dependent sizes. Outputs and gradients match eager."""
from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

import sparseconv
from conftest import make_sparse
from sparseconv import nn as snn
from sparseconv.kmap import subm_map
from sparseconv.models import SparseUNet, VoxelClassifier


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _grads(module):
    return [p.grad for p in module.parameters()]


def _compare(eager, compiled, x, rtol=1e-5, atol=1e-5, fresh=True):
    """Same input (own feats leaves) through both; outputs, input gradients and parameter gradients agree.
    fresh: each model gets an empty kernel-map cache (else both use x's)."""
    outs = []
    for model in (eager, compiled):
        feats = x.feats.detach().clone().requires_grad_(True)
        out = model(sparseconv.SparseTensor(feats, x.coords, x.spatial_shape, x.batch_size) if fresh
                    else x.replace(feats))
        out = out if isinstance(out, torch.Tensor) else out.feats
        g = torch.Generator().manual_seed(3)
        (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum().backward()
        outs.append((out.detach(), feats.grad))
    (a, ga), (b, gb) = outs
    torch.testing.assert_close(b, a, rtol=rtol, atol=atol)
    torch.testing.assert_close(gb, ga, rtol=rtol, atol=atol)
    for p, q in zip(_grads(eager), _grads(compiled)):
        torch.testing.assert_close(q, p, rtol=rtol, atol=atol)


def test_subm_network_fullgraph_inductor():
    torch.manual_seed(0)
    net = snn.SparseSequential(snn.SubMConv3d(4, 8, 3), snn.SparseBatchNorm(8), snn.SparseReLU(),
                               snn.SubMConv3d(8, 8, 3, bias=False), snn.SparseBatchNorm(8), snn.SparseReLU())
    net = net.double()  # float64: inductor's fused batch norm sums in another order than eager's
    ref = copy.deepcopy(net)
    compiled = torch.compile(net, fullgraph=True, dynamic=True)
    for seed, density in ((0, 0.2), (1, 0.25)):  # two site counts, one graph (dynamic=True)
        x = make_sparse(2, 12, density, 4, torch.float64, seed=seed)
        subm_map(x, (3, 3, 3), (1, 1, 1))  # the map is built before the compiled region
        _compare(ref, compiled, x, rtol=1e-9, atol=1e-9, fresh=False)
    torch.testing.assert_close(net[1].bn.running_mean, ref[1].bn.running_mean)
    assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 1


def _classifier():
    torch.manual_seed(0)
    return VoxelClassifier(4, 5, 16, channels=(8, 16), dense_channels=8, dropout=0.0)


def test_classifier_graph_breaks_only_at_strided_map_builds():
    # Default Dynamo config: build_strided_map's output size depends on the coordinates' values, so each
    # strided conv (one per stage) breaks the graph; nothing else does.
    explain = torch._dynamo.explain(_classifier())(make_sparse(2, 16, 0.1, 4, torch.float32))
    reasons = [r.reason for r in explain.break_reasons]
    assert len(reasons) == 2, reasons
    assert all("sparseconv.build_strided_map" in r for r in reasons), reasons


@pytest.mark.parametrize("make", [_classifier, lambda: SparseUNet(4, 3, channels=(8, 16))], ids=["classifier", "unet"])
def test_whole_model_fullgraph_with_dynamic_output_shapes(make):
    # With data-dependent sizes captured, the fake kernels' unbacked sizes carry through: one graph, the maps
    # (strided, transposed for the inverse convs) built inside it.
    model = make()
    ref = copy.deepcopy(model)
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="aot_eager")
        for seed in (0, 1):
            _compare(ref, compiled, make_sparse(2, 16, 0.1 + 0.02 * seed, 4, torch.float32, seed=seed))
    assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 1


def test_kmap_cache_keys_are_plain_values():
    # The root cause of "Dynamo cannot determine the equality comparison of an object": object() site tokens.
    x = make_sparse(1, 8, 0.3, 2, torch.float32)
    y = snn.SparseConv3d(2, 2, 2, stride=2)(snn.SubMConv3d(2, 2, 3)(x))
    for key in x.kmaps:
        assert all(isinstance(k, (str, int, tuple)) for k in (key if isinstance(key, tuple) else (key,))), key
    assert isinstance(y.sites, int) and y.sites != x.sites
    assert sparseconv.SparseTensor(x.feats, x.coords).sites == x.sites == 0  # fresh caches start at 0
