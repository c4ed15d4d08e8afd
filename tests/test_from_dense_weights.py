"""Layers built from torch's dense modules give the dense module's output at the active sites; key clashes."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import sparseconv
from conftest import assert_close, dense_at, make_sparse, scatter_dense, seed_of, triple
from sparseconv.nn import SparseConv3d, SparseInverseConv3d, SubMConv3d

f64, f32 = torch.float64, torch.float32


def _dense_of(x):
    return scatter_dense(x.feats, x.coords, x.batch_size, tuple(x.spatial_shape))


@pytest.mark.parametrize("dtype", [f64, f32])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k,d", [(1, 1), (3, 1), (3, 2), (5, 1), ((3, 1, 5), (1, 2, 1))], ids=str)
def test_subm_from_conv3d(k, d, bias, dtype):
    torch.manual_seed(seed_of((k, d, bias)))
    k, d = triple(k), triple(d)
    pad = tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d))
    conv = nn.Conv3d(3, 5, k, padding=pad, dilation=d, bias=bias)
    conv = conv.to(dtype)
    layer = SubMConv3d.from_conv3d(conv)
    assert tuple(layer.weight.shape) == k + (3, 5)
    assert torch.equal(layer.weight.detach(), conv.weight.detach().permute(2, 3, 4, 1, 0))
    assert (layer.bias is None) == (not bias)
    x = make_sparse(2, (8, 9, 7), 0.15, 3, dtype, seed=seed_of(k))
    with torch.no_grad():
        out = layer(x)
        ref = conv(_dense_of(x))
    assert torch.equal(out.coords, x.coords)
    assert_close(out.feats, dense_at(ref, x.coords), dtype)


@pytest.mark.parametrize("dtype", [f64, f32])
@pytest.mark.parametrize(
    "k,s,p,d",
    [(2, 2, 0, 1), (3, 2, 1, 1), (3, 1, 0, 2), (5, 3, 2, 1), ((3, 1, 2), (2, 1, 3), (1, 0, 1), (1, 1, 2))],
    ids=str,
)
def test_sparse_conv_from_conv3d(k, s, p, d, dtype):
    torch.manual_seed(seed_of((k, s, p, d)))
    conv = nn.Conv3d(4, 6, k, stride=s, padding=p, dilation=d).to(dtype)
    layer = SparseConv3d.from_conv3d(conv)
    assert torch.equal(layer.weight.detach(), conv.weight.detach().permute(2, 3, 4, 1, 0))
    assert torch.equal(layer.bias.detach(), conv.bias.detach())
    x = make_sparse(2, (10, 9, 11), 0.1, 4, dtype, seed=seed_of(s))
    with torch.no_grad():
        out = layer(x)
        ref = conv(_dense_of(x))
    assert tuple(out.spatial_shape) == tuple(ref.shape[2:])
    # Every site the dense conv sees anything at (beyond the bias) must be an output site.
    occ = torch.nn.functional.conv3d(
        scatter_dense(torch.ones(x.coords.shape[0], 1, dtype=f64), x.coords, 2, (10, 9, 11)),
        torch.ones((1, 1) + triple(k), dtype=f64),
        stride=triple(s),
        padding=triple(p),
        dilation=triple(d),
    )
    assert out.coords.shape[0] == int((occ > 0).sum())
    assert_close(out.feats, dense_at(ref, out.coords), dtype)


@pytest.mark.parametrize("dtype", [f64, f32])
@pytest.mark.parametrize(
    "k,s,p,d",
    [(2, 2, 0, 1), (3, 2, 1, 1), (3, 3, 1, 2), ((3, 1, 2), (2, 1, 3), (1, 0, 1), (1, 1, 2))],
    ids=str,
)
def test_inverse_from_conv_transpose3d(k, s, p, d, dtype):
    torch.manual_seed(seed_of((k, s, p, d, "T")))
    shape = (10, 9, 11)
    x = make_sparse(2, shape, 0.1, 3, dtype, seed=seed_of(d))
    down = SparseConv3d(3, 4, k, stride=s, padding=p, dilation=d, indice_key="pair").to(dtype)
    with torch.no_grad():
        y = down(x)
    convT = nn.ConvTranspose3d(4, 2, k, stride=s, padding=p, dilation=d).to(dtype)
    up = SparseInverseConv3d.from_conv_transpose3d(convT, "pair")
    assert torch.equal(up.weight.detach(), convT.weight.detach().permute(2, 3, 4, 0, 1))
    with torch.no_grad():
        out = up(y)
        ref = convT(_dense_of(y), output_size=shape)
    assert tuple(ref.shape[2:]) == shape
    assert torch.equal(out.coords, x.coords)
    assert tuple(out.spatial_shape) == shape
    assert_close(out.feats, dense_at(ref, x.coords), dtype)


# ------------------------------------------------------------------------------------------------------------
# indice_key sharing
# ------------------------------------------------------------------------------------------------------------


def _x():
    return make_sparse(1, 9, 0.15, 2, f64, seed=21)


def test_shared_key_same_geometry_reuses_and_matches():
    x = _x()
    a = SubMConv3d(2, 3, 3, indice_key="s").double()
    b = SubMConv3d(3, 4, 3, indice_key="s").double()
    a2 = SubMConv3d(2, 3, 3).double()
    b2 = SubMConv3d(3, 4, 3).double()
    a2.load_state_dict(a.state_dict())
    b2.load_state_dict(b.state_dict())
    with torch.no_grad():
        keyed = b(a(x))
        plain = b2(a2(x))
    assert torch.equal(keyed.coords, plain.coords)
    assert_close(keyed.feats, plain.feats, f64)


@pytest.mark.parametrize(
    "second",
    [
        dict(kernel_size=5),
        dict(kernel_size=(3, 3, 1)),
        dict(kernel_size=3, dilation=2),
    ],
    ids=str,
)
def test_subm_key_clash_raises(second):
    x = _x()
    first = SubMConv3d(2, 2, 3, indice_key="clash").double()
    with torch.no_grad():
        y = first(x)
        with pytest.raises(ValueError):
            SubMConv3d(2, 2, indice_key="clash", **second).double()(y)


@pytest.mark.parametrize(
    "second",
    [
        dict(kernel_size=3, stride=2),
        dict(kernel_size=2, stride=1),
        dict(kernel_size=2, stride=2, dilation=2),
    ],
    ids=str,
)
def test_sparse_conv_key_clash_raises(second):
    x = _x()
    first = SparseConv3d(2, 2, 2, stride=2, indice_key="down").double()
    with torch.no_grad():
        first(x)
        with pytest.raises(ValueError):
            SparseConv3d(2, 2, indice_key="down", **second).double()(x)


def test_inverse_key_clash_raises():
    x = _x()
    down = SparseConv3d(2, 2, 3, stride=2, padding=1, indice_key="pair2").double()
    with torch.no_grad():
        y = down(x)
        with pytest.raises(ValueError):
            SparseInverseConv3d(2, 2, 2, indice_key="pair2").double()(y)


def test_inverse_from_conv_transpose3d_key_clash_raises():
    x = _x()
    down = SparseConv3d(2, 2, 3, stride=2, padding=1, indice_key="pair3").double()
    with torch.no_grad():
        y = down(x)
        with pytest.raises(ValueError):
            convT = nn.ConvTranspose3d(2, 2, 3, stride=3, padding=1).double()
            SparseInverseConv3d.from_conv_transpose3d(convT, "pair3")(y)
        with pytest.raises(ValueError):
            convT = nn.ConvTranspose3d(2, 2, 3, stride=2, padding=1, dilation=2).double()
            SparseInverseConv3d.from_conv_transpose3d(convT, "pair3")(y)
