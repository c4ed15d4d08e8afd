"""torch.autograd.gradcheck (float64, tiny inputs) for the three convolutions: feats, weight and bias."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

import sparseconv
from conftest import conv_by_map, make_sparse, random_feats, seed_of
from sparseconv.nn import SparseConv3d, SparseInverseConv3d, SubMConv3d

f64 = torch.float64


def _inputs(layer, feats):
    layer = layer.to(f64)
    w = layer.weight.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    return layer, (feats.detach().clone().requires_grad_(True), w, b)


def _check(layer, x, n):
    layer, args = _inputs(layer, x.feats)

    def f(feats, w, b):
        xs = x.replace(feats)
        return functional_call(layer, {"weight": w, "bias": b}, (xs,)).feats

    assert x.coords.shape[0] == n
    assert gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("n", [5, 9, 15])
@pytest.mark.parametrize("k,d", [(3, 1), (3, 2), ((1, 3, 3), 1)], ids=str)
def test_gradcheck_subm(k, d, n):
    torch.manual_seed(seed_of((k, d, n)))
    x = make_sparse(2, 4, None, 2, f64, seed=seed_of((k, n)), n=n)
    _check(SubMConv3d(2, 3, k, dilation=d), x, n)


@pytest.mark.parametrize("n", [5, 12])
@pytest.mark.parametrize(
    "k,s,p,d", [(2, 2, 0, 1), (3, 2, 1, 1), (3, 1, 1, 2), ((2, 3, 1), (1, 2, 2), (0, 1, 0), 1)], ids=str
)
def test_gradcheck_sparse_conv(k, s, p, d, n):
    torch.manual_seed(seed_of((k, s, p, d, n)))
    x = make_sparse(2, 5, None, 2, f64, seed=seed_of((s, n)), n=n)
    _check(SparseConv3d(2, 3, k, stride=s, padding=p, dilation=d), x, n)


@pytest.mark.parametrize("n", [5, 12])
@pytest.mark.parametrize("k,s,p,d", [(2, 2, 0, 1), (3, 2, 1, 1), (3, 3, 1, 1), (2, 1, 0, 2)], ids=str)
def test_gradcheck_inverse_conv(k, s, p, d, n):
    torch.manual_seed(seed_of((k, s, p, d, n, "inv")))
    x = make_sparse(2, 5, None, 2, f64, seed=seed_of((d, n)), n=n)
    down = SparseConv3d(2, 3, k, stride=s, padding=p, dilation=d, indice_key="gc").to(f64)
    with torch.no_grad():
        y = down(x)
    assert y.coords.shape[0] > 0
    y = y.replace(random_feats(y.coords.shape[0], 3, f64, seed=n))
    _check(SparseInverseConv3d(3, 2, k, indice_key="gc"), y, y.coords.shape[0])


def test_gradcheck_low_level_sparse_conv():
    """sparseconv.ops.sparse_conv on a hand-made map, including rows with no neighbours."""
    nbr = torch.tensor([[0, -1, 2, -1], [1, 3, -1, -1], [-1, 0, 4, -1]], dtype=torch.int32)
    nbr_t = torch.ops.sparseconv.invert_map(nbr, 5)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(5, 2, generator=g, dtype=f64, requires_grad=True)
    weight = torch.randn(3, 2, 3, generator=g, dtype=f64, requires_grad=True)
    bias = torch.randn(3, generator=g, dtype=f64, requires_grad=True)

    def f(feats, weight, bias):
        return sparseconv.ops.sparse_conv(feats, weight, bias, nbr, nbr_t)

    out = f(feats, weight, bias)
    ref = conv_by_map(feats, weight, bias, nbr)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert gradcheck(f, (feats, weight, bias), eps=1e-6, atol=1e-7, rtol=1e-5)
    assert gradcheck(lambda a, b: f(a, b, None), (feats, weight), eps=1e-6, atol=1e-7, rtol=1e-5)
