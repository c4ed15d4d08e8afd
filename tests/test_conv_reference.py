"""Forward and backward of the three sparse convolutions against torch's dense conv3d / conv_transpose3d.

Every case builds a random sparse input, runs the sparse layer, and runs the dense reference on a dense copy
of the input (built here with index_put, not with the library's .dense()). Outputs are compared at the layer's
output sites; gradients come from one random upstream gradient at those sites, pushed through the dense output
sampled there. Output site sets are checked independently (SubM: the input sites; SparseConv3d: the positions
where a conv3d of the occupancy grid with an all-ones kernel is > 0; inverse: the paired conv's input sites).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sparseconv
from conftest import (
    assert_close,
    dense_at,
    make_sparse,
    occupancy,
    random_feats,
    scatter_dense,
    seed_of,
    set_params,
    sort_rows,
    triple,
)
from sparseconv.nn import SparseConv3d, SparseInverseConv3d, SubMConv3d

f64, f32 = torch.float64, torch.float32


def conv_out_shape(shape, k, s, p, d):
    return tuple((X + 2 * pp - dd * (kk - 1) - 1) // ss + 1 for X, kk, ss, pp, dd in zip(shape, k, s, p, d))


def torch_conv_weight(layer):
    """Our [k0, k1, k2, Cin, Cout] -> torch Conv3d's [Cout, Cin, k0, k1, k2]."""
    return layer.weight.detach().permute(4, 3, 0, 1, 2).contiguous()


def torch_convT_weight(layer):
    """Our [k0, k1, k2, Cin, Cout] -> torch ConvTranspose3d's [Cin, Cout, k0, k1, k2]."""
    return layer.weight.detach().permute(3, 4, 0, 1, 2).contiguous()


def leaf_input(x):
    """Same sites as x, with a fresh leaf feats tensor that requires grad."""
    feats = x.feats.detach().clone().requires_grad_(True)
    xs = sparseconv.SparseTensor(feats, x.coords, spatial_shape=x.spatial_shape, batch_size=x.batch_size)
    return xs, feats


def run_and_compare(x, feats, out, layer, ref_fn, wt_ref, wt_back, dtype, seed):
    """Compare forward, input grad, weight grad and bias grad of `out = layer(x)` with the dense `ref_fn`.

    ref_fn(dense_in, weight_torch_layout, bias) -> dense output; wt_ref: the layer's weight in torch layout;
    wt_back: permutation taking the torch-layout grad back to our layout.
    """
    B, shape = x.batch_size, tuple(x.spatial_shape)
    D = scatter_dense(feats.detach(), x.coords, B, shape).requires_grad_(True)
    W = wt_ref.clone().requires_grad_(True)
    bias = layer.bias.detach().clone().requires_grad_(True) if layer.bias is not None else None
    ref = ref_fn(D, W, bias)
    ref_at = dense_at(ref, out.coords)

    assert out.feats.dtype == dtype
    assert out.feats.shape == ref_at.shape
    assert_close(out.feats, ref_at, dtype, "forward")

    g = torch.Generator().manual_seed(seed + 31337)
    upstream = torch.randn(ref_at.shape, generator=g, dtype=torch.float64).to(dtype)
    (out.feats * upstream).sum().backward()
    (ref_at * upstream).sum().backward()

    assert feats.grad is not None, "no gradient reached the input features"
    assert_close(feats.grad, dense_at(D.grad, x.coords), dtype, "input gradient")
    assert layer.weight.grad is not None, "no weight gradient"
    assert_close(layer.weight.grad, W.grad.permute(*wt_back), dtype, "weight gradient")
    if bias is not None:
        assert layer.bias.grad is not None, "no bias gradient"
        assert_close(layer.bias.grad, bias.grad, dtype, "bias gradient")


def expected_strided_sites(coords, batch, shape, k, s, p, d):
    occ = occupancy(coords, batch, shape)
    hits = F.conv3d(occ, torch.ones((1, 1) + k, dtype=occ.dtype), stride=s, padding=p, dilation=d)
    return torch.nonzero(hits[:, 0] > 0.5).to(torch.int32), tuple(hits.shape[2:])


# ------------------------------------------------------------------------------------------------------------
# SubMConv3d
# ------------------------------------------------------------------------------------------------------------

# (kernel, dilation, batch, cin, cout, shape, density, dtype)
SUBM_CASES = [
    (1, 1, 1, 1, 1, 6, 0.30, f64),
    (3, 1, 2, 3, 4, 8, 0.10, f64),
    (3, 2, 1, 5, 2, 9, 0.20, f64),
    (5, 1, 3, 2, 3, 10, 0.05, f64),
    (5, 2, 1, 4, 4, 12, 0.02, f64),
    ((3, 1, 3), 1, 2, 3, 3, (8, 6, 10), 0.25, f64),
    ((1, 3, 5), (2, 1, 1), 1, 2, 5, (7, 9, 11), 0.15, f64),
    (3, 1, 2, 64, 64, 8, 0.05, f64),
    (3, 1, 1, 1, 1, 12, 0.01, f64),
    (3, 1, 2, 16, 32, 10, 0.30, f32),
    (5, 2, 1, 8, 8, 9, 0.10, f32),
    ((3, 5, 1), (1, 1, 2), 3, 4, 6, 8, 0.20, f32),
    # About 19,700 sites: several row tiles and weight-gradient chunks (16,384 output rows each).
    (3, 1, 2, 3, 4, 32, 0.30, f64),
]


def _subm(k, d, B, cin, cout, shape, density, dtype, seed, n=None, bias=True):
    k, d, shape = triple(k), triple(d), triple(shape)
    x = make_sparse(B, shape, density, cin, dtype, seed=seed, n=n)
    xs, feats = leaf_input(x)
    layer = set_params(SubMConv3d(cin, cout, k, dilation=d, bias=bias), dtype, seed)
    out = layer(xs)
    assert torch.equal(out.coords, x.coords), "SubMConv3d must keep the input sites (same order)"
    assert tuple(out.spatial_shape) == shape
    assert out.batch_size == B
    pad = tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d))

    def ref_fn(D, W, b):
        return F.conv3d(D, W, b, padding=pad, dilation=d)

    run_and_compare(xs, feats, out, layer, ref_fn, torch_conv_weight(layer), (2, 3, 4, 1, 0), dtype, seed)


@pytest.mark.parametrize("case", SUBM_CASES, ids=lambda c: f"k{c[0]}-d{c[1]}-B{c[2]}-c{c[3]}x{c[4]}-{c[7]}")
def test_subm_vs_conv3d(case):
    k, d, B, cin, cout, shape, density, dtype = case
    _subm(k, d, B, cin, cout, shape, density, dtype, seed=seed_of(case))


@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("dtype", [f64, f32])
def test_subm_tiny(n, dtype):
    _subm(3, 1, 2, 3, 2, 7, None, dtype, seed=5, n=n)


def test_subm_no_bias():
    _subm(3, 2, 2, 4, 3, 8, 0.2, f64, seed=11, bias=False)


# ------------------------------------------------------------------------------------------------------------
# SparseConv3d
# ------------------------------------------------------------------------------------------------------------

# (kernel, stride, padding, dilation, batch, cin, cout, shape, density, dtype)
CONV_CASES = [
    (1, 1, 0, 1, 1, 1, 1, 6, 0.30, f64),
    (2, 2, 0, 1, 2, 3, 5, 8, 0.10, f64),
    (3, 2, 1, 1, 2, 4, 8, (9, 10, 11), 0.05, f64),
    (3, 1, 2, 2, 1, 2, 3, 7, 0.20, f64),
    (5, 3, 2, 1, 3, 8, 4, 12, 0.02, f64),
    (5, 2, 1, 2, 1, 3, 2, (12, 11, 10), 0.10, f64),
    ((3, 1, 3), (1, 2, 3), (1, 0, 2), (2, 1, 1), 2, 5, 6, (10, 8, 12), 0.15, f64),
    ((2, 3, 1), (2, 1, 1), 0, 1, 1, 2, 2, (8, 9, 6), 0.25, f64),
    (3, 3, 0, 2, 1, 64, 64, 8, 0.05, f64),
    (1, 3, 1, 1, 2, 2, 7, 10, 0.30, f64),
    (2, 3, 2, 2, 3, 1, 1, 9, 0.01, f64),
    (3, 2, 1, 1, 2, 16, 32, 10, 0.30, f32),
    (2, 1, 0, 2, 1, 7, 3, 6, 0.20, f32),
    (5, (1, 3, 2), 2, 1, 2, 6, 5, 11, 0.05, f32),
]


def _conv(k, s, p, d, B, cin, cout, shape, density, dtype, seed, n=None, bias=True):
    k, s, p, d, shape = triple(k), triple(s), triple(p), triple(d), triple(shape)
    x = make_sparse(B, shape, density, cin, dtype, seed=seed, n=n)
    xs, feats = leaf_input(x)
    layer = set_params(SparseConv3d(cin, cout, k, stride=s, padding=p, dilation=d, bias=bias), dtype, seed)
    out = layer(xs)

    sites, grid = expected_strided_sites(x.coords, B, shape, k, s, p, d)
    assert tuple(out.spatial_shape) == grid == conv_out_shape(shape, k, s, p, d)
    assert out.batch_size == B
    assert out.coords.dtype == torch.int32 and out.coords.shape[1] == 4
    assert torch.equal(sort_rows(out.coords), sites), "output sites differ from the occupancy reference"

    def ref_fn(D, W, b):
        return F.conv3d(D, W, b, stride=s, padding=p, dilation=d)

    run_and_compare(xs, feats, out, layer, ref_fn, torch_conv_weight(layer), (2, 3, 4, 1, 0), dtype, seed)


@pytest.mark.parametrize(
    "case", CONV_CASES, ids=lambda c: f"k{c[0]}-s{c[1]}-p{c[2]}-d{c[3]}-B{c[4]}-c{c[5]}x{c[6]}-{c[9]}"
)
def test_sparse_conv_vs_conv3d(case):
    k, s, p, d, B, cin, cout, shape, density, dtype = case
    _conv(k, s, p, d, B, cin, cout, shape, density, dtype, seed=seed_of(case))


@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("dtype", [f64, f32])
def test_sparse_conv_tiny(n, dtype):
    _conv(3, 2, 1, 1, 2, 3, 2, 7, None, dtype, seed=3, n=n)


def test_sparse_conv_no_bias():
    _conv(2, 2, 0, 1, 2, 4, 3, 8, 0.2, f64, seed=13, bias=False)


@pytest.mark.parametrize(
    "k,s,p,d,shape",
    [
        (3, 2, 1, 1, (9, 10, 11)),
        (4, 3, 2, 1, 12),
        ((1, 2, 3), (3, 2, 1), (0, 1, 2), (1, 2, 1), (7, 8, 9)),
        (2, 2, 0, 3, 10),
        (5, 1, 0, 2, 11),
    ],
)
@pytest.mark.parametrize("density", [0.01, 0.1, 0.3])
def test_sparse_conv_site_set(k, s, p, d, shape, density):
    """Only the output site set and grid shape (cheap, more geometries)."""
    k, s, p, d, shape = triple(k), triple(s), triple(p), triple(d), triple(shape)
    x = make_sparse(2, shape, density, 1, f64, seed=int(density * 100))
    out = SparseConv3d(1, 1, k, stride=s, padding=p, dilation=d).to(f64)(x)
    sites, grid = expected_strided_sites(x.coords, 2, shape, k, s, p, d)
    assert tuple(out.spatial_shape) == grid
    assert torch.equal(sort_rows(out.coords), sites)


# ------------------------------------------------------------------------------------------------------------
# SparseInverseConv3d
# ------------------------------------------------------------------------------------------------------------

# (kernel, stride, padding, dilation, batch, cin, cmid, cout, shape, density, dtype)
INV_CASES = [
    (1, 1, 0, 1, 1, 1, 2, 1, 6, 0.30, f64),
    (2, 2, 0, 1, 2, 3, 4, 5, 8, 0.10, f64),
    (3, 2, 1, 1, 2, 4, 3, 2, (9, 10, 11), 0.10, f64),
    (3, 3, 2, 2, 1, 2, 3, 4, 10, 0.20, f64),
    (5, 2, 2, 1, 3, 2, 2, 3, 12, 0.03, f64),
    (5, 3, 0, 2, 1, 1, 2, 2, 12, 0.05, f64),
    ((3, 1, 3), (1, 2, 3), (1, 0, 2), (2, 1, 1), 2, 3, 4, 5, (10, 8, 12), 0.15, f64),
    (3, 2, 1, 1, 1, 32, 64, 16, 8, 0.10, f64),
    (2, 2, 1, 2, 2, 8, 16, 8, 10, 0.20, f32),
    (3, (2, 1, 3), 1, 1, 2, 4, 4, 4, 9, 0.05, f32),
]


def _inverse(k, s, p, d, B, cin, cmid, cout, shape, density, dtype, seed, n=None, bias=True):
    k, s, p, d, shape = triple(k), triple(s), triple(p), triple(d), triple(shape)
    x = make_sparse(B, shape, density, cin, dtype, seed=seed, n=n)
    down = SparseConv3d(cin, cmid, k, stride=s, padding=p, dilation=d, indice_key="inv")
    down = set_params(down, dtype, seed)
    with torch.no_grad():
        y = down(x)
    # Fresh features on the downsampled sites: the inverse conv is tested on its own.
    yfeats = random_feats(y.coords.shape[0], cmid, dtype, seed + 1).requires_grad_(True)
    ys = y.replace(yfeats)
    up = set_params(SparseInverseConv3d(cmid, cout, k, indice_key="inv", bias=bias), dtype, seed + 2)
    out = up(ys)
    assert torch.equal(out.coords, x.coords), "inverse conv must restore the paired conv's input sites"
    assert tuple(out.spatial_shape) == shape
    assert out.batch_size == B

    ygrid = tuple(y.spatial_shape)
    assert ygrid == conv_out_shape(shape, k, s, p, d)
    out_pad = tuple(
        X - ((Yo - 1) * ss - 2 * pp + dd * (kk - 1) + 1)
        for X, Yo, kk, ss, pp, dd in zip(shape, ygrid, k, s, p, d)
    )

    def ref_fn(D, W, b):
        r = F.conv_transpose3d(D, W, b, stride=s, padding=p, output_padding=out_pad, dilation=d)
        assert tuple(r.shape[2:]) == shape
        return r

    run_and_compare(ys, yfeats, out, up, ref_fn, torch_convT_weight(up), (2, 3, 4, 0, 1), dtype, seed)


@pytest.mark.parametrize(
    "case", INV_CASES, ids=lambda c: f"k{c[0]}-s{c[1]}-p{c[2]}-d{c[3]}-B{c[4]}-c{c[6]}x{c[7]}-{c[10]}"
)
def test_inverse_conv_vs_conv_transpose3d(case):
    k, s, p, d, B, cin, cmid, cout, shape, density, dtype = case
    _inverse(k, s, p, d, B, cin, cmid, cout, shape, density, dtype, seed=seed_of(case))


@pytest.mark.parametrize("n", [0, 1])
@pytest.mark.parametrize("dtype", [f64, f32])
def test_inverse_conv_tiny(n, dtype):
    _inverse(3, 2, 1, 1, 2, 3, 2, 4, 7, None, dtype, seed=9, n=n)


def test_inverse_conv_no_bias():
    _inverse(2, 2, 0, 1, 2, 3, 4, 2, 8, 0.2, f64, seed=17, bias=False)


# ------------------------------------------------------------------------------------------------------------
# Channel widths: every vector-width remainder of the CPU micro-kernels (forward, input and weight gradients)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [f64, f32])
@pytest.mark.parametrize(
    "cin,cout", [(1, 17), (6, 33), (7, 9), (13, 31), (5, 48), (12, 65), (64, 1), (2, 24)]
)
def test_channel_widths(cin, cout, dtype):
    _subm(3, 1, 2, cin, cout, 9, 0.3, dtype, seed=cin * 100 + cout)
    _conv(2, 2, 0, 1, 1, cin, cout, 8, 0.3, dtype, seed=cin * 100 + cout + 1)
