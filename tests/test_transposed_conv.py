"""SparseConvTranspose3d against torch's conv_transpose3d on the densified input (sites, values, gradients), and
the indice_key of the pooling layers (an inverse conv restores a pooling layer's input sites)."""
import pytest
import torch
import torch.nn.functional as F

from conftest import make_sparse, occupancy, seed_of, set_params, sort_rows, triple
from sparseconv.nn import SparseConvTranspose3d, SparseInverseConv3d, SparseMaxPool3d, SubMConv3d
from test_conv_reference import leaf_input, run_and_compare, torch_convT_weight

f64, f32 = torch.float64, torch.float32

# (kernel, stride, padding, dilation, batch, cin, cout, shape, density, dtype)
CASES = [
    (3, 2, 1, 1, 2, 3, 4, 6, 0.15, f64),
    (2, 2, 0, 1, 1, 2, 3, 5, 0.20, f64),
    (3, 1, 0, 1, 1, 4, 2, 6, 0.10, f64),
    (3, 2, 0, 2, 2, 2, 2, 5, 0.20, f64),
    ((3, 1, 2), (2, 1, 3), (1, 0, 0), (1, 1, 2), 3, 3, 5, (5, 7, 4), 0.25, f64),
    (1, 3, 0, 1, 1, 2, 2, 4, 0.30, f64),
    (3, 2, 1, 1, 2, 16, 8, 8, 0.05, f32),
]


def _transposed(k, s, p, d, B, cin, cout, shape, density, dtype, seed, n=None):
    k, s, p, d, shape = triple(k), triple(s), triple(p), triple(d), triple(shape)
    x = make_sparse(B, shape, density, cin, dtype, seed=seed, n=n)
    xs, feats = leaf_input(x)
    layer = set_params(SparseConvTranspose3d(cin, cout, k, s, p, d), dtype, seed)
    out = layer(xs)
    reach = F.conv_transpose3d(occupancy(x.coords, B, shape), torch.ones((1, 1) + k, dtype=torch.float64),
                               stride=s, padding=p, dilation=d)
    assert tuple(out.spatial_shape) == tuple(reach.shape[2:])
    assert torch.equal(out.coords, torch.nonzero(reach[:, 0] > 0.5).to(torch.int32)), "sites, sorted"
    assert torch.equal(sort_rows(out.coords), out.coords)

    def ref_fn(D, W, b):
        return F.conv_transpose3d(D, W, b, stride=s, padding=p, dilation=d)

    run_and_compare(xs, feats, out, layer, ref_fn, torch_convT_weight(layer), (2, 3, 4, 0, 1), dtype, seed)
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[0]}-s{c[1]}-p{c[2]}-d{c[3]}-{c[9]}")
def test_transposed_vs_conv_transpose3d(case):
    _transposed(*case, seed=seed_of(case))


@pytest.mark.parametrize("n", [0, 1])
def test_transposed_tiny(n):
    _transposed(3, 2, 1, 1, 1, 2, 3, 4, None, f64, seed=5, n=n)


def test_transposed_map_cached_and_keyed():
    x = make_sparse(1, 6, 0.2, 2, f32, seed=3)
    a = SparseConvTranspose3d(2, 3, 3, 2, indice_key="up")
    b = SparseConvTranspose3d(2, 3, 3, 2, indice_key="up")
    ya, yb = a(x), b(x)
    assert ya.sites == yb.sites and torch.equal(ya.coords, yb.coords)
    with pytest.raises(ValueError, match="indice_key 'up': already used by a layer with geometry transposed"):
        SparseConvTranspose3d(2, 3, 3, 1, indice_key="up")(x)
    with pytest.raises(ValueError, match="indice_key 'up': no SparseConv3d or pooling layer"):
        SparseInverseConv3d(3, 2, 3, indice_key="up")(ya)


def test_transposed_output_grid_too_small_raises():
    x = make_sparse(1, 2, 0.5, 1, f32, seed=1)
    with pytest.raises(ValueError, match=r"spatial_shape: a transposed conv .* expected every axis in \[1, "):
        SparseConvTranspose3d(1, 1, 1, 1, padding=1)(x)


def test_inverse_conv_restores_pooling_sites():
    x = make_sparse(2, 8, 0.1, 3, f64, seed=11)
    pooled = SparseMaxPool3d(3, 2, 1, indice_key="pool1")(x)
    mid = SubMConv3d(3, 3, 3).double()(pooled)
    inv = set_params(SparseInverseConv3d(3, 4, 3, indice_key="pool1"), f64, 2)
    out = inv(mid)
    assert torch.equal(out.coords, x.coords) and out.spatial_shape == x.spatial_shape
    # Its values are conv_transpose3d of the pooled features with the pooling geometry, read at x's sites.
    dense = F.conv_transpose3d(mid.dense(), torch_convT_weight(inv), inv.bias, stride=2, padding=1,
                               output_padding=1)
    c = x.coords.long()
    torch.testing.assert_close(out.feats, dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]])
    with pytest.raises(TypeError, match="indice_key: expected a str or None, got int"):
        SparseMaxPool3d(2, indice_key=3)
